"""Cluster membership with the static store and routing between real node namespaces joined by
an underlay made here (a hub netns with a bridge, or two subnets and a router)."""
import json
import signal
import tempfile

from test_cluster_lib import (Underlay, add_pod, cluster, fdb, make_pki, neighbours,  # noqa: F401
                              routes)
from testlib import ContinuousPing, PY, REPO, in_ns, ping, plugin, wait_for

TIMEOUT = ["--node-timeout", "3"]


def test_join_spreads_transitively_and_leave_withdraws_everywhere(netns, cluster):
    u = Underlay(netns)
    (n1, ip1), (n2, ip2), (n3, ip3) = u.add_node(), u.add_node(), u.add_node()
    d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1, extra=TIMEOUT)
    d2 = cluster(n2, "10.99.2.0/24", node_ip=ip2, peers=[d1.listen], extra=TIMEOUT)
    # node 3 knows only node 2; node 1 must learn it through node 2
    d3 = cluster(n3, "10.99.3.0/24", node_ip=ip3, peers=[d2.listen], extra=TIMEOUT)
    wait_for(lambda: routes(n1).keys() == {"10.99.2.0/24", "10.99.3.0/24"}, 10, what="n1 routes")
    wait_for(lambda: routes(n3).keys() == {"10.99.1.0/24", "10.99.2.0/24"}, 10, what="n3 routes")
    assert routes(n1)["10.99.3.0/24"]["gateway"] == ip3  # same L2: host-gw
    nodes = d1.nodes()
    assert {n["mode"] for n in nodes.values()} == {"self", "host-gw"}
    assert nodes[n3]["pod_cidr"] == "10.99.3.0/24" and nodes[n3]["underlay_ip"] == ip3
    entries = d1.entries()
    assert {(e["kind"], e["mode"], e["dev"], e["state"]) for e in entries} == {("route", "host-gw", "ul0", "present")}
    assert {e["destination"]: e["via"] for e in entries} == {"10.99.2.0/24": ip2, "10.99.3.0/24": ip3}
    p1, p3 = netns.add("p"), netns.add("p")
    a1, a3 = add_pod(d1, p1, "c1"), add_pod(d3, p3, "c3")
    assert ping(p1, a3) and ping(p3, a1)

    d3.kill9()
    wait_for(lambda: "10.99.3.0/24" not in routes(n1) and "10.99.3.0/24" not in routes(n2), 10,
             what="node 3's routes withdrawn")
    assert n3 not in d1.nodes() and n3 not in d2.nodes()
    assert "10.99.2.0/24" in routes(n1)  # the others stay


