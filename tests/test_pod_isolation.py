"""Pods must not reach more than they should, in single-node mode as in cluster mode: forged
frames from a pod never reach another pod (scapy frames sent raw from inside a pod attached
through the CNI plugin, captured on another pod), no IPv6 from pods, pods reach the node only
for ICMP echo to their gateway (and replies to what the node opened), and VXLAN is taken only
from known peers. Every test has a positive control: a genuine frame or connection that must
get through, sent last, so a dropped forgery is never mistaken for a broken path."""
import ipaddress
import json

import pytest
from scapy.packet import Raw
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import DHCP6_Solicit
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA,
                                ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import ARP, Dot1Q, Ether

from isolation_lib import (Capture, Listener, send_frames, send_packets, tcp_connect, udp_send,
                           with_marker)
from test_cluster_lib import Underlay, add_pod, cluster, routes  # noqa: F401 - fixture
from testlib import cni_add, in_ns, ping, wait_for

BROADCAST = "ff:ff:ff:ff:ff:ff"
FORGED_MAC = "02:de:ad:be:ef:01"


def attach(daemon, pod_ns: str, cid: str) -> dict:
    """Attach through the real plugin: {ip, mac, port, gateway}."""
    rc, r, err = cni_add(daemon, pod_ns, cid)
    assert rc == 0, (r, err, daemon.log()[-2000:])
    return {"ip": r["ips"][0]["address"].split("/")[0], "gateway": r["ips"][0]["gateway"],
            "mac": r["interfaces"][2]["mac"], "port": r["interfaces"][1]["name"]}


@pytest.fixture
def two_pods(netns, daemon):
    """A single-node podnetd (no cluster flags) with two pods attached."""
    p1, p2 = netns.add("p"), netns.add("p")
    return daemon, (p1, attach(daemon, p1, "c1")), (p2, attach(daemon, p2, "c2"))


def icmp(src_mac, src_ip, dst_ip, payload: bytes, dst_mac=BROADCAST):
    # Broadcast by default: a forged frame reaches every port, whatever the bridge's FDB holds.
    return Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / ICMP() / payload


def arp_reply(eth_src, hw_src, ip_src, ip_dst):
    return Ether(src=eth_src, dst=BROADCAST) / ARP(op=2, hwsrc=hw_src, psrc=ip_src,
                                                   hwdst=BROADCAST, pdst=ip_dst)


def test_single_node_spoofed_frames_never_reach_another_pod(two_pods):
    d, (p1, a), (p2, b) = two_pods
    unused = str(ipaddress.ip_address(a["ip"]) + 100)
    forged = [
        icmp(a["mac"], unused, b["ip"], b"forged-ip-unused"),
        icmp(a["mac"], b["ip"], b["ip"], b"forged-ip-neighbour"),
        icmp(a["mac"], a["gateway"], b["ip"], b"forged-ip-gateway"),
        icmp(FORGED_MAC, a["ip"], b["ip"], b"forged-mac-unknown"),
        icmp(b["mac"], a["ip"], b["ip"], b"forged-mac-neighbour"),
        Ether(src=a["mac"], dst=BROADCAST) / Dot1Q(vlan=5) / IP(src=a["ip"], dst=b["ip"])
        / ICMP() / b"forged-8021q-tagged",
        Ether(src=a["mac"], dst=BROADCAST) / IP(src=a["ip"], dst="255.255.255.255")
        / UDP(sport=67, dport=68) / BOOTP(op=2, yiaddr=b["ip"], chaddr=bytes.fromhex(
            b["mac"].replace(":", ""))) / DHCP(options=[("message-type", "offer"), "end"])
        / b"forged-dhcp-server",
        arp_reply(a["mac"], a["mac"], a["gateway"], b["ip"]),    # claims the gateway's address
        arp_reply(a["mac"], a["mac"], b["ip"], b["ip"]),         # claims the neighbour's
        arp_reply(a["mac"], FORGED_MAC, a["ip"], b["ip"]),       # ARP sender MAC not its own
        arp_reply(FORGED_MAC, FORGED_MAC, a["ip"], b["ip"]),     # both MACs forged
    ]
    genuine = [arp_reply(a["mac"], a["mac"], a["ip"], b["ip"]),
               icmp(a["mac"], a["ip"], b["ip"], b"genuine-control-END")]
    capture = Capture(p2, "eth0", b"genuine-control-END")
    try:
        # a genuine frame first: a pod's first frame settles its MAC (see the next test)
        send_frames(p1, [icmp(a["mac"], a["ip"], b["ip"], b"genuine-first")] + forged + genuine)
        frames = capture.frames()
    finally:
        capture.kill()
    assert with_marker(frames, b"genuine-control-END"), frames   # the positive control
    assert with_marker(frames, b"genuine-first"), frames
    assert not with_marker(frames, b"forged"), [f.summary() for f in with_marker(frames, b"forged")]
    arps = [(f[ARP].hwsrc, f[ARP].psrc) for f in frames  # the ARP frames p1 sent
            if ARP in f and {f.src, f[ARP].hwsrc} & {a["mac"], FORGED_MAC}]
    assert (a["mac"], a["ip"]) in arps, arps  # the honest ARP reply got through
    assert all(arp == (a["mac"], a["ip"]) for arp in arps), arps
    assert ping(p1, b["ip"])  # and the pod still talks with its own addresses


