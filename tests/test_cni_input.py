"""Hostile CNI input, checked without a daemon: the validators, the netns opener and the handler
(CniHandler.handle, the seam every relay calls) fuzzed with hypothesis. The endpoint manager
behind the handler is a stand-in that opens the netns for real (netns.open_pod_netns) and
returns a record, so that what is tested is the parsing and checking; tests/test_cni_hostile.py
drives the same attacks through a real daemon and both plugin builds."""
import json
import os
import stat
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from podnetd import cni, socket_dir
from podnetd.endpoints import InvalidNetns, NodeNet, UnknownContainer
from podnetd.ipam import Record
from podnetd.kernel import netns as kernel_netns
from podnetd.kernel.errors import NamespaceGone
from testlib import Netns, ns_path

WELL_KNOWN = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}


class PodNetnsOnly:
    """The endpoint manager's contract as the handler sees it, minus the veth: attach/check
    open the netns exactly as the real one does (and fail as it does), then return a record."""

    node = NodeNet(bridge="pnbr0", gateway="10.77.0.1", prefixlen=24, mtu=1500)

    def _open(self, path: str) -> None:
        try:
            os.close(kernel_netns.open_pod_netns(path))
        except NamespaceGone as e:
            raise UnknownContainer(str(e)) from None
        except kernel_netns.InvalidNamespace as e:
            raise InvalidNetns(str(e)) from None

    def attach(self, container_id, ifname, netns_path, network=""):
        self._open(netns_path)
        return Record(container_id=container_id, ifname=ifname, address="10.77.0.2/24",
                      netns=netns_path, network=network, host_ifname="pn0123456789a",
                      mac="0a:00:00:00:00:01", host_mac="02:00:00:00:00:01")

    def detach(self, container_id, ifname, netns_path=""):
        return None

    def check(self, container_id, ifname, netns_path):
        self._open(netns_path)
        return Record(container_id=container_id, ifname=ifname, address="10.77.0.2/24")

    def gc(self, valid, network=None):
        return []


def handler() -> cni.CniHandler:
    return cni.CniHandler(PodNetnsOnly(), lambda: {"name": "pnbr0", "mac": "02:00:00:00:00:00"},
                          lambda: (True, "ready"))


def config(**extra) -> bytes:
    return json.dumps({"cniVersion": "1.1.0", "name": "podnet-test", "type": "podnet",
                       **extra}).encode()


def assert_spec_answer(code: int, out: bytes, command="") -> dict | None:
    """A valid result (exit 0: empty, or JSON for ADD/VERSION) or the spec's error JSON with a
    well-known code (never 999, never anything else). Returns the error body."""
    if code == 0:
        if out:
            body = json.loads(out)
            assert isinstance(body, dict) and "cniVersion" in body, out
        return None
    assert code == 1, (code, out)
    body = json.loads(out)
    assert set(body) <= {"cniVersion", "code", "msg", "details"}, body
    assert body["code"] in WELL_KNOWN, (command, body)
    assert isinstance(body["msg"], str) and body["msg"], body
    assert body["cniVersion"] in cni.SUPPORTED_VERSIONS, body
    return body


@pytest.fixture(scope="module")
def pod_ns():
    spaces = Netns()
    name = spaces.add("ci")
    yield ns_path(name)
    spaces.cleanup()


# -- the network namespace ------------------------------------------------------------------------

@pytest.fixture
def odd_files(tmp_path):
    regular = tmp_path / "file"
    regular.write_text("not a namespace")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return {"regular file": str(regular), "FIFO": str(fifo), "directory": str(tmp_path),
            "character device": "/dev/null", "mnt": "/proc/self/ns/mnt",
            "user": "/proc/self/ns/user", "uts": "/proc/thread-self/ns/uts"}


def test_open_netns_refuses_what_is_not_a_network_namespace(odd_files):
    for kind, path in odd_files.items():
        with pytest.raises(kernel_netns.InvalidNamespace) as err:
            os.close(kernel_netns.open_netns(path))
        assert kind in str(err.value) and "not a network namespace" in str(err.value), err.value