def test_vxlan_drift_is_repaired_and_foreign_routes_left_alone(netns, cluster):
    u = Underlay(netns)
    (n1, ip1), (n2, ip2) = u.add_node(), u.add_node()
    vx = ["--backend", "vxlan", "--vxlan-vni", "77"]
    # node 1 repairs only every 60 s, so what ListRoutes says between is stable
    d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1, extra=[*vx, "--reconcile-interval", "60"])
    d2 = cluster(n2, "10.99.2.0/24", node_ip=ip2, peers=[d1.listen], extra=vx)
    wait_for(lambda: "10.99.2.0/24" in routes(n1) and "10.99.1.0/24" in routes(n2), 10, what="routes")
    link = json.loads(in_ns(n2, "ip", "-d", "-j", "link", "show", "podnet.vxlan").stdout)[0]
    info = link["linkinfo"]["info_data"]
    assert info["id"] == 77 and info["port"] == 8472 and not info.get("learning", False)
    assert link["mtu"] == 1450 and "group" not in info
    mac1 = d2.nodes()[n1]["vtep_mac"]
    assert neighbours(n2)["10.99.1.0"]["lladdr"] == mac1
    assert fdb(n2)[mac1]["dst"] == ip1
    p1, p2 = netns.add("p"), netns.add("p")
    a1, _ = add_pod(d1, p1, "c1"), add_pod(d2, p2, "c2")
    assert ping(p2, a1)
    # pods got the VXLAN MTU
    assert json.loads(in_ns(p2, "ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1450

    # node 1: its view tells what the kernel lost
    assert {e["state"] for e in d1.entries()} == {"present"}
    in_ns(n1, "ip", "route", "del", "10.99.2.0/24")
    states = {e["kind"]: e["state"] for e in d1.entries()}
    assert states == {"route": "missing", "neigh": "present", "fdb": "present"}

    # node 2 (default repair loop): a foreign route in the cluster range, and drift
    in_ns(n2, "ip", "route", "add", "10.99.50.0/24", "via", ip1, "proto", "static")
    in_ns(n2, "ip", "route", "del", "10.99.1.0/24")
    in_ns(n2, "ip", "neigh", "del", "10.99.1.0", "dev", "podnet.vxlan")
    in_ns(n2, "bridge", "fdb", "del", mac1, "dev", "podnet.vxlan", "dst", ip1)
    wait_for(lambda: "10.99.1.0/24" in routes(n2) and "10.99.1.0" in neighbours(n2) and mac1 in fdb(n2),
             10, what="drift repaired")
    assert {e["state"] for e in d2.entries()} == {"present"}
    foreign = json.loads(in_ns(n2, "ip", "-j", "route", "show", "10.99.50.0/24").stdout)
    assert foreign and foreign[0]["protocol"] == "static"
    # a changed neighbour comes back to the right MAC too
    in_ns(n2, "ip", "neigh", "replace", "10.99.1.0", "lladdr", "02:00:00:00:00:99", "dev",
          "podnet.vxlan", "nud", "permanent")
    wait_for(lambda: neighbours(n2)["10.99.1.0"]["lladdr"] == mac1, 10, what="neighbour fixed")


def test_routed_underlay_auto_picks_vxlan_and_host_gw_says_why_not(netns, cluster):
    u = Underlay(netns, subnets=2, routed=True)
    (n1, ip1), (n2, ip2), (n3, ip3) = u.add_node(0), u.add_node(1), u.add_node(0)
    d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1)
    d2 = cluster(n2, "10.99.2.0/24", node_ip=ip2, peers=[d1.listen])
    d3 = cluster(n3, "10.99.3.0/24", node_ip=ip3, peers=[d1.listen], extra=["--backend", "host-gw"])
    wait_for(lambda: {"10.99.2.0/24", "10.99.3.0/24"} <= routes(n1).keys(), 10, what="n1 routes")
    r = routes(n1)
    assert r["10.99.2.0/24"]["dev"] == "podnet.vxlan" and "onlink" in r["10.99.2.0/24"]["flags"]
    assert r["10.99.3.0/24"]["gateway"] == ip3  # same subnet: host-gw
    modes = {name: n["mode"] for name, n in d1.nodes().items()}
    assert modes == {n1: "self", n2: "vxlan", n3: "host-gw"}
    p1, p2 = netns.add("p"), netns.add("p")
    a1, a2 = add_pod(d1, p1, "c1"), add_pod(d2, p2, "c2")
    assert ping(p1, a2) and ping(p2, a1)
    # 1400-byte DF payload fits the VXLAN MTU; an oversized one gets an error, not silence
    assert ping(p1, a2, size=1400, dont_fragment=True)
    out = in_ns(p1, "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1460", a2, check=False)
    assert out.returncode != 0 and ("message too long" in (out.stdout + out.stderr).lower()
                                    or "frag needed" in (out.stdout + out.stderr).lower()), out
    # node 3 runs host-gw only: node 2 is behind a router, so it says so and installs nothing
    wait_for(lambda: d3.nodes().get(n2, {}).get("mode") == "unreachable", 10, what="n3 sees n2")
    assert "not on this node's L2 subnet" in d3.nodes()[n2]["problem"]
    assert "10.99.2.0/24" not in routes(n3) and "10.99.1.0/24" in routes(n3)
    assert "not on this node's L2 subnet" in d3.log()


def test_overlapping_pod_cidr_is_refused_on_both_sides(netns, cluster):
    u = Underlay(netns)
    (n1, ip1), (n2, ip2), (n3, ip3) = u.add_node(), u.add_node(), u.add_node()
    d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1)
    d3 = cluster(n3, "10.99.3.0/24", node_ip=ip3, peers=[d1.listen])
    d2 = cluster(n2, "10.99.1.0/25", node_ip=ip2, peers=[d1.listen], ready=False)
    wait_for(lambda: "refused" in d2.ctl("nodes").get("problem", ""), 10, what="n2 refused")
    wait_for(lambda: "refused" in d1.log() and n2 in d1.log(), 10, what="n1 logs the refusal")
    rc, out, _ = plugin("STATUS", config=d2.config())
    assert rc != 0 and "overlaps" in out["details"], out
    assert routes(n2) == {}  # the refused node routes nowhere
    wait_for(lambda: d3.nodes().get(n2, {}).get("mode") == "unreachable", 10, what="n3 sees n2 refused")
    for node in (n1, n3):
        assert all(r.get("gateway") != ip2 for r in routes(node).values())
    assert routes(n1)["10.99.3.0/24"]["gateway"] == ip3  # the healthy nodes are untouched
    assert plugin("STATUS", config=d1.config())[0] == 0


