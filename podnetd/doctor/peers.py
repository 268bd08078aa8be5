"""Verdicts per peer: its state in the store, the underlay, the pod path, clock skew (pure)."""
import ipaddress

from .model import Check, Peer, failed, passed, skipped
from .replies import Reply, describe

FAMILY = "peer"
STALE_HEARTBEAT_S = 5.0     # gossip renews at least every second; etcd leases every third of TTL
MAX_SKEW_MS = 1000.0


def cluster(self_name: str, problem: str, store: str, peer_count: int) -> Check:
    """The daemon-wide cluster state ListNodes reports (store reachable, no CIDR conflict)."""
    name = "cluster membership"
    if problem:
        return failed(FAMILY, name, self_name, problem,
                      "podnetd reports a cluster-wide problem: its store is unreachable or its "
                      "pod CIDR conflicts with another node's",
                      "fix what the problem names (etcd endpoints and certificates, --peers, "
                      "--pod-cidr), then restart podnetd if it refused to start routing")
    return passed(FAMILY, name, self_name, f"{store} store, {peer_count} peers")


def parse_peer(name: str, underlay_ip: str, pod_cidr: str, mode: str, problem: str,
               vtep_mac: str, heartbeat_age: float) -> Peer | Check:
    """A Peer from ListNodes' fields, or a FAIL naming the field the doctor cannot use."""
    try:
        if ipaddress.ip_address(underlay_ip).version != 4:
            raise ValueError("not IPv4")
        net = ipaddress.ip_network(pod_cidr, strict=True)
        if net.version != 4 or net.num_addresses < 4:
            raise ValueError("not an IPv4 network of 4 addresses or more")
    except ValueError as e:
        return failed(FAMILY, "store record", name or "?",
                      f"underlay {underlay_ip!r}, pod CIDR {pod_cidr!r}: {e}",
                      "podnetd holds a record the doctor cannot probe",
                      "`podnetctl nodes` shows the record; fix the node's flags and restart it")
    return Peer(name, underlay_ip, pod_cidr, mode, problem, vtep_mac, heartbeat_age)


def peer_state(peer: Peer, store: str) -> Check:
    name = "store record"
    if peer.mode == "unreachable":
        return failed(FAMILY, name, peer.name, f"mode unreachable: {peer.problem or 'no reason given'}",
                      "podnetd on this node does not route to this peer: " + (peer.problem or "unknown"),
                      "read the problem above and `podnetctl nodes`; fix the underlay placement, "
                      "backend or CIDR conflict it names")
    if store == "static" and peer.heartbeat_age > STALE_HEARTBEAT_S:
        return failed(FAMILY, name, peer.name,
                      f"last heartbeat {peer.heartbeat_age:.1f} s ago",
                      f"podnetd on {peer.name} is silent (stopped, crashed, or its peer port "
                      "unreachable); the peer is withdrawn at --node-timeout",
                      f"check podnetd on {peer.name} (systemctl status podnetd) and that its "
                      "--listen port is reachable from here")
    detail = f"mode {peer.mode}, underlay {peer.underlay_ip}, pod CIDR {peer.pod_cidr}"
    if store == "static":
        detail += f", heartbeat {peer.heartbeat_age:.1f} s ago"
    if peer.problem:
        detail += f" (note: {peer.problem})"
    return passed(FAMILY, name, peer.name, detail)


def underlay(peer: Peer, reply: Reply | None, timeout: float) -> Check:
    name = "underlay reachability"
    what = f"ICMP echo to {peer.underlay_ip}: {describe(reply, timeout)}"
    if reply is not None and reply.kind == "echo-reply":
        return passed(FAMILY, name, peer.name, what)
    return failed(FAMILY, name, peer.name, what,
                  f"node {peer.name} does not answer on its underlay address {peer.underlay_ip}: "
                  "the node is down, its uplink is down, or a router/firewall between drops ICMP",
                  f"check that {peer.name} is up and its uplink holds {peer.underlay_ip} "
                  f"(`ip -br addr` there), then `ping {peer.underlay_ip}` from here; "
                  "allow ICMP between nodes")


def pod_path(peer: Peer, reply: Reply | None, underlay_ok: bool, source: str, timeout: float,
             route_hint: str = "") -> Check:
    """ICMP echo from the probe endpoint (a pod of this node) to the peer's pod gateway."""
    name = f"pod path ({peer.mode})"
    what = f"ICMP echo {source} -> {peer.gateway} ({peer.name}'s pod gateway): {describe(reply, timeout)}"
    if reply is not None and reply.kind == "echo-reply":
        return passed(FAMILY, name, peer.name, what)
    if not underlay_ok:
        cause = f"the underlay does not reach {peer.name} either (see its underlay check)"
        fix = f"fix the underlay to {peer.underlay_ip} first"
    elif route_hint:
        cause = route_hint
        fix = "remove the route that takes the peer's pod traffic, or fix the entries listed under drift"
    elif peer.mode == "vxlan":
        cause = (f"the underlay reaches {peer.name} but VXLAN traffic does not: its FDB or neighbour "
                 "entry is missing or wrong here or there, the VXLAN UDP port is filtered on the "
                 "way, or the peer has no route back to this node's pods")
        fix = ("see the vxlan and drift checks; allow the VXLAN UDP port between nodes; run the "
               f"doctor on {peer.name} too")
    else:
        cause = (f"the underlay reaches {peer.name} but pod traffic does not: a route is missing "
                 "or taken by another route here, forwarding is off, or the peer has no route back")
        fix = f"see the drift and node checks; run the doctor on {peer.name} too"
    return failed(FAMILY, name, peer.name, what, cause, fix)


def clock_skew(peer: Peer, reply: Reply | None) -> Check:
    name = "clock skew"
    if reply is None or reply.kind != "timestamp" or reply.skew_ms is None:
        return skipped(FAMILY, name, peer.name,
                       f"no ICMP timestamp reply from {peer.underlay_ip}: skew not measured")
    skew = reply.skew_ms
    what = f"{peer.name}'s clock is {skew:+.0f} ms from ours (ICMP timestamp, ±{reply.rtt_ms / 2:.0f} ms)"
    if abs(skew) <= MAX_SKEW_MS + reply.rtt_ms / 2:
        return passed(FAMILY, name, peer.name, what)
    return failed(FAMILY, name, peer.name, what,
                  "heartbeats carry wall clocks: a node whose clock is off ages out or outlives "
                  "its peers' view of it",
                  f"synchronise the clocks (chrony or systemd-timesyncd on {peer.name} and here)")
