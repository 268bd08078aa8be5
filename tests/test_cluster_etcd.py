"""The etcd store against a real etcd (Debian's etcd-server 3.4), started by this module inside
the underlay's hub namespace and killed by PID at the end."""
import base64
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from test_cluster_lib import ClusterDaemon, Underlay, add_pod, routes
from testlib import ContinuousPing, Netns, in_ns, ping, wait_for

ETCD_IP = "192.168.200.254"
CLUSTER = "10.98.0.0/16"


class Etcd:
    def __init__(self, ns: str):
        self.ns = ns
        self.dir = tempfile.mkdtemp(prefix="podnet-etcd-")
        self.url = f"http://{ETCD_IP}:2379"
        self.proc = None

    def start(self):
        log = open(os.path.join(self.dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns}", "etcd", "--name", "podnet-test",
             "--data-dir", os.path.join(self.dir, "data"), "--listen-client-urls", self.url,
             "--advertise-client-urls", self.url, "--listen-peer-urls", "http://127.0.0.1:2380",
             "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
             "--initial-cluster", "podnet-test=http://127.0.0.1:2380"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(lambda: self.ctl("endpoint", "health", check=False).returncode == 0, 20,
                 what="etcd healthy")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ctl(self, *args, check=True):
        return in_ns(self.ns, "etcdctl", f"--endpoints={self.url}", *args, check=check,
                     env={**os.environ, "ETCDCTL_API": "3"})

    def blocks(self) -> dict:
        """{node name: (pod cidr, lease id)} from the store itself."""
        out = json.loads(self.ctl("get", "--prefix", "/podnet/nodes/", "-w", "json").stdout)
        found = {}
        for kv in out.get("kvs", []):
            value = json.loads(base64.b64decode(kv["value"]))
            found[value["name"]] = (value["pod_cidr"], kv.get("lease", 0))
        return found

    def lease_ttl(self, lease_id: int) -> tuple[int, int]:
        """(seconds left, seconds granted); seconds left is -1 once the lease has expired."""
        out = json.loads(self.ctl("lease", "timetolive", format(lease_id, "x"), "-w", "json").stdout)
        return out["ttl"], out.get("granted-ttl", 0)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def lab():
    spaces = Netns()
    etcd = None
    try:
        underlay = Underlay(spaces, routed=True)  # the hub's bridge gets .254: etcd listens there
        etcd = Etcd(underlay.hub)
        etcd.start()
        yield underlay, etcd
    finally:
        if etcd:
            etcd.cleanup()
        spaces.cleanup()


@pytest.fixture
def nodes(lab):
    underlay, etcd = lab
    started = []

    def start(node_ip_ns=None, ready=True, extra=()):
        ns, ip = node_ip_ns or underlay.add_node()
        d = ClusterDaemon(ns, None, node_ip=ip, cluster_cidr=CLUSTER,
                          extra=["--store", "etcd", "--etcd-endpoints", etcd.url, "--node-timeout", "3",
                                 *extra])
        started.append(d)
        return d.start(ready=ready)

    yield start
    for d in reversed(started):
        d.cleanup()
    # leave the store empty for the next test
    etcd.ctl("del", "--prefix", "/podnet/", check=False)


def test_nodes_lease_distinct_blocks_and_route_to_each_other(lab, nodes, netns):
    _, etcd = lab
    d1, d2 = nodes(), nodes()
    blocks = etcd.blocks()
    (c1, lease1), (c2, lease2) = blocks[d1.node_name], blocks[d2.node_name]
    assert c1 != c2 and c1.endswith("/24") and c1.startswith("10.98.") and lease1 and lease2
    wait_for(lambda: c2 in routes(d1.netns) and c1 in routes(d2.netns), 10, what="routes")
    p1, p2 = netns.add("p"), netns.add("p")
    a1, a2 = add_pod(d1, p1, "c1"), add_pod(d2, p2, "c2")
    assert ipaddress.ip_address(a1) in ipaddress.ip_network(c1)
    assert ping(p1, a2) and ping(p2, a1)
    view = d1.ctl("nodes")
    assert view["store"] == "etcd" and {n["pod_cidr"] for n in view["nodes"]} == {c1, c2}
    # a node that dies loses its lease after --node-timeout; the others drop its routes
    d2.kill9()
    wait_for(lambda: c2 not in routes(d1.netns), 15, what="dead node's routes removed")
    assert d2.node_name not in etcd.blocks() and d2.node_name not in d1.nodes()


def test_lease_is_renewed_and_a_restarted_node_gets_its_block_back(lab, nodes):
    _, etcd = lab
    d1 = nodes()
    cidr, lease = etcd.blocks()[d1.node_name]
    # renewal: the lease outlives twice its granted TTL. (etcd reports whole seconds, floored, so
    # a lease renewed on time reads the same value every time: watching it "go back up" is luck.)
    left, granted = etcd.lease_ttl(lease)
    assert 0 < left <= granted == 3
    time.sleep(2 * granted + 0.5)
    assert etcd.lease_ttl(lease)[0] > 0, "the node's lease expired: it is not renewed"
    assert etcd.blocks()[d1.node_name] == (cidr, lease)
    d1.kill9()
    d1.start()  # the key still names it
    assert etcd.blocks()[d1.node_name][0] == cidr
    d1.stop()
    etcd.ctl("del", "--prefix", "/podnet/nodes/")  # as if its lease had expired meanwhile
    d1.start()  # the state dir remembers the block, and it is free
    assert etcd.blocks()[d1.node_name][0] == cidr
    assert f"leased {cidr}" in d1.log()


def test_etcd_outage_keeps_routes_and_a_later_join_is_seen(lab, nodes, netns):
    underlay, etcd = lab
    d1, d2 = nodes(), nodes()
    c1, c2 = etcd.blocks()[d1.node_name][0], etcd.blocks()[d2.node_name][0]
    wait_for(lambda: c2 in routes(d1.netns) and c1 in routes(d2.netns), 10, what="routes")
    p1, p2 = netns.add("p"), netns.add("p")
    a1, a2 = add_pod(d1, p1, "c1"), add_pod(d2, p2, "c2")
    etcd.stop()
    try:
        wait_for(lambda: "unreachable" in d1.ctl("nodes").get("problem", ""), 10, what="outage noticed")
        # past --node-timeout (3 s) without the store: nothing withdrawn, pods keep talking
        wait_for(lambda: d1.nodes()[d2.node_name].get("heartbeat_age_seconds", 0) > 4, 15,
                 what="an outage longer than the node timeout")
        assert c2 in routes(d1.netns) and c1 in routes(d2.netns)
        assert ping(p1, a2) and ping(p2, a1)
        assert d2.node_name in d1.nodes()
    finally:
        etcd.start()
    d3 = nodes()
    c3 = etcd.blocks()[d3.node_name][0]
    wait_for(lambda: c3 in routes(d1.netns) and c3 in routes(d2.netns), 15, what="late joiner routed")
    wait_for(lambda: "problem" not in d1.ctl("nodes"), 10, what="d1 recovered")
    assert {d1.node_name, d2.node_name} <= etcd.blocks().keys()
    p3 = netns.add("p")
    a3 = add_pod(d3, p3, "c3")
    assert ping(p1, a3)


def test_restarts_under_ping_lose_no_packet(lab, nodes, netns):
    _, etcd = lab
    # a restart must finish within --node-timeout (else the node is withdrawn, as it should
    # be); 3 s is too tight for a kill -9 + start on a loaded 2-core machine
    flags = ["--backend", "vxlan", "--node-timeout", "10"]
    d1, d2 = nodes(extra=flags), nodes(extra=flags)
    c1, c2 = etcd.blocks()[d1.node_name][0], etcd.blocks()[d2.node_name][0]
    wait_for(lambda: c2 in routes(d1.netns) and c1 in routes(d2.netns), 10, what="routes")
    p1, p2 = netns.add("p"), netns.add("p")
    a1, _ = add_pod(d1, p1, "c1"), add_pod(d2, p2, "c2")
    with ContinuousPing(p2, a1) as pinging:
        for target, how in ((d1, signal.SIGKILL), (d2, signal.SIGTERM), (d2, signal.SIGKILL)):
            target.stop(how)
            target.start()
            wait_for(lambda: len(d1.nodes()) == 2 and len(d2.nodes()) == 2, 10, what="rejoined")
    assert pinging.sent > 100 and pinging.received == pinging.sent, pinging.output[-500:]
    assert etcd.blocks()[d1.node_name][0] == c1 and etcd.blocks()[d2.node_name][0] == c2