def test_mutual_tls_refuses_a_peer_from_a_foreign_ca(netns, cluster):
    u = Underlay(netns)
    (n1, ip1), (n2, ip2), (n3, ip3) = u.add_node(), u.add_node(), u.add_node()
    with tempfile.TemporaryDirectory() as tmp:
        good = make_pki(tmp, [(n1, ip1), (n2, ip2)], "good")
        evil = make_pki(tmp, [(n3, ip3)], "evil")
        d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1, extra=good[n1])
        d2 = cluster(n2, "10.99.2.0/24", node_ip=ip2, peers=[d1.listen], extra=good[n2])
        # node 3 trusts the cluster's CA (so it accepts the servers) but its own certificate is
        # from another CA: the servers must refuse it as a client, and it serves that cert too
        evil_flags = evil[n3][:4] + ["--tls-ca", good["ca"]]
        d3 = cluster(n3, "10.99.3.0/24", node_ip=ip3, peers=[d1.listen, d2.listen], extra=evil_flags)
        wait_for(lambda: "10.99.2.0/24" in routes(n1) and "10.99.1.0/24" in routes(n2), 10, what="TLS peers")
        wait_for(lambda: "no peer reachable" in d3.ctl("nodes").get("problem", ""), 10, what="n3 fails")
        assert n3 not in d1.nodes() and n3 not in d2.nodes()
        assert routes(n3) == {} and "10.99.3.0/24" not in routes(n1)
        assert "WITHOUT TLS" not in d1.log()
    # and a node without TLS flags warns at start
    d4 = cluster(netns.add("nd"), "10.99.4.0/24", node_ip="127.0.0.1", listen_port=7999)
    assert "WITHOUT TLS" in d4.log()


def test_cleanup_removes_what_podnetd_made_and_nothing_else(netns, cluster):
    u = Underlay(netns)
    (n1, ip1), (n2, ip2) = u.add_node(), u.add_node()
    d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1, extra=["--backend", "vxlan"])
    cluster(n2, "10.99.2.0/24", node_ip=ip2, peers=[d1.listen], extra=["--backend", "vxlan"])
    wait_for(lambda: "10.99.2.0/24" in routes(n1), 10, what="routes")
    in_ns(n1, "ip", "route", "add", "10.99.50.0/24", "via", ip2, "proto", "static")
    tables = in_ns(n1, "nft", "list", "tables").stdout
    assert "table inet podnet" in tables and "table bridge podnet" in tables
    d1.stop()
    assert "10.99.2.0/24" in routes(n1)  # stopping leaves the dataplane alone
    proc = in_ns(n1, PY, "-m", "podnetd.main", "--cleanup", cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "podnet" not in in_ns(n1, "nft", "list", "tables").stdout
    names = {link["ifname"] for link in json.loads(in_ns(n1, "ip", "-j", "link").stdout)}
    assert "podnet.vxlan" not in names and "podnet0" not in names and "ul0" in names
    assert routes(n1) == {}
    assert json.loads(in_ns(n1, "ip", "-j", "route", "show", "10.99.50.0/24").stdout)
    # idempotent
    assert in_ns(n1, PY, "-m", "podnetd.main", "--cleanup", cwd=REPO, check=False).returncode == 0


def test_daemon_restarts_lose_no_packet(netns, cluster):
    u = Underlay(netns)
    (n1, ip1), (n2, ip2) = u.add_node(), u.add_node()
    vx = ["--backend", "vxlan"]
    d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1, extra=vx)  # no seeds: learns from n2's calls
    d2 = cluster(n2, "10.99.2.0/24", node_ip=ip2, peers=[d1.listen], extra=vx)
    wait_for(lambda: "10.99.2.0/24" in routes(n1) and "10.99.1.0/24" in routes(n2), 10, what="routes")
    p1, p2 = netns.add("p"), netns.add("p")
    a1, _ = add_pod(d1, p1, "c1"), add_pod(d2, p2, "c2")
    with ContinuousPing(p2, a1) as pinging:
        for target, how in ((d1, signal.SIGTERM), (d1, signal.SIGKILL), (d2, signal.SIGKILL)):
            target.stop(how)
            target.start()
            wait_for(lambda: len(d1.nodes()) == 2 and len(d2.nodes()) == 2, 10, what="rejoined")
    assert pinging.sent > 100 and pinging.received == pinging.sent, pinging.output[-500:]


