"""The CNI relay: the plugin <-> podnetd protocol (docs/cni-relay.md), both plugin builds and the
daemon's relay server, under hostile input.

- the codec of both sides agrees, and decoders given any bytes raise ProtocolError or decode;
- the plugin builds (native, Python, and the native one under AddressSanitizer + UBSan) read
  "socket" and "cniVersion" at the top level only, bound the config (size, depth) and every
  frame, and answer anything malformed, from stdin or from a fake relay, with the spec's error
  JSON: no crash, no traceback, no sanitizer report;
- the daemon side (podnetd/cni_relay.py): bounded, off the event loop, root-only socket.
"""
import asyncio
import concurrent.futures
import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import testlib
from testlib import REPO, Daemon, assert_one_clear_line, ns_path, unique
from podnetd import cni_relay
from podnetd.install import build_native

sys.path.insert(0, str(REPO / "cni-plugin"))
import plugin  # noqa: E402  (the portable build, as a module)

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SANITIZER_ENV = {"ASAN_OPTIONS": "exitcode=99:detect_leaks=1:abort_on_error=0",
                 "UBSAN_OPTIONS": "exitcode=98:print_stacktrace=1:halt_on_error=1"}
OK_ANSWER = cni_relay.MAGIC + cni_relay.encode_answer(0, b'{"fake": "answer"}\n')


# --- the plugin builds, run as a runtime runs them ----------------------------------------------


@pytest.fixture(scope="module")
def asan_plugin():
    out = os.path.join(tempfile.mkdtemp(prefix="pt-asan-"), "podnet")
    build_native(out, sanitize=True)
    yield out
    os.unlink(out)
    os.rmdir(os.path.dirname(out))


def build_argv(build: str, asan_path: str | None = None) -> list[str]:
    return [asan_path] if build == "asan" else testlib.PLUGIN_ARGV[build]


@pytest.fixture(params=["native", "python", "asan"])
def build(request):
    """argv of each build; the asan one is compiled once per module."""
    if request.param == "asan":
        return build_argv("asan", request.getfixturevalue("asan_plugin"))
    return build_argv(request.param)


