"""The doctor's verdicts and packet parsing, without a kernel (pure logic, runs rootless)."""
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP

from podnetd.doctor import antispoof, drift, mtu, node, peers, probe, vxlan
from podnetd.doctor.model import FAIL, PASS, SKIP, Check, Peer, exit_code
from podnetd.doctor.replies import Reply

N2 = Peer("n2", "10.250.1.12", "10.244.2.0/24", "host-gw", heartbeat_age=0.5)
N3 = Peer("n3", "10.250.2.13", "10.244.3.0/24", "vxlan", vtep_mac="02:00:00:00:00:03", heartbeat_age=0.5)
OK = Reply("echo-reply", source="x", rtt_ms=1.0)


def entries():
    return [{"kind": "route", "node": "n2", "mode": "host-gw", "destination": "10.244.2.0/24",
             "via": "10.250.1.12", "dev": "", "state": "present"},
            {"kind": "fdb", "node": "n3", "mode": "vxlan", "destination": "02:00:00:00:00:03",
             "via": "10.250.2.13", "dev": "podnet.vxlan", "state": "present"},
            {"kind": "neigh", "node": "n3", "mode": "vxlan", "destination": "10.244.3.0",
             "via": "02:00:00:00:00:03", "dev": "podnet.vxlan", "state": "present"},
            {"kind": "route", "node": "n3", "mode": "vxlan", "destination": "10.244.3.0/24",
             "via": "10.244.3.0", "dev": "podnet.vxlan", "state": "present"}]


ROUTES = [{"dst": "default", "gateway": "10.250.1.1", "dev": "eth0", "proto": 3},
          {"dst": "10.244.1.0/24", "gateway": None, "dev": "podnet0", "proto": 2},
          {"dst": "10.244.2.0/24", "gateway": "10.250.1.12", "dev": "eth0", "proto": 0x6E},
          {"dst": "10.244.3.0/24", "gateway": "10.244.3.0", "dev": "podnet.vxlan", "proto": 0x6E}]
FDB = [{"mac": "02:00:00:00:00:03", "dst": "10.250.2.13"}]
NEIGH = [{"ip": "10.244.3.0", "mac": "02:00:00:00:00:03"}]


def run_drift(ents=None, routes=None, fdb=None, neigh=None):
    return drift.verdicts(entries() if ents is None else ents, ROUTES if routes is None else routes,
                          FDB if fdb is None else fdb, NEIGH if neigh is None else neigh,
                          cluster_cidr="10.244.0.0/16", pod_cidr="10.244.1.0/24", route_proto=0x6E,
                          peers=[N2, N3], vxlan_dev="podnet.vxlan")


def fails(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == FAIL]


def test_exit_code_is_zero_only_without_failures():
    assert exit_code([Check("a", "b", "", PASS, ""), Check("a", "c", "", SKIP, "")]) == 0
    assert exit_code([Check("a", "b", "", PASS, ""), Check("a", "c", "", FAIL, "")]) == 1


def test_peer_gateway_and_vtep_come_from_its_pod_cidr():
    assert (N3.gateway, N3.vtep_ip) == ("10.244.3.1", "10.244.3.0")


def test_mtu_size_plan_is_exact_in_two_rounds():
    coarse = mtu.coarse_sizes(1450)
    assert coarse[0] == 1450 and coarse[-1] == mtu.MIN_SIZE and len(coarse) < 40
    results = {s: (OK if s <= 1361 else None) for s in coarse}
    largest, lost = mtu.bounds(results)
    assert largest < 1361 < lost
    results.update({s: (OK if s <= 1361 else None) for s in mtu.fine_sizes(largest, lost)})
    assert mtu.bounds(results)[0] == 1361


def test_mtu_black_hole_names_sizes_and_link_need():
    c = mtu.verdict(N3, 1450, {1450: None, 1354: OK, 1355: None}, reachable=True)
    assert c.status == FAIL
    assert "1354" in c.detail and "1450" in c.detail and "black hole" in c.cause
    assert "1500" in c.fix                       # VXLAN needs pod MTU + 50 on the link
    assert mtu.verdict(N3, 1450, {1450: OK}, reachable=True).status == PASS
    assert mtu.verdict(N3, 1450, {}, reachable=False).status == SKIP
    told = mtu.verdict(N2, 1500, {1500: Reply("frag-needed", source="10.250.1.1", next_hop_mtu=1400),
                                  1400: OK}, reachable=True)
    assert told.status == FAIL and "next-hop MTU 1400" in told.detail and "black hole" not in told.cause