def test_a_mac_the_pod_took_before_speaking_is_learned_once(two_pods, netns):
    """A chained plugin (the reference tuning plugin's "mac") may change the pod's MAC after
    podnet's ADD: the first frame's MAC becomes the port's, unless it is another pod's or the
    node's; after that the port keeps it."""
    d, (p1, a), (p2, b) = two_pods
    p3 = netns.add("p")
    c = attach(d, p3, "c3")
    tuned, other = "0a:58:0a:4d:00:aa", "0a:58:0a:4d:00:bb"
    in_ns(p3, "ip", "link", "set", "eth0", "address", tuned)
    bridge_mac = json.loads(in_ns(d.netns, "ip", "-j", "link", "show", "podnet0").stdout)[0]["address"]
    capture = Capture(p2, "eth0", b"genuine-control-END")
    try:
        # p1 (settled by a first genuine frame) may not take the tuned MAC either
        send_frames(p1, [icmp(a["mac"], a["ip"], b["ip"], b"genuine-p1"),
                         icmp(tuned, a["ip"], b["ip"], b"forged-p1-takes-p3s-mac")])
        send_frames(p3, [icmp(bridge_mac, c["ip"], b["ip"], b"forged-gateway-mac"),
                         icmp(b["mac"], c["ip"], b["ip"], b"forged-neighbour-mac"),
                         icmp(tuned, c["ip"], b["ip"], b"genuine-tuned-first"),
                         icmp(other, c["ip"], b["ip"], b"forged-second-mac"),
                         arp_reply(tuned, other, c["ip"], b["ip"]),
                         icmp(tuned, c["ip"], b["ip"], b"genuine-control-END")])
        frames = capture.frames()
    finally:
        capture.kill()
    assert with_marker(frames, b"genuine-control-END"), frames
    assert with_marker(frames, b"genuine-tuned-first") and with_marker(frames, b"genuine-p1")
    assert not with_marker(frames, b"forged"), [f.summary() for f in with_marker(frames, b"forged")]
    assert not [f for f in frames if ARP in f and f[ARP].hwsrc == other], frames
    assert ping(p3, b["ip"]) and ping(p3, c["gateway"])  # the pod talks with its tuned MAC