def run(argv, config: bytes, command: bytes = b"ADD", env: dict | None = None, timeout: float = 30):
    """(exit code, stdout bytes, stderr text); env values are bytes, as a runtime may pass them."""
    environ = {b"PATH": b"/usr/bin:/bin", b"CNI_COMMAND": command, b"CNI_CONTAINERID": b"relay1",
               b"CNI_NETNS": b"/proc/self/ns/net", b"CNI_IFNAME": b"eth0", **SANITIZER_BYTES}
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    proc = subprocess.run(argv, input=config, env=environ, capture_output=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


SANITIZER_BYTES = {k.encode(): v.encode() for k, v in SANITIZER_ENV.items()}


def assert_clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Sanitizer" not in stderr and "runtime error" not in stderr, stderr


def assert_spec_error(rc: int, out: bytes, err: str, code: int | set) -> dict:
    assert_clean(err)
    assert rc == 1, (rc, out, err)
    body = json.loads(out)
    assert set(body) <= {"cniVersion", "code", "msg", "details"} and body["msg"], body
    assert body["code"] in (code if isinstance(code, set) else {code}), body
    return body


# --- a fake relay: records requests, answers what the test says ----------------------------------


class FakeRelay:
    """A unix socket server in a thread speaking the relay's framing on the request side; its
    answer is `answer` (bytes, or a function(sock) that writes whatever it likes)."""

    def __init__(self, answer=OK_ANSWER):
        self.dir = tempfile.mkdtemp(prefix=f"{unique('fr')}-")
        self.path = os.path.join(self.dir, "cni.sock")
        self.answer = answer
        self.requests: list[tuple] = []
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            with conn:
                conn.settimeout(10)
                try:
                    header = _read_exactly(conn, 8)
                    body = _read_exactly(conn, cni_relay.request_length(header))
                    self.requests.append(cni_relay.decode_request_body(body))
                    if callable(self.answer):
                        self.answer(conn)
                    else:
                        conn.sendall(self.answer)
                except (OSError, cni_relay.ProtocolError, EOFError) as e:
                    self.requests.append(("bad request", str(e)))

    def config(self, **extra) -> bytes:
        return json.dumps({"cniVersion": "1.0.0", "name": "relay", "type": "podnet",
                           "socket": self.path, **extra}).encode()

    def close(self):
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.rmdir(self.dir)


def _read_exactly(conn, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


@pytest.fixture
def relay():
    servers = []

    def make(answer=OK_ANSWER) -> FakeRelay:
        servers.append(FakeRelay(answer))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


# --- the codec ------------------------------------------------------------------------------------

env_value = st.binary(max_size=64).filter(lambda b: b"\0" not in b)


@FUZZ
@given(env_value, env_value, env_value, env_value, st.binary(max_size=3000))
def test_plugin_requests_decode_in_the_daemon(command, cid, netns, ifname, config):
    env = {b"CNI_COMMAND": command, b"CNI_CONTAINERID": cid, b"CNI_NETNS": netns,
           b"CNI_IFNAME": ifname, b"CNI_ARGS": b"IGNORED=1"}
    frame = plugin.encode_request(env, config)
    assert frame == cni_relay.encode_request(command, cid, netns, ifname, config)
    body = frame[8:]
    assert cni_relay.request_length(frame[:8]) == len(body)
    assert cni_relay.decode_request_body(body) == (command, cid, netns, ifname, config)


@FUZZ
@given(st.binary(max_size=400))
def test_daemon_decoder_takes_any_bytes(data):
    for decode in (lambda: cni_relay.request_length(data[:8]),
                   lambda: cni_relay.decode_request_body(data),
                   lambda: cni_relay.decode_answer(data)):
        try:
            decode()
        except cni_relay.ProtocolError:
            pass


def test_bounds_are_enforced_on_both_sides():
    big = b"x" * (cni_relay.MAX_ENV + 1)
    with pytest.raises(plugin.PluginError) as e:
        plugin.encode_request({b"CNI_NETNS": big}, b"{}")
    assert e.value.code == 4 and "CNI_NETNS" in e.value.msg
    with pytest.raises(cni_relay.ProtocolError):
        cni_relay.request_length(cni_relay.MAGIC + (cni_relay.MAX_REQUEST + 1).to_bytes(4, "big"))
    oversized_field = (cni_relay.MAX_ENV + 1).to_bytes(4, "big") + big
    with pytest.raises(cni_relay.ProtocolError, match="CNI_COMMAND"):
        cni_relay.decode_request_body(oversized_field)
    with pytest.raises(cni_relay.ProtocolError):
        cni_relay.encode_answer(0, b"x" * (cni_relay.MAX_STDOUT + 1))
    with pytest.raises(plugin.RelayUnavailable):
        plugin.decode_answer_length((cni_relay.MAX_ANSWER + 1).to_bytes(4, "big"))
    assert (plugin.MAX_CONFIG, plugin.MAX_ENV, plugin.MAX_ANSWER, plugin.MAGIC) == (
        cni_relay.MAX_CONFIG, cni_relay.MAX_ENV, cni_relay.MAX_ANSWER, cni_relay.MAGIC)


# --- the network config: a real parser, top-level keys only ---------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@FUZZ
@given(st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode()))
def test_python_build_parses_any_bytes_to_an_object_or_code_6(raw):
    try:
        config = plugin.parse_config(raw)
    except plugin.PluginError as e:
        assert e.code == 6 and e.msg and e.details
    else:
        assert isinstance(config, dict)


def test_deep_nesting_and_size_are_code_6_without_recursion():
    for raw in (b"[" * 100_000, b'{"a":' * 100_000, json.dumps({"a": [[[[]]]]}).replace(
            "[[[[]]]]", "[" * 600 + "]" * 600).encode()):
        with pytest.raises(plugin.PluginError, match="nested too deeply") as e:
            plugin.parse_config(raw)
        assert e.value.code == 6 and "at most 64 levels" in e.value.details
    deepest_allowed = b'{"a":' + b"[" * 63 + b"]" * 63 + b"}"  # the object + 63 arrays
    assert isinstance(plugin.parse_config(deepest_allowed)["a"], list)
    limit = plugin.MAX_CONFIG
    exactly = b'{"a": 1}' + b" " * (limit - 8)
    assert plugin.parse_config(exactly) == {"a": 1}
    with pytest.raises(plugin.PluginError, match="too large") as e:
        plugin.parse_config(exactly + b" ")
    assert e.value.code == 6 and "at most 4194304 bytes" in e.value.details


def test_limits_are_podnetds():
    """The plugin refuses what podnetd would (podnetd/cni.py), with the same words."""
    from podnetd import cni
    assert (plugin.MAX_CONFIG, plugin.MAX_DEPTH) == (cni.MAX_CONFIG_BYTES, cni.MAX_JSON_DEPTH)
    for raw in (b'{"a": 1, "a": 2}', b"[" * 100, b"[1]", b'{"a": ' + b"x" * plugin.MAX_CONFIG,
                b'{"a": NaN}', b"\xff"):
        with pytest.raises(plugin.PluginError) as mine:
            plugin.parse_config(raw)
        with pytest.raises(cni.CniError) as daemons:
            cni.parse_config(raw)
        assert (mine.value.code, mine.value.msg) == (daemons.value.code, daemons.value.msg), raw[:20]


# --- both builds against a fake relay --------------------------------------------------------------


def test_socket_in_prevresult_does_not_redirect(build, relay):
    top, decoy = relay(), relay()
    config = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "podnet",
                         "prevResult": {"socket": decoy.path, "cniVersion": "0.3.1"},
                         "runtimeConfig": {"socket": decoy.path}, "args": {"socket": decoy.path},
                         "socket": top.path}).encode()
    rc, out, err = run(build, config)
    assert_clean(err)
    assert (rc, out) == (0, b'{"fake": "answer"}\n')
    assert decoy.connections == 0 and len(top.requests) == 1
    assert top.requests[0] == (b"ADD", b"relay1", b"/proc/self/ns/net", b"eth0", config)
    # the key first in the text, nested, is not the one used either way round
    config = (b'{"prevResult": {"socket": "%s"}, "cniVersion": "1.0.0", "socket": "%s"}'
              % (decoy.path.encode(), top.path.encode()))
    rc, out, err = run(build, config, command=b"DEL")
    assert rc == 0 and decoy.connections == 0 and top.requests[-1][0] == b"DEL"