def test_drift_healthy_passes():
    assert fails(run_drift()) == []


def test_drift_names_missing_and_redirected_fdb():
    ents = entries()
    ents[1]["state"] = "missing"
    (c,) = fails(run_drift(ents, fdb=[]))
    assert c.target == "n3" and "fdb" in c.name and "missing" in c.detail
    (c,) = fails(run_drift(ents, fdb=[{"mac": "02:00:00:00:00:03", "dst": "10.250.9.9"}]))
    assert "points to 10.250.9.9" in c.detail


def test_drift_finds_a_rogue_more_specific_route_and_the_hijack():
    rogue = ROUTES + [{"dst": "10.244.3.0/25", "gateway": None, "dev": None, "proto": 3}]
    (c,) = fails(run_drift(routes=rogue))
    assert c.name == "rogue route" and c.target == "10.244.3.0/25" and "n3" in c.cause
    hints = drift.hijacks([N2, N3], rogue, 0x6E)
    assert set(hints) == {"n3"} and "10.244.3.0/25" in hints["n3"]
    # a covering route (less specific than every pod CIDR) takes nothing: not reported
    covering = ROUTES + [{"dst": "10.244.0.0/16", "gateway": "10.250.1.1", "dev": "eth0", "proto": 4}]
    assert fails(run_drift(routes=covering)) == []
    assert drift.hijacks([N2, N3], covering, 0x6E) == {}


def test_drift_foreign_and_stale_entries():
    ents = entries()
    ents[0]["state"] = "foreign"
    (c,) = fails(run_drift(ents))
    assert "foreign" in c.detail and "ip route del 10.244.2.0/24" in c.fix
    (c,) = fails(run_drift(fdb=FDB + [{"mac": "02:00:00:00:00:09", "dst": "10.250.2.19"}]))
    assert c.name == "stale VXLAN entries" and "02:00:00:00:00:09" in c.detail


DEV = vxlan.Device("podnet.vxlan", 1, 8472, "10.250.1.11", "eth0")


def test_vxlan_encapsulation_verdicts():
    good = vxlan.Encap("10.250.1.11", "10.250.2.13", 8472, 1, "10.244.3.1")
    assert vxlan.verdict(N3, DEV, [good], FDB, NEIGH).status == PASS
    wrong = vxlan.Encap("10.250.1.11", "10.250.2.99", 8472, 1, "10.244.3.1")
    c = vxlan.verdict(N3, DEV, [wrong], FDB, NEIGH)
    assert c.status == FAIL and "10.250.2.99" in c.cause
    c = vxlan.verdict(N3, DEV, [], [], NEIGH)
    assert c.status == FAIL and "FDB entry" in c.cause and "missing" in c.cause
    c = vxlan.verdict(N3, DEV, [], FDB, [])
    assert c.status == FAIL and "neighbour entry" in c.cause
    assert vxlan.verdict(N3, None, [], [], []).status == FAIL


def test_peer_verdicts():
    assert peers.underlay(N3, OK, 1).status == PASS
    c = peers.underlay(N3, None, 1)
    assert c.status == FAIL and "10.250.2.13" in c.cause
    c = peers.pod_path(N3, None, False, "10.244.1.5", 1)
    assert c.status == FAIL and "underlay" in c.cause
    c = peers.pod_path(N3, None, True, "10.244.1.5", 1, route_hint="takes the route X")
    assert c.cause == "takes the route X"
    stale = Peer("n3", "10.250.2.13", "10.244.3.0/24", "vxlan", heartbeat_age=12.0)
    assert peers.peer_state(stale, "static").status == FAIL
    assert peers.peer_state(stale, "etcd").status == PASS
    gone = Peer("n4", "10.250.2.14", "10.244.4.0/24", "unreachable", problem="CIDR overlaps n3")
    assert "CIDR overlaps n3" in peers.peer_state(gone, "static").cause
    assert peers.clock_skew(N3, Reply("timestamp", skew_ms=40, rtt_ms=2)).status == PASS
    assert peers.clock_skew(N3, Reply("timestamp", skew_ms=-5000, rtt_ms=2)).status == FAIL
    assert peers.clock_skew(N3, None).status == SKIP