def test_single_node_no_ipv6_from_pods(two_pods, netns):
    d, (p1, a), (p2, b) = two_pods
    ll = "fe80::dead:beef"
    forged = [
        Ether(src=a["mac"], dst="33:33:00:00:00:01") / IPv6(src=ll, dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(routerlifetime=1800) / ICMPv6NDOptSrcLLAddr(lladdr=a["mac"])
        / ICMPv6NDOptPrefixInfo(prefix="2001:db8:77::", prefixlen=64),
        Ether(src=a["mac"], dst="33:33:ff:00:00:01") / IPv6(src=ll, dst="ff02::1:ff00:1", hlim=255)
        / ICMPv6ND_NS(tgt="fe80::1") / ICMPv6NDOptSrcLLAddr(lladdr=a["mac"]),
        Ether(src=a["mac"], dst="33:33:00:00:00:01") / IPv6(src=ll, dst="ff02::1", hlim=255)
        / ICMPv6ND_NA(tgt="fe80::1", R=1, O=1),
        Ether(src=a["mac"], dst="33:33:00:01:00:02") / IPv6(src=ll, dst="ff02::1:2")
        / UDP(sport=546, dport=547) / DHCP6_Solicit(),
        Ether(src=a["mac"], dst="33:33:00:00:00:01") / IPv6(src=ll, dst="ff02::1")
        / ICMPv6EchoRequest(data=b"forged-ipv6-echo"),
    ]
    capture = Capture(p2, "eth0", b"genuine-control-END")
    try:
        send_frames(p1, forged + [icmp(a["mac"], a["ip"], b["ip"], b"genuine-control-END")])
        frames = capture.frames()
    finally:
        capture.kill()
    assert with_marker(frames, b"genuine-control-END"), frames
    from_pod = [f for f in frames if IPv6 in f and f.src == a["mac"]]
    assert from_pod == [], [f.summary() for f in from_pod]
    # the node took no router, prefix or address from the pod's advertisement either
    node_routes = json.loads(in_ns(d.netns, "ip", "-j", "-6", "route", "show").stdout)
    assert not any(r["dst"] in ("default", "2001:db8:77::/64") for r in node_routes), node_routes
    assert "2001:db8:77:" not in in_ns(d.netns, "ip", "-6", "addr").stdout


def test_single_node_pods_reach_the_node_only_for_what_they_need(two_pods, netns):
    d, (p1, a), (p2, b) = two_pods
    # the node's "underlay" address, on a link to an uplink namespace: any address of the node
    # besides the gateway
    uplink = netns.add("up")
    in_ns(d.netns, "ip", "link", "add", "ul0", "type", "veth", "peer", "name", "eth0",
          "netns", uplink)
    in_ns(d.netns, "ip", "addr", "add", "192.168.250.1/24", "dev", "ul0")
    in_ns(d.netns, "ip", "link", "set", "ul0", "up")
    port = 7946  # the static store's peer port, say; any listening service alike
    node_listener, pod_listener = Listener(d.netns, port), Listener(p2, port)
    try:
        # positive controls: the listener serves the node itself; pod-to-pod TCP works; the node
        # reaches a pod (the runtime's httpGet/tcpSocket probes: their replies come back)
        assert tcp_connect(d.netns, a["gateway"], port) == "ok"
        assert tcp_connect(p1, b["ip"], port) == "ok"
        assert tcp_connect(d.netns, b["ip"], port) == "ok"
        assert ping(p1, a["gateway"])
        # what a pod may not reach on its node
        assert tcp_connect(p1, a["gateway"], port) in ("refused", "timeout")
        assert tcp_connect(p1, "192.168.250.1", port) in ("refused", "timeout")
        udp_send(p1, a["gateway"], port)
        udp_send(p1, "192.168.250.1", port)
        assert not ping(p1, "192.168.250.1")
        # fragments are judged whole (conntrack reassembles them before the input hook): a
        # datagram in 3 fragments to the gateway is dropped, the same to a pod arrives
        bridge_mac = json.loads(in_ns(d.netns, "ip", "-j", "link", "show", "podnet0").stdout)[0]["address"]
        for dst_mac, dst_ip, ident in ((bridge_mac, a["gateway"], 4242), (b["mac"], b["ip"], 4243)):
            datagram = IP(src=a["ip"], dst=dst_ip, id=ident) / UDP(sport=5555, dport=port) / (b"f" * 2500)
            send_frames(p1, [Ether(src=a["mac"], dst=dst_mac) / f for f in fragment(datagram, 1000)])
        wait_for(lambda: ("udp", a["ip"]) in pod_listener.seen(), 10, what="fragmented datagram")
        # a positive control for UDP, sent last: the node's own datagram arrives
        udp_send(d.netns, a["gateway"], port)
        wait_for(lambda: ("udp", a["gateway"]) in node_listener.seen(), 10, what="node's datagram")
    finally:
        node_seen = node_listener.stop()
        pod_seen = pod_listener.stop()
    assert ("tcp", a["ip"]) in pod_seen and ("tcp", a["gateway"]) in pod_seen, pod_seen
    assert ("tcp", a["gateway"]) in node_seen, node_seen
    assert ("udp", a["gateway"]) in node_seen, node_seen
    assert not [peer for peer in node_seen if peer[1] == a["ip"]], node_seen


def vxlan_frame(src_ip: str, dst_ip: str, src_vtep_mac: str, vtep_mac: str, inner_src: str,
                inner_dst: str, payload: bytes, vni: int = 1):
    # the header by hand: scapy's VXLAN layer sets the GPE next-protocol flag, which Linux
    # refuses as a malformed header
    header = b"\x08\x00\x00\x00" + (vni << 8).to_bytes(4, "big")
    return (IP(src=src_ip, dst=dst_ip) / UDP(sport=40000, dport=8472) / Raw(header)
            / Ether(src=src_vtep_mac, dst=vtep_mac) / IP(src=inner_src, dst=inner_dst)
            / ICMP() / payload)


def test_vxlan_only_from_known_peers_and_remote_pods_kept_off_the_node(netns, cluster):
    """A routed lab: n1 and n2 on two subnets (VXLAN between them), and a host on n2's subnet
    that is no peer. Its VXLAN packets to n1 are dropped before decapsulation, while the same
    packet from n2's underlay address is decapsulated and reaches n1's pod."""
    u = Underlay(netns, subnets=2, routed=True)
    (n1, ip1), (n2, ip2), (rogue, rogue_ip) = u.add_node(0), u.add_node(1), u.add_node(1)
    d1 = cluster(n1, "10.99.1.0/24", node_ip=ip1)
    d2 = cluster(n2, "10.99.2.0/24", node_ip=ip2, peers=[d1.listen])
    wait_for(lambda: "10.99.2.0/24" in routes(n1) and "10.99.1.0/24" in routes(n2), 15,
             what="routes")
    p1, p2 = netns.add("p"), netns.add("p")
    a1, a2 = add_pod(d1, p1, "c1"), add_pod(d2, p2, "c2")
    assert ping(p2, a1, count=2)  # peers' traffic flows over VXLAN
    vtep1, vtep2 = vtep_mac(n1), vtep_mac(n2)
    rx_before = vxlan_rx(n1)
    capture = Capture(p1, "eth0", b"genuine-control-END")
    try:
        # the rogue knows everything: VNI, port, n1's VTEP MAC, a source inside n2's pod CIDR
        send_packets(rogue, [vxlan_frame(rogue_ip, ip1, vtep2, vtep1, "10.99.2.77", a1,
                                         b"forged-vxlan-from-rogue"),
                             vxlan_frame(rogue_ip, ip1, vtep2, vtep1, a2, a1, b"forged-vxlan-as-pod")])
        send_packets(n2, [vxlan_frame(ip2, ip1, vtep2, vtep1, a2, a1, b"genuine-control-END")])
        frames = capture.frames()
    finally:
        capture.kill()
    assert with_marker(frames, b"genuine-control-END"), frames
    assert not with_marker(frames, b"forged"), frames
    assert vxlan_rx(n1) - rx_before == 1  # the control, decapsulated; never the rogue's

    # the node's own ports: the peer port on its underlay address, from its own pod and from
    # a pod of another node (over VXLAN, with its pod source address)
    listener = Listener(n1, 8000)
    try:
        assert tcp_connect(n2, ip1, 8000) == "ok"  # positive control: a node reaches it
        assert tcp_connect(p1, ip1, 7946) in ("refused", "timeout")  # podnetd's peer port
        assert tcp_connect(p1, ip1, 8000) in ("refused", "timeout")
        assert tcp_connect(p2, "10.99.1.1", 8000) in ("refused", "timeout")  # n1's gateway
        assert tcp_connect(p2, "10.99.1.0", 8000) in ("refused", "timeout")  # n1's VTEP address
        assert ping(p1, "10.99.1.1") and ping(p1, a2)  # ICMP to the gateway, pod to pod
        assert tcp_connect(n1, "10.99.1.1", 8000) == "ok"  # the node itself, over lo
    finally:
        seen = listener.stop()
    assert {peer for _, peer in seen} <= {ip2, "10.99.1.1"}, seen
    assert any(peer == ip2 for _, peer in seen), seen


def vtep_mac(node: str) -> str:
    return json.loads(in_ns(node, "ip", "-j", "link", "show", "podnet.vxlan").stdout)[0]["address"]


def vxlan_rx(node: str) -> int:
    link = json.loads(in_ns(node, "ip", "-j", "-s", "link", "show", "podnet.vxlan").stdout)[0]
    return link["stats64"]["rx"]["packets"]