def test_nested_cniversion_is_not_the_requested_version(build):
    config = b'{"prevResult": {"cniVersion": "0.3.1"}, "name": "x", "socket": "relative"}'
    body = assert_spec_error(*run(build, config), code=7)
    assert body["cniVersion"] == "1.1.0"
    config = b'{"cniVersion": "0.4.0", "prevResult": {"cniVersion": "0.3.1"}, "socket": 5}'
    body = assert_spec_error(*run(build, config), code=7)
    assert body["cniVersion"] == "0.4.0" and body["msg"] == "'socket' must be a string path"


def test_duplicate_keys_are_code_6_and_go_nowhere(build, relay):
    """Readers differ on which of two equal keys wins (the last in Go and Python, the first in
    others): a config with two "socket"s could send the call to one daemon and be read with the
    other's values. Refused, as podnetd refuses them."""
    first, last = relay(), relay()
    for config in (b'{"cniVersion": "1.0.0", "socket": "%s", "socket": "%s"}'
                   % (first.path.encode(), last.path.encode()),
                   b'{"socket": "%s", "prevResult": {"ips": [], "ips": []}}' % last.path.encode()):
        body = assert_spec_error(*run(build, config), code=6)
        assert "duplicate" in body["details"]
    assert first.connections == last.connections == 0


def test_escaped_socket_path_is_decoded(build, relay):
    server = relay()
    escaped = "".join("\\u%04x" % ord(c) for c in server.path)
    rc, out, err = run(build, b'{"cniVersion": "1.0.0", "socket": "%s"}' % escaped.encode())
    assert rc == 0 and len(server.requests) == 1, (out, err)


UNDECODABLE = "cannot decode the network configuration"
TOO_DEEP = "the network configuration is nested too deeply"
TOO_LARGE = "the network configuration is too large"
NOT_AN_OBJECT = "the network configuration must be a JSON object"