def test_node_verdicts():
    assert node.ip_forward("1").status == PASS and node.ip_forward("0").status == FAIL
    assert node.conntrack(10, 100).status == PASS and node.conntrack(95, 100).status == FAIL
    assert node.conntrack(None, None).status == PASS
    assert node.uplink("eth0", 1500, 65536, 1450, 65536, True).status == PASS
    c = node.uplink("eth0", 1480, 65536, 1450, 65536, True)
    assert c.status == FAIL and "1500" in c.fix and "--mtu 1430" in c.fix
    assert node.uplink("eth0", 1500, 65536, 1500, 196608, False).status == FAIL
    assert node.rp_filter([("n3", "podnet.vxlan", "podnet.vxlan", 1)]).status == PASS
    assert node.rp_filter([("n3", "podnet.vxlan", "eth0", 1)]).status == FAIL
    assert node.rp_filter([("n3", "podnet.vxlan", "eth0", 2)]).status == PASS
    assert node.br_netfilter(True, "1", ["ip filter FORWARD"]).status == FAIL
    assert node.br_netfilter(True, "1", []).status == PASS
    link = {"up": True, "mtu": 1450}
    assert node.bridge("podnet0", link, ["10.244.1.1/24"], "10.244.1.1", "10.244.1.0/24", 1450).status == PASS
    c = node.bridge("podnet0", {"up": False, "mtu": 1450}, [], "10.244.1.1", "10.244.1.0/24", 1450)
    assert c.status == FAIL and "down" in c.detail and "10.244.1.1/24" in c.detail
    assert node.bridge("podnet0", None, [], "10.244.1.1", "10.244.1.0/24", 1450).status == FAIL


def test_antispoof_verdicts():
    ok = antispoof.verdicts({"honest": True, "forged-ip": False, "forged-mac": False}, True, "podnet0")
    assert [c.status for c in ok] == [PASS, PASS]
    (c,) = antispoof.verdicts({"honest": False}, True, "podnet0")
    assert c.status == FAIL and "control" in c.name       # a capture that saw nothing proves nothing
    leaky = antispoof.verdicts({"honest": True, "forged-ip": True, "forged-mac": False}, False, "podnet0")
    assert [c.status for c in leaky] == [FAIL, PASS] and "does not exist" in leaky[0].cause


def test_parse_answer_matches_our_ident_only():
    reply = bytes(IP(src="10.244.3.1", dst="10.244.1.5") / ICMP(type=0, id=77, seq=4) / probe.MARKER)
    assert probe.parse_answer(reply, 77)[0] == 4
    assert probe.parse_answer(reply, 78) is None
    request = probe.build(probe.Probe("k", "10.244.1.5", "10.244.3.1", size=1400), 77, 9)
    assert len(request) == 1400 and IP(request).flags.DF
    frag = bytes(IP(src="10.250.1.1", dst="10.244.1.5") / ICMP(type=3, code=4, nexthopmtu=1400)
                 / request[:28])
    seq, r = probe.parse_answer(frag, 77)
    assert (seq, r.kind, r.next_hop_mtu, r.source) == (9, "frag-needed", 1400, "10.250.1.1")
    assert probe.parse_answer(b"\x45garbage", 77) is None


def test_vxlan_keeper_reads_outer_and_inner_headers():
    from scapy.layers.inet import UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    inner = Ether() / IP(src="10.244.1.5", dst="10.244.3.1") / ICMP(id=1) / probe.MARKER
    frame = bytes(Ether() / IP(src="10.250.1.11", dst="10.250.2.13") / UDP(sport=5000, dport=8472)
                  / VXLAN(vni=7) / inner)
    assert probe.vxlan_keeper(8472)(frame) == vxlan.Encap("10.250.1.11", "10.250.2.13", 8472, 7, "10.244.3.1")
    assert probe.vxlan_keeper(4789)(frame) is None


def test_unusable_peer_record_is_a_failure_not_a_traceback():
    ok = peers.parse_peer("n3", "10.250.2.13", "10.244.3.0/24", "vxlan", "", "", 0.1)
    assert isinstance(ok, Peer)
    for underlay, cidr in (("10.250.2.13", "10.244.3.7/24"), ("nonsense", "10.244.3.0/24"),
                           ("10.250.2.13", "10.244.3.1/32"), ("fe80::1", "10.244.3.0/24"),
                           ("10.250.2.13", "")):
        bad = peers.parse_peer("n3", underlay, cidr, "vxlan", "", "", 0.1)
        assert isinstance(bad, Check) and bad.status == FAIL and bad.target == "n3", (underlay, cidr)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(
    lambda head, tail: head + tail,
    st.sampled_from([bytes(IP(src="1.2.3.4", dst="5.6.7.8") / ICMP(type=t, id=5)) for t in (0, 3, 14)]),
    st.binary(max_size=80)))
