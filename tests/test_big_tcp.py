"""BIG TCP: when the uplink takes IPv4 GSO packets above 64 KiB, pods get the same limit on
every device of their path (pod eth0, host veth, bridge); under a backend that may route them
into VXLAN, which takes none above 64 KiB, they keep the default."""
import json
import os
import subprocess

import pytest

from podnetd.config import DEFAULT_BRIDGE
from podnetd.kernel import errors, ip_lib, netns as kernel_netns
from podnetd.lab import Lab, pods
from podnetd.lab.lab import BIG_TCP_GSO_SIZE
from podnetd.lab.netops import nsenter
from testlib import in_ns, ns_path, plugin, podnetctl, unique

DEFAULT = ip_lib.LEGACY_GSO_MAX_SIZE

pytestmark = pytest.mark.skipif(
    tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit()) < (6, 3),
    reason="IPv4 BIG TCP (gso_ipv4_max_size) needs Linux 6.3")


def gso(ns: str, dev: str) -> int:
    return kernel_netns.run_in_netns(ns_path(ns), ip_lib.link_gso_limit, dev)


def set_gso(ns: str, dev: str, size: int) -> None:
    kernel_netns.run_in_netns(ns_path(ns), ip_lib.link_set_gso_limit, dev, size)


def test_gso_limit_is_read_and_set_with_errors_that_say_what(netns):
    ns = netns.add("g")
    in_ns(ns, "ip", "link", "add", "gt0", "type", "veth", "peer", "name", "gt1")
    assert gso(ns, "gt0") == DEFAULT
    set_gso(ns, "gt0", BIG_TCP_GSO_SIZE)
    assert (gso(ns, "gt0"), gso(ns, "gt1")) == (BIG_TCP_GSO_SIZE, DEFAULT)
    with pytest.raises(errors.NotFound, match="set nope gso_ipv4_max_size"):
        set_gso(ns, "nope", BIG_TCP_GSO_SIZE)
    with pytest.raises(errors.KernelError, match="EINVAL"):
        set_gso(ns, "gt0", 10**7)  # above what a veth can segment


def node_with_uplink(netns, big: bool) -> str:
    """A node netns whose default route leaves through a veth uplink, BIG TCP or not."""
    node, peer = netns.add("nd"), netns.add("up")
    in_ns(node, "ip", "link", "add", "uplink", "type", "veth", "peer", "name", "wire", "netns", peer)
    in_ns(node, "ip", "addr", "add", "192.0.2.2/24", "dev", "uplink")
    in_ns(node, "ip", "link", "set", "uplink", "up")
    in_ns(node, "ip", "route", "add", "default", "via", "192.0.2.1")
    if big:
        set_gso(node, "uplink", BIG_TCP_GSO_SIZE)
    return node


@pytest.mark.parametrize("big", [True, False], ids=["big-uplink", "default-uplink"])
def test_a_pod_gets_the_uplinks_gso_limit_on_its_whole_path(daemons, netns, big):
    daemon = daemons(netns=node_with_uplink(netns, big))
    pod = netns.add("p")
    rc, result, err = plugin("ADD", config=daemon.config(), container_id="bt1",
                             netns=ns_path(pod), ifname="eth0")
    assert rc == 0, (result, err)
    host_veth = result["interfaces"][1]["name"]
    want = BIG_TCP_GSO_SIZE if big else DEFAULT
    assert gso(pod, "eth0") == want
    assert gso(daemon.netns, host_veth) == want
    assert gso(daemon.netns, DEFAULT_BRIDGE) == want
    assert ("pod gso 196608 (BIG TCP)" in daemon.log()) == big
    node = podnetctl("node", "-o", "json", socket=daemon.socket, check=True)
    assert json.loads(node.stdout)["pod_gso_max_size"] == want


SERVER = """
import socket, sys
srv = socket.create_server(("0.0.0.0", 5219))
print("listening", flush=True)
conn, _ = srv.accept()
total = 0
while chunk := conn.recv(1 << 20):
    total += len(chunk)
print(total, flush=True)
"""
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], 5219), timeout=30) as s:
    block = bytes(1 << 20)
    for _ in range(int(sys.argv[2])):
        s.sendall(block)
"""


def bulk_tcp(server_ns: str, client_ns: str, address: str, mebibytes: int) -> int:
    """Bytes the server received when the client sent `mebibytes` MiB over one connection."""
    server = subprocess.Popen([*nsenter(server_ns), "python3", "-c", SERVER],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening", server.stderr.read()
        subprocess.run([*nsenter(client_ns), "python3", "-c", CLIENT, address, str(mebibytes)],
                       check=True, timeout=60)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return int(out.strip() or 0)


@pytest.mark.parametrize("backend", ["host-gw", "auto"])
def test_lab_pods_across_nodes_with_big_tcp_underlay(backend):
    lab = Lab.up(2, "l2", "static", name=unique("B"), backend=backend, big_tcp=True, wait=30)
    try:
        assert lab.wait_routes(30) == {}, "nodes did not converge"
        a, b = pods.add_pod(lab, "n1"), pods.add_pod(lab, "n2")
        ps = pods.pods(lab)
        assert gso(lab.netns("n1"), "eth0") == BIG_TCP_GSO_SIZE
        want = BIG_TCP_GSO_SIZE if backend == "host-gw" else DEFAULT
        assert (gso(ps[a]["netns"], "eth0"), gso(ps[b]["netns"], "eth0")) == (want, want)
        if backend == "auto":
            with open(os.path.join(lab.st.node_dir("n1"), "podnetd.log")) as f:
                assert "stays off for pods: backend auto may route them into VXLAN" in f.read()
        assert bulk_tcp(ps[b]["netns"], ps[a]["netns"], ps[b]["address"], 64) == 64 * 2**20
    finally:
        lab.down()


def test_a_bridge_that_refuses_the_limit_costs_speed_not_the_pod(daemons, netns):
    """A bridge port that cannot carry BIG TCP (a VXLAN device without a lower device takes no
    GSO packet above 64 KiB) caps the bridge; the ADD still succeeds and says why in the log."""
    daemon = daemons(netns=node_with_uplink(netns, big=True))
    in_ns(daemon.netns, "ip", "link", "add", "capped0", "type", "vxlan", "id", "77", "dstport",
          "4799", "local", "192.0.2.2")
    in_ns(daemon.netns, "ip", "link", "set", "capped0", "master", DEFAULT_BRIDGE)
    pod = netns.add("p")
    rc, result, err = plugin("ADD", config=daemon.config(), container_id="bt2",
                             netns=ns_path(pod), ifname="eth0")
    assert rc == 0, (result, err)
    assert gso(pod, "eth0") == BIG_TCP_GSO_SIZE
    assert gso(daemon.netns, DEFAULT_BRIDGE) == DEFAULT
    assert f"bridge {DEFAULT_BRIDGE} keeps its GSO limit" in daemon.log()