@pytest.mark.parametrize("raw, msg", [
    (b"[" * 100_000, TOO_DEEP), (b'{"a":' * 100_000, TOO_DEEP),
    (b"[" * 100_000 + b"]" * 100_000, TOO_DEEP),
    (b'{"a": "' + b"x" * (4 << 20) + b'"}', TOO_LARGE),
    (b'{"a": 1} ' + b" " * (4 << 20), TOO_LARGE),
    (b"", UNDECODABLE), (b"\xff\xfe{}", UNDECODABLE), (b'{"a": "\xc3"}', UNDECODABLE),
    (b'{"a": NaN}', UNDECODABLE), (b'{"a": 1e400}', UNDECODABLE),
    (b'{"a": 123456789012345678901234567890}', UNDECODABLE), (b'{"a": "\\u0000"}', UNDECODABLE),
    (b'{"a": "\\ud800"}', UNDECODABLE), (b'{"a": 1} {}', UNDECODABLE), (b"[]", NOT_AN_OBJECT),
    (b'"socket"', NOT_AN_OBJECT), (b"\x00" * 100, UNDECODABLE),
    (b'\xef\xbb\xbf{"a": 1}', UNDECODABLE),
])
def test_undecodable_configs_are_code_6(build, raw, msg):
    body = assert_spec_error(*run(build, raw), code=6)
    assert body["msg"] == msg and body["details"]


def test_depth_limit_is_the_same_in_every_build(build, relay):
    server = relay()
    head = b'{"socket": "%s", "a": ' % server.path.encode()
    rc, out, err = run(build, head + b"[" * 63 + b"]" * 63 + b"}")
    assert rc == 0 and len(server.requests) == 1, (out, err)
    body = assert_spec_error(*run(build, head + b"[" * 64 + b"]" * 64 + b"}"), code=6)
    assert body["msg"] == TOO_DEEP and len(server.requests) == 1


def test_config_of_exactly_the_limit_is_relayed(build, relay):
    server = relay()
    config = server.config()
    config += b" " * (plugin.MAX_CONFIG - len(config))
    rc, out, err = run(build, config)
    assert rc == 0 and server.requests[0][4] == config, err


def test_closed_or_unreadable_stdin_is_code_6(build):
    env = {**SANITIZER_ENV, "PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD"}
    proc = subprocess.run(build, stdin=subprocess.DEVNULL, env=env, capture_output=True,
                          timeout=30, preexec_fn=lambda: os.close(0))
    body = assert_spec_error(proc.returncode, proc.stdout, proc.stderr.decode(), code=6)
    assert body["msg"] == "cannot read the network configuration" and "stdin" in body["details"]
    if build[0] != testlib.PY:  # CPython itself refuses to start on a directory as stdin
        directory = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            proc = subprocess.run(build, stdin=directory, env=env, capture_output=True, timeout=30)
        finally:
            os.close(directory)
        body = assert_spec_error(proc.returncode, proc.stdout, proc.stderr.decode(), code=6)
        assert "Is a directory" in body["details"]


def test_long_environment_values_are_code_4(build, relay):
    server = relay()
    body = assert_spec_error(*run(build, server.config(), env={b"CNI_NETNS": b"/" * 5000}), code=4)
    assert "CNI_NETNS" in body["msg"] and server.connections == 0
    body = assert_spec_error(*run(build, server.config(), env={b"CNI_COMMAND": None}), code=4)
    assert body["cniVersion"] == "1.0.0"


def test_non_utf8_environment_is_relayed_as_bytes(build, relay):
    server = relay()
    rc, out, err = run(build, server.config(), env={b"CNI_CONTAINERID": b"\xff\xfe-id"})
    assert rc == 0 and server.requests[0][1] == b"\xff\xfe-id", err


def _close_now(conn):
    pass


def _greet_then_close(conn):
    conn.sendall(cni_relay.MAGIC)


def _never_greet(conn):
    conn.settimeout(10)
    with contextlib.suppress(OSError):
        conn.recv(1)  # until the plugin gives up and closes