def test_parsers_take_any_bytes(data):
    """Whatever arrives on a raw or packet socket: None or a well-formed answer, never an exception."""
    got = probe.parse_answer(data, 5)
    assert got is None or (isinstance(got[0], int) and isinstance(got[1], Reply))
    encap = probe.vxlan_keeper(8472)(data + probe.MARKER)
    assert encap is None or isinstance(encap, vxlan.Encap)
    kept = probe.echo_keeper(5)(data + probe.MARKER)
    assert kept is None or isinstance(kept, int)


def test_firewall_set_against_the_attachments():
    eps = [{"host_ifname": "pnA", "mac": "0A:00:00:00:00:01", "address": "10.244.1.2/24", "state": "active"},
           {"host_ifname": "pnB", "mac": "0a:00:00:00:00:02", "address": "10.244.1.3/24", "state": "releasing"}]
    good = [("pnA", "0a:00:00:00:00:01", "10.244.1.2")]
    assert [c.status for c in drift.firewall(eps, good, True)] == [PASS]
    # a releasing pod's element may linger until its veth is gone
    assert fails(drift.firewall(eps, good + [("pnB", "0a:00:00:00:00:02", "10.244.1.3")], True)) == []
    (c,) = fails(drift.firewall(eps, [], True))
    assert c.target == "pnA" and "lacks" in c.detail and "dropped" in c.cause
    # a MAC the pod took before speaking (a chained tuning plugin), learned by podnetd: not drift
    assert fails(drift.firewall(eps, good + [("pnA", "0a:58:0a:f4:01:02", "10.244.1.2")], True)) == []
    (c,) = fails(drift.firewall(eps, good + [("pnX", "02:00:00:00:00:09", "10.244.1.9")], True))
    assert c.target == "pnX" and "no pod holds" in c.detail
    assert {c.target for c in fails(drift.firewall(eps, None, False))} == {"bridge podnet", "pnA", "inet podnet"}


def test_cluster_problem_fails():
    assert peers.cluster("n1", "", "static", 2).status == PASS
    c = peers.cluster("n1", "etcd unreachable: connection refused", "etcd", 2)
    assert c.status == FAIL and "etcd unreachable" in c.detail


def test_table_lists_every_check_then_each_failure_with_cause_and_fix():
    from podnetd.ctl.doctor import as_dict, render
    from podnetd.doctor.run import Report
    checks = [peers.underlay(N2, OK, 1), peers.underlay(N3, None, 1)]
    report = Report("n1", checks, 1.25, [])
    text = render(report)
    assert text.count("underlay reachability") == 3          # two rows, one failure section
    assert "FAIL peer: underlay reachability (n3)" in text and "cause: node n3" in text
    assert "n1: 1 passed, 1 failed, 0 skipped in 1.2 s" in text
    data = as_dict(report)
    assert data["ok"] is False and data["summary"] == {"pass": 1, "fail": 1, "skip": 0}
    assert data["checks"][1]["fix"].startswith("check that n3 is up")


def test_bpf_programs_are_what_tcpdump_compiles():
    # `tcpdump -dd 'ip and udp dst port 8472'` and `tcpdump -dd 'ip and icmp'`
    assert probe.bpf_ipv4(17, 8472) == [
        (0x28, 0, 0, 0x0c), (0x15, 0, 8, 0x800), (0x30, 0, 0, 0x17), (0x15, 0, 6, 0x11),
        (0x28, 0, 0, 0x14), (0x45, 4, 0, 0x1fff), (0xb1, 0, 0, 0x0e), (0x48, 0, 0, 0x10),
        (0x15, 0, 1, 0x2118), (0x6, 0, 0, 0x40000), (0x6, 0, 0, 0)]
    assert probe.bpf_ipv4(1) == [(0x28, 0, 0, 0x0c), (0x15, 0, 3, 0x800), (0x30, 0, 0, 0x17),
                                 (0x15, 0, 1, 0x01), (0x6, 0, 0, 0x40000), (0x6, 0, 0, 0)]
