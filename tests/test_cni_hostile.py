"""Hostile CNI input through a real podnetd and the plugin, as a runtime (or whoever writes its
network config) would send it; the netns, JSON and environment attacks run with both plugin
builds. Also the daemon's own socket: its directory and gRPC's size and concurrency limits."""
import asyncio
import json
import os
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings, strategies as st

from podnetd import cni, server
from podnetd.api.podnet.v1 import node_pb2, node_pb2_grpc
from cni_chain import podnet_endpoints as endpoints
from testlib import Daemon, in_ns, links_in, ns_path, plugin, sh, unique, wait_for

WELL_KNOWN = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}


def routes(ns: str) -> list:
    return json.loads(in_ns(ns, "ip", "-j", "route").stdout)


def stuck_in_fifo_open(pid: int) -> list[str]:
    """The daemon's threads that sleep in the kernel waiting for a FIFO's other end."""
    stuck = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                wchan = f.read()
        except OSError:
            continue
        if wchan in ("fifo_open", "wait_for_partner"):
            stuck.append(f"{tid}:{wchan}")
    return stuck


@pytest.mark.usefixtures("plugin_build")
def test_netns_that_is_no_pods_network_namespace_is_refused(daemon, netns, tmp_path):
    """A regular file, a mount namespace, /dev/null, a directory: code 4, not 999; podnetd's own
    namespace (named through /proc/<pid> or /proc/self, which podnetd resolves to itself): code
    4, not attached with its default route replaced."""
    regular = tmp_path / "file"
    regular.write_text("")
    (tmp_path / "link").symlink_to(f"/proc/{daemon.proc.pid}/ns/net")
    alias = unique("al")   # podnetd's namespace under a name of its own: same inode
    sh("ip", "netns", "attach", alias, daemon.proc.pid)
    netns.names.append(alias)
    before_routes, before_links = routes(daemon.netns), links_in(daemon.netns)
    cases = [str(regular), "/proc/self/ns/mnt", "/dev/null", str(tmp_path),
             f"/proc/{daemon.proc.pid}/ns/net", "/proc/self/ns/net",
             f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/ns/net", ns_path(alias),
             str(tmp_path / "link"), f"/run/netns/../../proc/{daemon.proc.pid}/ns/net"]
    for i, path in enumerate(cases):
        rc, out, err = plugin("ADD", config=daemon.config(), container_id=f"hostile{i}",
                              netns=path, ifname="eth0")
        assert rc == 1 and out["code"] == 4 and "CNI_NETNS" in out["msg"], (path, out, err)
        assert "Traceback" not in err
    assert routes(daemon.netns) == before_routes
    assert [link["ifname"] for link in links_in(daemon.netns)] == \
        [link["ifname"] for link in before_links]
    assert endpoints(daemon) == []
    # a pod that exists, CHECKed against podnetd's namespace: refused the same way
    pod = netns.add("p")
    rc, result, err = plugin("ADD", config=daemon.config(), container_id="real", netns=ns_path(pod),
                             ifname="eth0")
    assert rc == 0, (result, err)
    rc, out, err = plugin("CHECK", config=daemon.config(prevResult=result), container_id="real",
                          netns=f"/proc/{daemon.proc.pid}/ns/net", ifname="eth0")
    assert rc == 1 and out["code"] == 4 and "node's own" in out["details"], (out, err)


def test_init_netns_is_refused(daemon):
    """The init process's namespace is the node's (where a daemon in the host namespace also
    lives): refused with code 4. ifname "lo" exists there, so old code failed without harm."""
    rc, out, err = plugin("ADD", config=daemon.config(), container_id="init", netns="/proc/1/ns/net",
                          ifname="lo")
    assert rc == 1 and out["code"] == 4 and "CNI_NETNS" in out["msg"], (out, err)
    assert endpoints(daemon) == []