MALFORMED = {
    "closes at once": (_close_now, 11),
    "greets, then closes": (_greet_then_close, 11),
    "never greets": (_never_greet, 11),
    "gRPC's SETTINGS frame": (b"\x00\x00\x18\x04\x00\x00\x00\x00\x00", 7),
    "oversized answer": (cni_relay.MAGIC + (cni_relay.MAX_ANSWER + 1).to_bytes(4, "big"), 11),
    "huge length": (cni_relay.MAGIC + b"\xff\xff\xff\xff" + b"x" * 100, 11),
    "empty answer": (cni_relay.MAGIC + b"\x00\x00\x00\x00", 11),
    "truncated answer": (cni_relay.MAGIC + b"\x00\x00\x01\x00" + b"\x00{}", 11),
    "half a header": (cni_relay.MAGIC + b"\x00\x00", 11),
    "half the magic": (cni_relay.MAGIC[:2], 11),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_answers_are_spec_errors(build, relay, case):
    answer, code = MALFORMED[case]
    server = relay(answer)
    body = assert_spec_error(*run(build, server.config()), code=code)
    assert body["msg"] in ("podnetd is not available", f"'socket' {server.path} is not podnetd's CNI relay")
    assert len(server.requests) == 1 and server.requests[0][0] == b"ADD"
    if code == 11:
        body = assert_spec_error(*run(build, server.config(), command=b"STATUS"), code=50)


def test_daemon_down_is_try_again(build):
    gone = os.path.join(tempfile.gettempdir(), unique("gone"), "cni.sock")
    config = json.dumps({"cniVersion": "0.4.0", "socket": gone}).encode()
    body = assert_spec_error(*run(build, config), code=11)
    assert body["cniVersion"] == "0.4.0" and gone in body["details"]
    assert_spec_error(*run(build, config, command=b"STATUS"), code=50)
    rc, out, err = run(build, config, command=b"VERSION")
    assert rc == 0 and "1.1.0" in json.loads(out)["supportedVersions"]


def test_version_never_reads_stdin(build):
    """VERSION is answered at once, even when the runtime never closes stdin."""
    env = {**SANITIZER_ENV, "PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION"}
    with subprocess.Popen(build, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as proc:
        try:
            rc = proc.wait(timeout=20)  # stdin stays open; the answer fits the pipe buffer
        finally:
            proc.kill()
        out, err = proc.stdout.read(), proc.stderr.read().decode()
    assert rc == 0 and "1.1.0" in json.loads(out)["supportedVersions"]
    assert_clean(err)


def test_answers_are_relayed_verbatim(build, relay):
    stdout = b'{"cniVersion": "1.0.0", "code": 3, "msg": "\xff binary is passed through"}\n'
    server = relay(cni_relay.MAGIC + cni_relay.encode_answer(7, stdout))
    rc, out, err = run(build, server.config())
    assert (rc, out) == (7, stdout)
    assert_clean(err)


# --- fuzzing: hypothesis against the builds -------------------------------------------------------

def _configs(socket_path: str):
    top = st.fixed_dictionaries({"socket": st.just(socket_path)}, optional={
        "cniVersion": st.sampled_from(["0.3.1", "1.0.0", "1.1.0", "9.9", ""]) | json_values,
        "prevResult": st.fixed_dictionaries({"socket": st.just("/nonexistent/decoy.sock")},
                                            optional={"cniVersion": st.just("0.3.1")}),
        "name": json_values, "x": json_values})
    documents = top.map(lambda d: json.dumps(d).encode())
    mutated = st.tuples(documents, st.integers(0, 200), st.binary(max_size=4)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):])
    nested = st.tuples(st.integers(1, 3000), st.sampled_from([b"[", b'{"a":'])).map(
        lambda t: b'{"socket": "%s", "v": ' % socket_path.encode() + t[1] * t[0])
    duplicates = st.lists(st.sampled_from([b'"socket": "%s"' % socket_path.encode(),
                                           b'"cniVersion": "0.4.0"', b'"socket": 1']),
                          min_size=1, max_size=4).map(lambda keys: b"{" + b", ".join(keys) + b"}")
    return documents | mutated | nested | duplicates | st.binary(max_size=300)


environments = st.fixed_dictionaries({}, optional={
    b"CNI_COMMAND": st.sampled_from([b"ADD", b"DEL", b"CHECK", b"STATUS", b"GC", b"", b"\xff"]),
    b"CNI_CONTAINERID": env_value, b"CNI_NETNS": env_value | st.just(b"n" * 4097),
    b"CNI_IFNAME": env_value})


def _outcome(rc, out, err):
    assert_clean(err)
    if rc == 0:
        return ("relayed", out)
    body = json.loads(out)
    assert rc == 1 and isinstance(body["code"], int) and body["msg"], (rc, out, err)
    return ("error", body["code"], body["cniVersion"])


