"""Across nodes in the lab (real namespaces, real podnetd peers with mTLS, real etcd): every pod
reaches every pod by ping and TCP, for l2 and routed underlays and both stores; the mode chosen
per peer follows the topology; 1400-byte DF pings cross VXLAN and oversized ones get an ICMP
frag-needed instead of vanishing."""
import ipaddress

import pytest

from podnetd.api.podnet.v1 import cluster_pb2
from podnetd.apiconv import enum_word
from podnetd.lab import Lab, pods, probe
from podnetd.lab.netops import ip_batch
from testlib import unique

LABS = [("l2", "static"), ("routed", "static"), ("l2", "etcd"), ("routed", "etcd")]


@pytest.fixture(scope="module", params=LABS, ids=[f"{t}-{s}" for t, s in LABS])
def lab(request):
    topology, store = request.param
    lb = Lab.up(3, topology, store, name=unique("L"), wait=30)
    try:
        assert lb.wait_routes(30) == {}, "nodes did not converge"
        for node in lb.node_names():
            pods.add_pod(lb, node)
        pods.add_pod(lb, "n1")  # a second pod on n1: same-node traffic rides along
        yield lb
    finally:
        lb.down()


def test_all_pairs_ping(lab):
    ps = pods.pods(lab)
    results = probe.ping_matrix(ps)
    assert len(results) == 12
    assert all(results.values()), "\n" + probe.render_matrix(ps, results)


def test_all_pairs_tcp(lab):
    ps = pods.pods(lab)
    results = probe.tcp_matrix(ps)
    assert len(results) == 12
    assert all(results.values()), "\n" + probe.render_matrix(ps, results)


def test_mode_per_peer_follows_the_topology(lab):
    modes = {}
    for node in lab.node_names():
        listing, _ = lab.cluster_view(node)
        assert listing is not None, f"{node}: no cluster view"
        modes[node] = {n.name: enum_word(cluster_pb2.PeerMode, n.mode) for n in listing.nodes}
    if lab.st.topology == "l2":
        expected = {a: {b: "self" if a == b else "host-gw" for b in modes} for a in modes}
    else:  # n1, n2 on subnet a; n3 behind the router on subnet b
        same = {("n1", "n2"), ("n2", "n1")}
        expected = {a: {b: "self" if a == b else "host-gw" if (a, b) in same else "vxlan"
                        for b in modes} for a in modes}
    assert modes == expected


def test_pod_cidrs_are_distinct_and_inside_the_cluster(lab):
    cidrs = [ipaddress.ip_network(lab.st.nodes[n]["pod_cidr"]) for n in lab.node_names()]
    assert len(set(cidrs)) == 3
    assert all(c.subnet_of(ipaddress.ip_network("10.244.0.0/16")) for c in cidrs)
    for a in cidrs:
        assert sum(a.overlaps(b) for b in cidrs) == 1


def test_df_1400_over_vxlan_and_frag_needed_when_oversized(lab):
    if lab.st.topology != "routed":
        pytest.skip("VXLAN is chosen across the router: routed topology only")
    ps = pods.pods(lab)
    src, dst = ps["n1/p1"], ps["n3/p1"]
    dev = {r["dst"]: r["dev"] for r in probe.routes(lab.netns("n1"))}
    assert dev[lab.st.nodes["n3"]["pod_cidr"]] == "podnet.vxlan"
    ok = probe.ping(src["netns"], dst["address"], count=3, size=1400, dont_fragment=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # A pod whose link claims 1500 (a misconfigured pod, or one a later plugin changed) sends a
    # 1500-byte DF packet: the node must answer with frag-needed naming the VXLAN MTU, not drop it.
    src2 = ps["n1/p2"]
    ip_batch(src2["netns"], ["link set eth0 mtu 1500"], "raise pod mtu")
    ip_batch(lab.netns("n1"), [f"link set {src2['host_ifname']} mtu 1500"], "raise host veth mtu")
    big = probe.ping(src2["netns"], dst["address"], count=1, size=1472, dont_fragment=True)
    out = big.stdout + big.stderr
    assert big.returncode != 0, out
    assert "Frag needed" in out and "mtu = 1450" in out, out
    # ...and the pod learnt the path MTU: the next oversized packet fails locally, at once.
    again = probe.ping(src2["netns"], dst["address"], count=1, size=1472, dont_fragment=True)
    assert "mtu=1450" in again.stdout + again.stderr, again.stdout + again.stderr
    fits = probe.ping(src2["netns"], dst["address"], count=2, size=1422, dont_fragment=True)
    assert fits.returncode == 0, fits.stdout