def test_open_netns_of_a_fifo_returns_at_once(odd_files):
    """The old open(O_RDONLY) of a FIFO waited for a writer forever (a stuck worker thread)."""
    done = threading.Event()
    outcome = {}

    def opener():
        try:
            kernel_netns.open_netns(odd_files["FIFO"])
        except kernel_netns.InvalidNamespace as e:
            outcome["error"] = str(e)
        done.set()

    threading.Thread(target=opener, daemon=True).start()
    try:
        # a generous bound: the call does not wait on anything, it only must not block forever
        assert done.wait(30), "open_netns blocked on a FIFO"
    finally:
        try:  # unblock a reader stuck in open(2) on the old code, so no thread is left behind
            os.close(os.open(odd_files["FIFO"], os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert "FIFO" in outcome["error"]


def test_open_pod_netns_refuses_the_nodes_own(pod_ns, monkeypatch):
    for own in ("/proc/self/ns/net", "/proc/thread-self/ns/net", f"/proc/{os.getpid()}/ns/net"):
        with pytest.raises(kernel_netns.InvalidNamespace, match="node's own network namespace"):
            kernel_netns.open_pod_netns(own)
    # the init process's namespace: /proc/1 is hidden from this sandbox, so a namespace we
    # made stands in for it in the comparison
    os.close(kernel_netns.open_pod_netns(pod_ns))
    monkeypatch.setattr(kernel_netns, "NODE_NAMESPACES", ("/proc/self/ns/net", pod_ns))
    with pytest.raises(kernel_netns.InvalidNamespace, match="init process's"):
        kernel_netns.open_pod_netns(pod_ns)


def test_open_netns_missing_path_is_gone_and_odd_paths_are_invalid():
    for path in ("/nonexistent/ns", "/etc/hostname/below-a-file"):
        with pytest.raises(NamespaceGone):
            kernel_netns.open_netns(path)
    for path in ("", "with\0nul"):
        with pytest.raises(kernel_netns.InvalidNamespace):
            kernel_netns.open_netns(path)


def test_run_in_netns_enters_the_checked_fd(pod_ns):
    fd = kernel_netns.open_pod_netns(pod_ns)
    try:
        names = kernel_netns.run_in_netns(
            fd, lambda: [link.get_attr("IFLA_IFNAME") for link in kernel_netns.ipr().get_links()])
    finally:
        os.close(fd)
    assert names == ["lo"]


def test_handler_maps_unusable_netns_to_code_4_and_missing_to_3(odd_files, pod_ns):
    h = handler()
    for path in [*odd_files.values(), "/proc/self/ns/net"]:
        code, out = h.handle("ADD", "c1", path, "eth0", config())
        body = assert_spec_answer(code, out)
        assert body["code"] == 4 and "CNI_NETNS" in body["msg"], (path, body)
    code, out = h.handle("CHECK", "c1", "/proc/self/ns/net", "eth0", config())
    assert json.loads(out)["code"] == 4
    code, out = h.handle("ADD", "c1", "/run/netns/does-not-exist", "eth0", config())
    assert json.loads(out)["code"] == 3
    for path in ("relative/ns", "/with\0nul", "/" + "x" * 5000):
        code, out = h.handle("ADD", "c1", path, "eth0", config())
        body = json.loads(out)
        assert body["code"] == 4 and "CNI_NETNS" in body["msg"], (path, body)
    code, out = h.handle("ADD", "c1", pod_ns, "eth0", config())
    assert code == 0 and json.loads(out)["ips"][0]["address"] == "10.77.0.2/24"


# -- the environment ------------------------------------------------------------------------------

@pytest.mark.parametrize("ifname, why", [
    ("é" * 10, "20 bytes"),           # 10 characters, 20 bytes: the kernel's limit is in bytes
    ("a" * 16, "16 bytes"),
    ("eà", "0xa0"),                   # 'à' is c3 a0: 0xa0 is white space to the kernel
    ("e%d", "0x25"),                  # a name template: the kernel would make it e0
    ("eth\x01", "0x01"), ("eth 0", "0x20"), ("eth/0", "0x2f"), ("eth:0", "0x3a"),
    (".", "'.'"), ("..", "'..'"),
])
def test_ifname_checked_in_bytes(ifname, why):
    with pytest.raises(cni.CniError) as err:
        cni.validate_env("ADD", "c1", "/run/netns/x", ifname)
    assert err.value.code == 4 and "CNI_IFNAME" in err.value.msg and why in err.value.details


@pytest.mark.parametrize("ifname", ["eth0", "é" * 7, "a" * 15, "net-1_2.x"])
def test_good_ifnames_pass(ifname):
    cni.validate_env("ADD", "c1", "/run/netns/x", ifname)


@pytest.mark.parametrize("cid", ["abc\n", "abc\r\n", "a" * 256, "\nabc", "ab\0c", "ａbc",
                                 "-x", "_x", ".x"])
def test_container_id_anchored_and_bounded(cid):
    with pytest.raises(cni.CniError) as err:
        cni.validate_env("ADD", cid, "/run/netns/x", "eth0")
    assert err.value.code == 4 and "CNI_CONTAINERID" in err.value.msg
    assert "\n" not in err.value.msg  # the value is shown repr'd: no raw newline in a log line


def test_container_id_of_the_maximum_length_passes():
    cni.validate_env("ADD", "a" * cni.MAX_CONTAINER_ID, "/run/netns/x", "eth0")


def test_env_values_that_are_not_text_are_code_4():
    h = handler()
    for args in [(None, "c1", "/n", "eth0"), ("ADD", b"c1", "/n", "eth0"),
                 ("ADD", "c1", 5, "eth0"), ("ADD", "c1", "/n", "eth0\udcff")]:
        code, out = h.handle(*args, config())
        assert json.loads(out)["code"] == 4, (args, out)


# -- the network configuration --------------------------------------------------------------------

def test_deeply_nested_config_is_code_6_before_parsing():
    deep = b'{"cniVersion": "1.1.0", "name": "n", "type": "podnet", "x": ' + b"[" * 100_000
    for raw in (deep, deep + b"]" * 100_000 + b"}"):
        code, out = handler().handle("ADD", "c1", "/run/netns/x", "eth0", raw)
        body = json.loads(out)
        assert body["code"] == 6 and "nested too deeply" in body["msg"], body


def test_depth_scan_counts_structure_not_strings():
    limit = cni.MAX_JSON_DEPTH
    at_limit = b"[" * limit + b"]" * limit
    assert not cni.json_depth_exceeds(at_limit, limit)
    assert cni.json_depth_exceeds(b"[" + at_limit + b"]", limit)
    # brackets inside strings, escaped quotes and backslashes do not count
    in_strings = json.dumps({"k": "[" * 500, "e": '\\"[[[' * 100, "b": "\\" * 7 + "{" * 300})
    assert not cni.json_depth_exceeds(in_strings.encode(), limit)
    # ...but a string that ends before the brackets does not hide them
    hidden = b'["\\\\"' + b"," + b"[" * (limit + 1)
    assert cni.json_depth_exceeds(hidden, limit)


def test_config_over_the_size_limit_is_code_6():
    raw = config(pad="x" * cni.MAX_CONFIG_BYTES)
    code, out = handler().handle("ADD", "c1", "/run/netns/x", "eth0", raw)
    body = json.loads(out)
    assert body["code"] == 6 and "too large" in body["msg"] and str(len(raw)) in body["details"]


@pytest.mark.parametrize("raw, why", [
    (b"\xff\xfe{}", "UTF-8"),
    ('{"cniVersion": "1.1.0", "name": "n", "type": "podnet"}'.encode("utf-16"), "UTF-8"),
    (b'{"cniVersion": "1.1.0", "name": "n", "type": "podnet", "x": NaN}', "NaN"),
    (b'{"cniVersion": "1.1.0", "name": "n", "type": "podnet", "x": -Infinity}', "Infinity"),
    (b'{"cniVersion": "1.1.0", "name": "n", "name": "m", "type": "podnet"}', "duplicate key"),
    (b'{"cniVersion": "1.1.0", "name": "n", "type": "podnet", "x": ' + b"9" * 5000 + b"}",
     "digits"),
    (b'[1, 2]', "object"), (b'"str"', "object"), (b"", "Expecting value"),
])
def test_undecodable_configs_are_code_6(raw, why):
    code, out = handler().handle("ADD", "c1", "/run/netns/x", "eth0", raw)
    body = json.loads(out)
    assert body["code"] == 6, body
    assert why in body["msg"] + body.get("details", ""), body


@pytest.mark.parametrize("extra, code, why", [
    ({"name": "bad name"}, 7, "network name"), ({"name": "n" * 256}, 7, "network name"),
    ({"name": ["n"]}, 7, "'name'"), ({"cniVersion": 1}, 7, "cniVersion"),
    ({"cniVersion": "1.1.0\n"}, 1, "incompatible"), ({"socket": 5}, 7, "socket"),
    ({"prevResult": []}, 7, "prevResult"), ({"prevResult": {"ips": 5}}, 7, "prevResult.ips"),
    ({"prevResult": {"ips": [{"address": 5}]}}, 7, "prevResult.ips[0]"),
    ({"prevResult": {"ips": ["10.0.0.1/24"]}}, 7, "prevResult.ips[0]"),
])
def test_bad_top_level_keys_are_spec_errors(pod_ns, extra, code, why):
    code_seen, out = handler().handle("CHECK", "c1", pod_ns, "eth0", config(**extra))
    body = json.loads(out)
    assert body["code"] == code and why in body["msg"], body


def test_only_documented_top_level_keys_are_read(pod_ns):
    """A "socket" (or any key) nested in prevResult or elsewhere is not the daemon's business:
    ignored, whatever its type."""
    nested = {"prevResult": {"socket": 5, "ips": [{"address": "10.77.0.2/24", "socket": []}],
                             "name": ["x"]},
              "args": {"socket": {"a": 1}, "cniVersion": 7}, "runtimeConfig": {"name": 1}}
    code, out = handler().handle("CHECK", "c1", pod_ns, "eth0", config(**nested))
    assert (code, out) == (0, b"")


def test_an_internal_failure_is_999_not_a_traceback():
    class Broken(PodNetnsOnly):
        def detach(self, *args):
            raise ZeroDivisionError("a bug")
    h = cni.CniHandler(Broken(), lambda: {}, lambda: (True, ""))
    code, out = h.handle("DEL", "c1", "", "eth0", config())
    body = json.loads(out)
    assert code == 1 and body["code"] == 999 and "ZeroDivisionError" in body["details"]


# -- fuzzing: any input gives a valid result or a spec error with a well-known code --------------

PATHS = st.sampled_from(["", "/proc/self/ns/net", "/proc/self/ns/mnt", "/dev/null", "/",
                         "/run/netns/nonexistent", "/proc/1/ns/net", "relative"])
# any code point, lone surrogates included (what a relay that decodes bytes with
# surrogateescape hands over), NUL and control characters included
ANY_TEXT = st.text(alphabet=st.characters() | st.characters(categories=["Cs"]), max_size=40)
COMMAND = st.one_of(st.sampled_from(cni.COMMANDS), ANY_TEXT)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20)
TOP_LEVEL = st.fixed_dictionaries({}, optional={
    "cniVersion": st.one_of(st.sampled_from(cni.SUPPORTED_VERSIONS), JSON),
    "name": st.one_of(st.just("podnet-test"), JSON), "type": st.one_of(st.just("podnet"), JSON),
    "socket": JSON, "prevResult": JSON, "cni.dev/valid-attachments": JSON, "extra": JSON})
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(command=COMMAND, cid=ANY_TEXT, netns=st.one_of(PATHS, ANY_TEXT), ifname=ANY_TEXT,
       raw=st.binary(max_size=200))
def test_fuzz_random_bytes_and_env(command, cid, netns, ifname, raw):
    assert_spec_answer(*handler().handle(command, cid, netns, ifname, raw), command)


@FUZZ
@given(command=st.sampled_from(cni.COMMANDS), cid=st.one_of(st.just("c1"), ANY_TEXT),
       ifname=st.one_of(st.just("eth0"), ANY_TEXT), top=TOP_LEVEL, data=st.data())
def test_fuzz_random_json_configs(pod_ns, command, cid, ifname, top, data):
    netns = data.draw(st.one_of(st.just(pod_ns), PATHS))
    raw = json.dumps(top).encode()
    assert_spec_answer(*handler().handle(command, cid, netns, ifname, raw), command)


@FUZZ
@given(cid=st.one_of(st.just("c1"), ANY_TEXT), netns=st.one_of(PATHS, ANY_TEXT),
       ifname=st.one_of(st.just("eth0"), ANY_TEXT))
def test_fuzz_env_with_a_good_config(pod_ns, cid, netns, ifname):
    for command in ("ADD", "CHECK", "DEL"):
        assert_spec_answer(*handler().handle(command, cid, netns, ifname, config()), command)


def _depth(value) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


DEEP_JSON = st.recursive(st.none() | st.text(alphabet='[]{}"\\\\ab', max_size=6),
                         lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(alphabet='[{"\\\\', max_size=3), inner,
                                           max_size=3), max_leaves=30)