def test_builds_agree_on_fuzzed_configs(relay, asan_plugin):
    """native, Python and ASan builds: same outcome for every generated config and environment;
    nothing is ever sent anywhere but the top-level socket."""
    server = relay()
    argvs = [build_argv("native"), build_argv("python"), build_argv("asan", asan_plugin)]

    @FUZZ
    @given(_configs(server.path), environments)
    def check(config, env):
        seen = len(server.requests)
        outcomes = [_outcome(*run(argv, config, env={b"CNI_COMMAND": b"ADD", **env})) for argv in argvs]
        assert outcomes[0] == outcomes[1] == outcomes[2], (config, env, outcomes)
        relayed = outcomes[0][0] == "relayed"
        assert len(server.requests) == seen + (3 if relayed else 0)
        if relayed:
            assert server.requests[-1][4] == config
    check()


def test_asan_build_survives_fuzzed_answers(relay, asan_plugin):
    argv = build_argv("asan", asan_plugin)
    answer = {"bytes": b""}
    server = relay(lambda conn: conn.sendall(answer["bytes"]))
    frames = st.binary(max_size=64) | st.tuples(st.integers(0, 2 ** 32 - 1), st.binary(max_size=64)).map(
        lambda t: cni_relay.MAGIC + t[0].to_bytes(4, "big") + t[1]) | st.tuples(
        st.integers(0, 255), st.binary(max_size=64)).map(
        lambda t: cni_relay.MAGIC + cni_relay.encode_answer(*t))

    @FUZZ
    @given(frames)
    def check(data):
        answer["bytes"] = data
        rc, out, err = run(argv, server.config())
        assert_clean(err)
        try:
            expected = cni_relay.decode_answer(data)
        except cni_relay.ProtocolError:
            expected = None
        if expected is not None:
            assert (rc, out) == expected
        else:
            assert_spec_error(rc, out, err, code={7, 11})
    check()


def test_asan_build_fuzzed_against_a_real_daemon(daemon, asan_plugin, netns):
    """Generated configs and environments through the sanitized build to a real podnetd: spec
    errors or results, never a sanitizer report; the daemon keeps answering."""
    argv = build_argv("asan", asan_plugin)
    pod = netns.add("fz")

    @FUZZ
    @given(_configs(daemon.cni_socket), environments)
    def check(config, env):
        env = {b"CNI_NETNS": ns_path(pod).encode(), **env}
        rc, out, err = run(argv, config, env=env)
        assert_clean(err)
        if rc != 0:
            _outcome(rc, out, err)
        if rc == 0 and env.get(b"CNI_COMMAND", b"ADD") == b"ADD" and out.strip():
            run(argv, config, command=b"DEL", env=env)
    check()
    rc, out, err = run(argv, json.dumps(daemon.config()).encode(), command=b"STATUS")
    assert rc == 0, (out, err, daemon.log()[-2000:])


# --- the daemon's relay server -----------------------------------------------------------------------


def test_daemon_relay_socket_is_root_only_and_grpc_cni_is_gone(daemon):
    assert stat.S_IMODE(os.stat(daemon.cni_socket).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(daemon.cni_socket).st_mode)
    from podnetd.api.podnet.v1 import node_pb2
    assert "Cni" not in node_pb2.DESCRIPTOR.services_by_name