def test_node_ip_defaults_to_the_default_route_interface(netns, cluster):
    u = Underlay(netns, routed=True)  # nodes get a default route via the hub
    (n1, ip1), (n2, ip2) = u.add_node(), u.add_node()
    d1 = cluster(n1, "10.99.1.0/24", node_ip=None)
    cluster(n2, "10.99.2.0/24", node_ip=None, peers=[f"{ip1}:7946"])
    wait_for(lambda: "10.99.1.0/24" in routes(n2) and "10.99.2.0/24" in routes(n1), 10, what="routes")
    nodes = d1.nodes()
    assert nodes[n1]["underlay_ip"] == ip1 and nodes[n2]["underlay_ip"] == ip2
    assert nodes[n2]["peer_address"] == f"{ip2}:7946"


def test_unusable_underlay_flags_fail_with_one_clear_line(netns, tmp_path):
    node = netns.add("nd")
    base = [PY, "-m", "podnetd.main", "--node-name", "x", "--pod-cidr", "10.5.1.0/24",
            "--cluster-cidr", "10.5.0.0/16", "--socket", str(tmp_path / "s"),
            "--state-dir", str(tmp_path / "st"), "--insecure-peers"]
    cases = [(["--node-ip", "10.1.1.1"], "no interface holds 10.1.1.1"),
             (["--node-ip", "127.0.0.1", "--listen", "10.9.9.9:7946"], "cannot listen on 10.9.9.9:7946"),
             ([], "no --node-ip given and no default route")]
    for flags, message in cases:
        proc = in_ns(node, *base, *flags, cwd=REPO, check=False, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "podnetd: error: " in proc.stderr and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_peer_with_another_cluster_cidr_is_refused_on_both_sides(netns, cluster):
    u = Underlay(netns)
    (n1, ip1), (n2, ip2) = u.add_node(), u.add_node()
    d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1)
    d2 = cluster(n2, "10.98.2.0/24", node_ip=ip2, peers=[d1.listen], cluster_cidr="10.98.0.0/16",
                 ready=False)
    wait_for(lambda: plugin("STATUS", config=d2.config())[0] != 0, 10, what="n2 not ready")
    rc, out, _ = plugin("STATUS", config=d2.config())
    assert "cluster CIDR 10.98.0.0/16 differs from ours (10.99.0.0/16)" in out["details"], out
    assert "refused" in d1.log() and n2 not in d1.nodes()
    assert routes(n1) == {} and routes(n2) == {}


def test_a_client_refuses_a_peer_whose_certificate_does_not_name_its_underlay_address(netns,
                                                                                       cluster):
    """The client side of the mutual TLS: a peer serving a certificate of the cluster's CA whose
    SAN holds another address than the one dialled is not talked to (the TLS error, not any
    failure, is what the log names)."""
    u = Underlay(netns)
    (n1, ip1), (n2, ip2) = u.add_node(), u.add_node()
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(tmp, [(n1, ip1), (n2, "192.0.2.99")])     # n2's SAN: not its address
        d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1, extra=pki[n1],
                     peers=[f"{ip2}:7946"])
        cluster(n2, "10.99.2.0/24", node_ip=ip2, extra=pki[n2])
        wait_for(lambda: "Hostname Verification Check failed" in
                 d1.ctl("nodes").get("problem", ""), 20, what="n1 to refuse n2's certificate")
        assert n2 not in d1.nodes()
        assert "10.99.2.0/24" not in routes(n1)
        assert "10.99.2.0/24" not in routes(n1)