@pytest.mark.usefixtures("plugin_build")
def test_fifo_netns_does_not_wedge_a_worker(daemon, netns, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    try:
        rc, out, err = plugin("ADD", config=daemon.config(), container_id="fifo", netns=str(fifo),
                              ifname="eth0")
        assert rc == 1 and out["code"] == 4 and "FIFO" in out["details"], (out, err)
        assert stuck_in_fifo_open(daemon.proc.pid) == []
    finally:
        try:  # old code: release the worker stuck in open(2) so the daemon can stop
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    pod = netns.add("p")
    rc, out, err = plugin("ADD", config=daemon.config(), container_id="after", netns=ns_path(pod),
                          ifname="eth0")
    assert rc == 0, (out, err)


def _with_socket(daemon, tail: bytes) -> bytes:
    head = json.dumps(daemon.config())[:-1].encode()   # the config object, left open
    return head + b', "x": ' + tail


@pytest.mark.usefixtures("plugin_build")
def test_deep_or_large_config_is_code_6(daemon, netns):
    """100k nested '[' (closed or not) used to end in a RecursionError (a traceback from the
    Python build, 11 from the native one); a config over 4 MiB in gRPC's RESOURCE_EXHAUSTED
    (11 again). Both are the spec's code 6 with a clear message now."""
    pod = netns.add("p")
    env = dict(container_id="deep", netns=ns_path(pod), ifname="eth0")
    for tail in (b"[" * 100_000 + b"]" * 100_000 + b"}", b"[" * 100_000):
        rc, out, err = plugin("ADD", config=_with_socket(daemon, tail), **env)
        assert rc == 1 and out["code"] == 6 and "nested too deeply" in out["msg"], (out, err)
        assert "Traceback" not in err
    large = daemon.config(pad="x" * (cni.MAX_CONFIG_BYTES + 1))
    rc, out, err = plugin("ADD", config=large, **env)
    assert rc == 1 and out["code"] == 6 and "too large" in out["msg"], (out, err)
    # just under the limit is fine, and so is depth up to the limit
    near = daemon.config(pad="x" * (cni.MAX_CONFIG_BYTES - 200))
    rc, out, err = plugin("ADD", config=near, **env)
    assert rc == 0, (out, err)
    nested = daemon.config(x=json.loads("[" * (cni.MAX_JSON_DEPTH - 1) + "]" * (cni.MAX_JSON_DEPTH - 1)))
    rc, out, err = plugin("CHECK", config=nested, **env)
    assert rc == 0, (out, err)


@pytest.mark.usefixtures("plugin_build")
def test_ifname_and_container_id_checked_strictly(daemon, netns):
    pod = netns.add("p")
    cases = [("c1", "é" * 10, "CNI_IFNAME"),        # 10 characters, 20 bytes
             ("c2", "eà", "CNI_IFNAME"),            # c3 a0: 0xa0 is white space to the kernel
             ("c3", "e%d", "CNI_IFNAME"),           # a template: the kernel would make "e0"
             ("c4", "lo", "CNI_IFNAME"),            # the pod has one already: not a 999
             ("trailing\n", "eth0", "CNI_CONTAINERID"),
             ("a" * 256, "eth0", "CNI_CONTAINERID")]
    for cid, ifname, env in cases:
        rc, out, err = plugin("ADD", config=daemon.config(), container_id=cid, netns=ns_path(pod),
                              ifname=ifname)
        assert rc == 1 and out["code"] == 4 and env in out["msg"], (cid, ifname, out, err)
    assert [link["ifname"] for link in links_in(pod)] == ["lo"]
    assert endpoints(daemon) == []
    # the longest of each that is allowed works
    rc, out, err = plugin("ADD", config=daemon.config(), container_id="a" * 255,
                          netns=ns_path(pod), ifname="é" * 7)
    assert rc == 0, (out, err)
    assert "é" * 7 in [link["ifname"] for link in links_in(pod)]


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(command=st.sampled_from(["ADD", "CHECK", "DEL", "GC", "STATUS"]),
       cid=st.text(st.characters(exclude_characters="\0"), max_size=20),
       ifname=st.text(st.characters(exclude_characters="\0"), max_size=20),
       tail=st.binary(max_size=120), data=st.data())
def test_fuzz_through_the_daemon(daemon, netns_for_fuzz, command, cid, ifname, tail, data):
    """A few random invocations through the native plugin and a real daemon: a result or a
    spec error with a well-known code, never 999 or a traceback."""
    path = data.draw(st.sampled_from([netns_for_fuzz, "/proc/self/ns/net", "/dev/null", "",
                                      "/run/netns/nonexistent"]))
    config = _with_socket(daemon, tail) if data.draw(st.booleans()) else \
        json.dumps(daemon.config(**data.draw(st.dictionaries(
            st.sampled_from(["cniVersion", "name", "prevResult", "cni.dev/valid-attachments"]),
            st.none() | st.integers() | st.text(max_size=8) | st.lists(st.text(max_size=4)))))
        ).encode()
    rc, out, err = plugin(command, config=config, container_id=cid, netns=path, ifname=ifname)
    assert "Traceback" not in err
    if rc != 0:
        assert isinstance(out, dict) and out["code"] in WELL_KNOWN, (out, err)


@pytest.fixture
def netns_for_fuzz(netns):
    return ns_path(netns.add("fz"))


# -- the daemon's socket ------------------------------------------------------------------------

def _attach(socket: str, container_id: str, **options):
    async def call():
        async with grpc.aio.insecure_channel(f"unix://{socket}", options=list(options.items())) as ch:
            return await node_pb2_grpc.NodeServiceStub(ch).Attach(
                node_pb2.AttachRequest(container_id=container_id, ifname="eth0", netns="/n"),
                timeout=60)
    return asyncio.run(call())


def test_oversized_request_is_refused_and_the_daemon_serves_on(daemon):
    # CNI invocations have their own socket and bounds (tests/test_cni_relay.py); this is gRPC's
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _attach(daemon.socket, "x" * (server.MAX_MESSAGE_BYTES + 1),
                **{"grpc.max_send_message_length": -1})
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert plugin("STATUS", config=daemon.config())[0] == 0


def test_concurrent_calls_are_bounded(daemon):
    """With MAX_CONCURRENT_RPCS calls in flight (here: open health watches) the next call is
    refused at once with RESOURCE_EXHAUSTED (the plugin's try-again-later), and served again
    as soon as they end."""
    limit = server.MAX_CONCURRENT_RPCS
    per_channel = server.MAX_STREAMS // 2

    async def scenario():
        # a connection each (channels with equal arguments would share one, and its
        # MAX_STREAMS would queue the calls in the client instead)
        channels = [grpc.aio.insecure_channel(f"unix://{daemon.socket}",
                                              options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(-(-limit // per_channel))]
        try:
            watches = []
            for i in range(limit):
                watch = health_pb2_grpc.HealthStub(channels[i // per_channel]).Watch(
                    health_pb2.HealthCheckRequest())
                await asyncio.wait_for(watch.read(), 60)   # established and counted
                watches.append(watch)
            check = health_pb2_grpc.HealthStub(channels[0]).Check
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await check(health_pb2.HealthCheckRequest(), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            for watch in watches:
                watch.cancel()
        finally:
            for ch in channels:
                await ch.close()

    asyncio.run(scenario())
    wait_for(lambda: plugin("STATUS", config=daemon.config())[0] == 0, timeout=30,
             what="the daemon to serve again once the watches ended")


def _daemon_with_socket(netns, socket: str) -> Daemon:
    d = Daemon(netns.add("nd"))
    d.socket = socket
    return d


def test_socket_bound_in_a_private_directory(netns, tmp_path):
    directory = tmp_path / "run" / "podnet"
    d = _daemon_with_socket(netns, str(directory / "podnetd.sock"))
    try:
        d.start()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
        assert plugin("STATUS", config=d.config())[0] == 0
    finally:
        d.cleanup()


@pytest.mark.parametrize("setup, message", [
    (lambda p: (p.mkdir(), p.chmod(0o777)), "has mode 0777"),
    (lambda p: (p.mkdir(), p.chmod(0o755)), "has mode 0755"),
    (lambda p: (p.parent.joinpath("real").mkdir(mode=0o700), p.symlink_to(p.parent / "real")),
     "symbolic link"),
])
def test_insecure_socket_directory_refused_at_start(netns, tmp_path, setup, message):
    directory = tmp_path / "sockdir"
    setup(directory)
    d = _daemon_with_socket(netns, str(directory / "podnetd.sock"))
    try:
        with pytest.raises(RuntimeError) as err:
            d.start()
        assert "exited 1" in str(err.value) and message in str(err.value), err.value
        assert "Traceback" not in str(err.value)
        assert not os.path.lexists(directory / "podnetd.sock")
    finally:
        d.cleanup()
