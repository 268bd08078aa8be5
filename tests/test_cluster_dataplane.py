"""What crosses the wire, seen with scapy: VXLAN encapsulation on the underlay, pod sources
never rewritten between pods, egress masquerade, and spoofed frames from a pod dropped."""
from test_cluster_lib import Sniffer, Underlay, add_pod, cluster, routes, send_frame  # noqa: F401
from testlib import cni_add, cni_del, in_ns, ping, wait_for


def test_vxlan_encapsulation_and_sources_on_the_underlay(netns, cluster):
    u = Underlay(netns, subnets=2, routed=True)
    (n1, ip1), (n2, ip2), (n3, ip3) = u.add_node(0), u.add_node(1), u.add_node(0)
    vni = ["--vxlan-vni", "4242"]
    d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1, extra=vni)
    d2 = cluster(n2, "10.99.2.0/24", node_ip=ip2, peers=[d1.listen], extra=vni)
    d3 = cluster(n3, "10.99.3.0/24", node_ip=ip3, peers=[d1.listen], extra=vni)
    wait_for(lambda: {"10.99.2.0/24", "10.99.3.0/24"} <= routes(n1).keys(), 10, what="routes")
    p1, p2, p3 = netns.add("p"), netns.add("p"), netns.add("p")
    a1, a2, a3 = add_pod(d1, p1, "c1"), add_pod(d2, p2, "c2"), add_pod(d3, p3, "c3")
    outside = "192.168.200.254"  # the router: outside the cluster CIDR
    sniffer = Sniffer(n1, "ul0")
    try:
        assert ping(p1, a2, count=2)      # vxlan (other subnet)
        assert ping(p1, a3, count=2)      # host-gw (same subnet)
        assert ping(p1, outside, count=2)  # egress
    finally:
        packets = sniffer.stop()
    vx = [p for p in packets if "vni" in p]
    assert vx, packets
    assert {p["vni"] for p in vx} == {4242} and {p["dport"] for p in vx} == {8472}
    assert {(p["src"], p["dst"]) for p in vx} == {(ip1, ip2), (ip2, ip1)}
    assert {(p["inner_src"], p["inner_dst"]) for p in vx} == {(a1, a2), (a2, a1)}
    plain = {(p["src"], p["dst"]) for p in packets if "vni" not in p and p.get("proto") == 1}
    assert (a1, a3) in plain and (a3, a1) in plain  # host-gw: pod sources as they are
    assert (ip1, outside) in plain and (outside, ip1) in plain  # egress: masqueraded to the node
    assert not any(a1 == src for src, dst in plain if dst == outside)


def test_spoofed_frames_from_a_pod_are_dropped(netns, cluster):
    u = Underlay(netns)
    n1, ip1 = u.add_node()
    d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1)
    p1, p2 = netns.add("p"), netns.add("p")
    results = []
    for pod, cid in ((p1, "c1"), (p2, "c2")):
        rc, r, err = cni_add(d1, pod, cid)
        assert rc == 0, (r, err)
        results.append(r)
    a1, a2 = (r["ips"][0]["address"].split("/")[0] for r in results)
    mac1, mac2 = (r["interfaces"][2]["mac"] for r in results)
    gateway = results[0]["ips"][0]["gateway"]
    sniffer = Sniffer(p2, "eth0")
    try:
        send_frame(p1, "icmp", mac1, mac2, a1, a2, "legit-own-addresses")
        send_frame(p1, "icmp", mac1, mac2, "10.99.1.200", a2, "spoofed-ip")
        send_frame(p1, "icmp", mac1, mac2, a2, a2, "spoofed-ip-of-a-neighbour")
        send_frame(p1, "icmp", "02:de:ad:be:ef:01", mac2, a1, a2, "spoofed-mac")
        send_frame(p1, "arp", mac1, "", gateway, a2)   # claims the gateway's address
        send_frame(p1, "arp", mac1, "", a1, a2)        # an honest ARP reply
        assert ping(p1, a2)  # also: the pod still talks with its own addresses
    finally:
        packets = sniffer.stop()
    payloads = [p.get("payload", "") for p in packets]
    assert any("legit-own-addresses" in x for x in payloads), packets
    assert not any("spoofed" in x for x in payloads), payloads
    arps = [p for p in packets if p.get("arp_op") == 2 and p["arp_hwsrc"] == mac1]
    assert any(p["arp_psrc"] == a1 for p in arps), packets
    assert not any(p["arp_psrc"] == gateway for p in arps), arps
    # drift in our nft tables is repaired (reconcile interval 1 s in these tests)
    in_ns(n1, "nft", "flush", "chain", "bridge", "podnet", "from_pod")
    in_ns(n1, "nft", "delete", "element", "bridge", "podnet", "pod_macs",
          f'{{ "{results[1]["interfaces"][1]["name"]}" . {mac2} }}')
    in_ns(n1, "nft", "delete", "table", "inet", "podnet")

    def repaired():
        bridge = in_ns(n1, "nft", "list", "table", "bridge", "podnet").stdout
        inet = in_ns(n1, "nft", "list", "tables").stdout
        return "drop" in bridge and mac2 in bridge and "inet podnet" in inet
    wait_for(repaired, 10, what="nft tables repaired")
    # detach removes the pod's entry
    rc, _, _ = cni_del(d1, p1, "c1")
    assert rc == 0
    def removed():
        table = in_ns(n1, "nft", "-j", "list", "table", "bridge", "podnet").stdout
        return a1 not in table and mac1 not in table and table
    ruleset = wait_for(removed, 10, what="the detached pod's elements removed")
    assert mac2 in ruleset and a2 in ruleset