@settings(max_examples=150, deadline=None)
@given(value=DEEP_JSON, limit=st.integers(0, 6))
def test_fuzz_depth_scan_is_exact_for_json(value, limit):
    """Strings full of brackets, quotes and backslashes: the scan counts what json.loads
    would recurse into, no more and no less."""
    raw = json.dumps(value).encode()
    assert cni.json_depth_exceeds(raw, limit) == (_depth(value) > limit), raw


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=300) | st.lists(st.sampled_from(
    ["[" * 8, "[", '{"k":', '"', '\\', '\\\\', '\\"', "]", "}", ",", "1"]),
    max_size=60).map(lambda tokens: "".join(tokens).encode()))
def test_fuzz_depth_scan_never_lets_the_parser_recurse_too_deep(raw):
    """Broken text too: whatever the scan lets through, json.loads (its recursion limit set
    just above the scan's limit) parses or rejects it with a ValueError, never a
    RecursionError."""
    import sys
    if cni.json_depth_exceeds(raw, 3):
        return
    old = sys.getrecursionlimit()
    # json's C scanner counts its own depth against the recursion limit: stay close above
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    sys.setrecursionlimit(depth + 30)
    try:
        json.loads(raw)
    except ValueError:
        pass
    finally:
        sys.setrecursionlimit(old)


# -- the socket directory -------------------------------------------------------------------------

def test_socket_dir_created_private(tmp_path):
    directory = tmp_path / "run" / "podnet"
    socket_dir.ensure(str(directory))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    socket_dir.ensure(str(directory))   # an existing private one is fine


@pytest.mark.parametrize("mode", [0o755, 0o777, 0o1777, 0o710])
def test_socket_dir_with_access_for_others_is_refused(tmp_path, mode):
    directory = tmp_path / "d"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(socket_dir.InsecureSocketDir, match="mode"):
        socket_dir.ensure(str(directory))
    assert stat.S_IMODE(directory.stat().st_mode) == mode  # left as it was


@pytest.mark.root
def test_socket_dir_symlink_or_file_or_foreign_owner_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(socket_dir.InsecureSocketDir, match="symbolic link"):
        socket_dir.ensure(str(tmp_path / "link"))
    (tmp_path / "file").write_text("")
    with pytest.raises(socket_dir.InsecureSocketDir, match="not a directory"):
        socket_dir.ensure(str(tmp_path / "file"))
    os.chown(real, 1234, 0)
    with pytest.raises(socket_dir.InsecureSocketDir, match="owned by uid 1234"):
        socket_dir.ensure(str(real))
