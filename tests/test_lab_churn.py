"""Nodes come and go, daemons restart (static store, mTLS peers, routed underlay so both host-gw
and vxlan peers are in play): routes follow membership, and pod traffic never drops a packet
while a daemon restarts."""
import signal

import pytest

from podnetd.lab import pods, probe
from testlib import routed_lab_with_pods

# Short enough for the leave test, long enough that a daemon restart on a loaded 2-core machine
# (stop + Python start-up, ~3 s at worst seen) never looks like a departure to its peers.
NODE_TIMEOUT = 10


@pytest.fixture(scope="module")
def lab():
    with routed_lab_with_pods("static", "C", NODE_TIMEOUT) as lb:
        yield lb


def routed_by(lab, cidr: str) -> list[str]:
    """Nodes whose kernel has a route to cidr."""
    return [n for n in lab.node_names() if cidr in probe.route_dsts(lab.netns(n))]


def known_by(lab, node: str) -> set[str]:
    listing, _ = lab.cluster_view(node)
    return {n.name for n in listing.nodes} if listing else set()


def test_join_then_leave(lab):
    new = lab.add_node()
    assert lab.st.nodes[new]["segment"] == "b"
    cidr = lab.st.nodes[new]["pod_cidr"]
    probe.until(lambda: lab.missing_routes() == {}, 20, f"every node routes to {new} and back")
    assert set(routed_by(lab, cidr)) - {new} == {"n1", "n2", "n3"}
    key = pods.add_pod(lab, new)
    ps = pods.pods(lab)
    for other in ("n1/p1", "n2/p1", "n3/p1"):
        assert probe.ping(ps[key]["netns"], ps[other]["address"]).returncode == 0, other
        assert probe.ping(ps[other]["netns"], ps[key]["address"]).returncode == 0, other
    lab.remove_node(new)  # the node is gone: daemon killed, namespace deleted
    probe.until(lambda: not routed_by(lab, cidr), NODE_TIMEOUT + 15,
                f"routes to departed {new} withdrawn everywhere")
    probe.until(lambda: all(new not in known_by(lab, n) for n in lab.node_names()),
                NODE_TIMEOUT + 15, f"{new} dropped from every node's view")
    assert lab.missing_routes() == {}


@pytest.mark.parametrize("node,sig", [("n1", signal.SIGTERM), ("n1", signal.SIGKILL),
                                      ("n3", signal.SIGKILL)],
                         ids=["n1-sigterm", "n1-kill9", "n3-kill9"])
def test_daemon_restart_loses_no_packet(lab, node, sig):
    """10 ms pings n1 -> n2 (host-gw) and n1 -> n3 (vxlan) while one daemon stops and comes
    back; the restarted daemon's start-up reconcile must not flap a route either."""
    ps = pods.pods(lab)
    pings = {dst: probe.ContinuousPing(ps["n1/p1"]["netns"], ps[dst]["address"])
             for dst in ("n2/p1", "n3/p1")}
    try:
        for p in pings.values():
            p.wait_replies(20)
        old_pid = lab.daemon(node)["pid"]
        marks = {}  # event -> the highest sequence answered by then, to place any loss

        def mark(event):
            marks[event] = {dst: max(p.received, default=0) for dst, p in pings.items()}

        mark("stop")
        lab.stop_daemon(node, sig)
        for p in pings.values():
            p.wait_replies(30)  # traffic flows with the daemon gone
        mark("start")
        lab.start_daemon(node)
        mark("serving")
        assert lab.daemon(node)["pid"] != old_pid
        probe.until(lambda: known_by(lab, node) == set(lab.node_names()), 20,
                    f"restarted {node} knows every node again")
        mark("knows all")
        for p in pings.values():
            p.wait_replies(100)  # covers the restarted daemon's first reconcile passes
    finally:
        results = {dst: p.stop() for dst, p in pings.items()}
    for dst, r in results.items():
        assert r["answered"] > 150, (dst, r)
        assert r["lost"] == [] and r["errors"] == [], (results, marks)
