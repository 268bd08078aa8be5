"""The etcd store in the lab (a real etcd 3.4 in its own namespace on a lab address): leased
pod CIDRs, pods keep talking while etcd is down, a node joining after etcd's return is seen,
a restarted node keeps its block, a departed node's lease expires and its routes go."""
import signal

import pytest

from podnetd.lab import pods, probe
from testlib import routed_lab_with_pods

NODE_TIMEOUT = 3


@pytest.fixture(scope="module")
def lab():
    with routed_lab_with_pods("etcd", "E", NODE_TIMEOUT) as lb:
        yield lb


def routed_by(lab, cidr: str) -> list[str]:
    return [n for n in lab.node_names() if cidr in probe.route_dsts(lab.netns(n))]


def test_etcd_outage_then_a_late_joiner(lab):
    ps = pods.pods(lab)
    pings = {dst: probe.ContinuousPing(ps["n1/p1"]["netns"], ps[dst]["address"])
             for dst in ("n2/p1", "n3/p1")}
    try:
        for p in pings.values():
            p.wait_replies(20)
        lab.stop_etcd()
        # Longer than the node timeout (the lease TTL): nothing may be withdrawn meanwhile.
        for p in pings.values():
            p.wait_replies(100 * (NODE_TIMEOUT + 2), timeout=30)
        assert lab.missing_routes() == {}
        lab.start_etcd()
        new = lab.add_node()
        probe.until(lambda: lab.missing_routes() == {}, 20, f"every node routes to {new} and back")
        key = pods.add_pod(lab, new)
        assert probe.ping(pods.pods(lab)[key]["netns"], ps["n1/p1"]["address"]).returncode == 0
        for p in pings.values():
            p.wait_replies(20)
    finally:
        results = {dst: p.stop() for dst, p in pings.items()}
    for dst, r in results.items():
        assert r["lost"] == [] and r["errors"] == [], (dst, r)


def test_restarted_node_gets_its_block_back(lab):
    before = lab.st.nodes["n2"]["pod_cidr"]
    lab.stop_daemon("n2", signal.SIGKILL)
    lab.start_daemon("n2")
    assert lab.st.nodes["n2"]["pod_cidr"] == before
    ps = pods.pods(lab)
    assert probe.ping(ps["n3/p1"]["netns"], ps["n2/p1"]["address"]).returncode == 0


def test_departed_node_lease_expires(lab):
    new = lab.add_node()
    cidr = lab.st.nodes[new]["pod_cidr"]
    probe.until(lambda: lab.missing_routes() == {}, 20, f"every node routes to {new}")
    lab.remove_node(new)
    probe.until(lambda: not routed_by(lab, cidr), NODE_TIMEOUT + 15,
                f"routes to departed {new} withdrawn once its lease expired")
    assert lab.missing_routes() == {}