@pytest.mark.parametrize("flags, message", [
    (["--cni-socket", "relative.sock"], "--cni-socket relative.sock: must be an absolute path"),
    (["--socket", "/run/x/a.sock", "--cni-socket", "/run/x/a.sock"], "other than --socket"),
])
def test_cni_socket_flag_is_checked(flags, message):
    proc = subprocess.run([testlib.PY, "-m", "podnetd.main", "--pod-cidr", "10.94.0.0/24", *flags],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert_one_clear_line(proc.stderr, message, prefix="podnetd: error:")


def test_cni_socket_flag(netns, tmp_path):
    path = str(tmp_path / "elsewhere.sock")
    d = Daemon(netns.add("cs"), "10.93.0.0/24", extra=["--cni-socket", path])
    d.cni_socket = path
    try:
        d.start()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert not os.path.exists(os.path.join(d.workdir, "cni.sock"))
    finally:
        d.cleanup()
    assert not os.path.exists(path), "the relay socket outlived podnetd"


def _raw(path: str, data: bytes, timeout: float = 20) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        with contextlib.suppress(OSError):
            s.sendall(data)  # no shutdown: a client that closes its end has given up
        out = b""
        with contextlib.suppress(ConnectionResetError):  # closed with our request unread
            while chunk := s.recv(65536):
                out += chunk
        return out


def test_daemon_drops_malformed_requests_and_keeps_serving(daemon):
    good = cni_relay.encode_request(b"STATUS", b"", b"", b"", json.dumps(daemon.config()).encode())
    body_len = int.from_bytes(good[4:8], "big")
    bads = []
    for bad in (b"GET / HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", good[:20],
                cni_relay.MAGIC + (cni_relay.MAX_REQUEST + 1).to_bytes(4, "big"),
                cni_relay.MAGIC + (body_len + 3).to_bytes(4, "big") + good[8:] + b"xyz",
                cni_relay.MAGIC + b"\x00\x00\x00\x08" + (cni_relay.MAX_ENV + 1).to_bytes(4, "big") + b"ab",
                b""):
        bads.append(bad)
    # at once: the truncated ones each wait out the relay's request timeout (10 s)
    with concurrent.futures.ThreadPoolExecutor(len(bads)) as pool:
        answers = list(pool.map(lambda bad: _raw(daemon.cni_socket, bad), bads))
    assert answers == [b""] * len(bads), list(zip(bads, answers))
    assert cni_relay.decode_answer(_raw(daemon.cni_socket, good)) == (0, b"")
    assert "CNI relay: bad request" in daemon.log()


def test_daemon_answers_handler_failures_with_code_999(daemon):
    # a config the handler chokes on must still give an answer, never a dropped connection
    request = cni_relay.encode_request(b"ADD", b"x", b"/proc/self/ns/net", b"eth0", b"[" * 100_000)
    exit_code, stdout = cni_relay.decode_answer(_raw(daemon.cni_socket, request))
    body = json.loads(stdout)
    assert exit_code == 1 and body["code"] in (6, 999), body


# in-process: the server class with a handler the test controls

class _Server:
    def __init__(self, handle, **kw):
        self.dir = tempfile.mkdtemp(prefix=f"{unique('rs')}-")
        self.path = os.path.join(self.dir, "cni.sock")
        self.loop = asyncio.new_event_loop()
        self.relay = cni_relay.CniRelay(self.path, handle, **kw)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.relay.start(), self.loop).result(10)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.relay.stop(grace=0.5), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def server():
    made = []

    def make(handle, **kw):
        made.append(_Server(handle, **kw))
        return made[-1]
    yield make
    for s in made:
        s.close()


REQUEST = cni_relay.encode_request(b"ADD", b"c", b"/n", b"eth0", b"{}")


def test_handler_runs_off_the_event_loop_and_connections_are_bounded(server):
    release, entered = threading.Event(), threading.Semaphore(0)

    def handle(command, cid, netns, ifname, config):
        entered.release()
        release.wait(20)  # blocks a thread, never the loop
        return 0, cid.encode()
    s = server(handle, max_connections=2)
    results = []
    workers = [threading.Thread(target=lambda c=c: results.append(_raw(
        s.path, cni_relay.encode_request(b"ADD", c, b"/n", b"eth0", b"{}")))) for c in (b"a", b"b")]
    try:
        for w in workers:
            w.start()
        for _ in workers:
            assert entered.acquire(timeout=20)
        # both slots busy: a third connection is closed at once, without a greeting
        assert _raw(s.path, REQUEST) == b""
    finally:
        release.set()
        for w in workers:
            w.join(20)
    assert sorted(cni_relay.decode_answer(r) for r in results) == [(0, b"a"), (0, b"b")]


def test_slow_client_is_dropped_and_handler_errors_answer(server):
    def handle(command, cid, netns, ifname, config):
        raise RuntimeError("handler bug")
    s = server(handle, request_timeout=0.3)
    with socket.socket(socket.AF_UNIX) as idle:
        idle.settimeout(20)
        idle.connect(s.path)
        idle.sendall(REQUEST[:10])
        started = time.monotonic()
        assert idle.recv(10) == b""  # closed by the server's request timeout, not by us
        assert time.monotonic() - started < 15
    exit_code, stdout = cni_relay.decode_answer(_raw(s.path, REQUEST))
    body = json.loads(stdout)
    assert exit_code == 1 and body["code"] == 999 and "handler bug" in body["msg"]


def test_request_of_a_plugin_that_gave_up_is_not_run(server):
    """A wedged podnetd resumed: the request of a plugin that timed out and closed its end is
    still queued, and running it late could attach a pod after the runtime's DEL."""
    calls = []
    s = server(lambda *args: calls.append(args[1]) or (0, b"ran"))
    held, release = threading.Event(), threading.Event()
    s.loop.call_soon_threadsafe(lambda: (held.set(), release.wait(20)))  # the loop is wedged
    try:
        assert held.wait(20)
        with socket.socket(socket.AF_UNIX) as gave_up:
            gave_up.connect(s.path)  # the kernel's backlog takes it
            gave_up.sendall(cni_relay.encode_request(b"ADD", b"abandoned", b"/n", b"eth0", b"{}"))
    finally:
        release.set()
    answer = _raw(s.path, cni_relay.encode_request(b"ADD", b"current", b"/n", b"eth0", b"{}"))
    assert cni_relay.decode_answer(answer) == (0, b"ran")
    assert calls == ["current"]


def test_oversized_handler_output_becomes_an_error(server):
    s = server(lambda *a: (0, b"x" * (cni_relay.MAX_STDOUT + 1)))
    exit_code, stdout = cni_relay.decode_answer(_raw(s.path, REQUEST))
    assert exit_code == 1 and json.loads(stdout)["code"] == 999


def test_socket_file_safety(tmp_path):
    path = str(tmp_path / "cni.sock")
    # a leftover socket of a dead daemon is replaced
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()
    sock = cni_relay.bind_socket(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # a live one is refused, as is anything that is not a socket
    with pytest.raises(cni_relay.RelaySocketError, match="in use"):
        cni_relay.bind_socket(path)
    sock.close()
    os.unlink(path)
    link = tmp_path / "link.sock"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(cni_relay.RelaySocketError, match="not a socket"):
        cni_relay.bind_socket(str(link))
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(cni_relay.RelaySocketError, match="mode 0755"):
        cni_relay.bind_socket(str(shared / "cni.sock"))
    assert not (shared / "cni.sock").exists()
    pathlib_file = tmp_path / "file"
    pathlib_file.write_text("keep me")
    with pytest.raises(cni_relay.RelaySocketError, match="not a socket"):
        cni_relay.bind_socket(str(pathlib_file))
    assert pathlib_file.read_text() == "keep me"


def test_venv_podnet_is_a_direct_launcher(tmp_path):
    """The venv's `podnet` starts as the portable build does (`python3 -IS`, nothing else
    imported first), not through a pip entry-point wrapper."""
    from podnetd.install import default_python, install_dev_launcher, install_plugin
    dev = install_dev_launcher(str(tmp_path / "podnet"))
    portable = install_plugin(str(tmp_path / "cni"))
    first_line = open(dev).readline()
    assert first_line == open(portable).readline() == f"#!{default_python()} -IS\n"
    proc = subprocess.run([dev], env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True)
    assert proc.returncode == 0 and "1.1.0" in json.loads(proc.stdout)["supportedVersions"]
    tree = json.dumps({"cniVersion": "1.0.0", "socket": "relative"})
    proc = subprocess.run([dev], input=tree, env={"CNI_COMMAND": "ADD"}, capture_output=True, text=True)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 7  # the source tree's plugin
    import tomllib
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "podnet" not in scripts, "a pip wrapper would replace the launcher"
    assert "--dev-launcher $(VENV)/bin/podnet" in (REPO / "Makefile").read_text()



@pytest.mark.parametrize("build", ["native", "python"])
def test_both_builds_answer_version_with_the_daemons_supported_versions(build):
    """The plugin builds cannot import podnetd (C; python -IS), so each keeps its own list of
    CNI versions: they must be the daemon's, in its order, with its latest."""
    from podnetd import cni
    rc, out, err = testlib.plugin("VERSION", argv=testlib.PLUGIN_ARGV[build])
    assert rc == 0, err
    assert out == {"cniVersion": cni.LATEST, "supportedVersions": list(cni.SUPPORTED_VERSIONS)}
