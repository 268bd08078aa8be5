"""Verdicts on this node itself (pure): forwarding, rp_filter, br_netfilter, the bridge,
conntrack, the uplink's MTU and GSO limit."""
import ipaddress

from .model import Check, failed, passed, skipped

FAMILY = "node"
CONNTRACK_FULL = 0.9
VXLAN_OVERHEAD = 50


def ip_forward(value: str | None) -> Check:
    name = "IP forwarding"
    if value == "1":
        return passed(FAMILY, name, "", "net.ipv4.ip_forward = 1")
    return failed(FAMILY, name, "", f"net.ipv4.ip_forward = {value}",
                  "the node does not forward: pods reach nothing beyond their own bridge",
                  "sysctl -w net.ipv4.ip_forward=1 (podnetd sets it at start; something reset it)")


def rp_filter(paths: list[tuple[str, str, str | None, int]]) -> Check:
    """paths: (peer, device its pod traffic arrives on, device of the route back, effective
    rp_filter of the arrival device). Strict mode (1) drops what arrives where the route back
    does not lead."""
    name = "reverse path filter"
    broken = [(p, arrive, back) for p, arrive, back, mode in paths if mode == 1 and arrive != back]
    values = sorted({f"{arrive}={mode}" for _, arrive, _, mode in paths})
    if not broken:
        return passed(FAMILY, name, "", "rp_filter " + (", ".join(values) or "(no peers)")
                      + ": replies from every peer's pods pass")
    text = "; ".join(f"{p}'s pods arrive on {a} but the route back leads to {b or 'nowhere'}"
                     for p, a, b in broken)
    return failed(FAMILY, name, ", ".join(p for p, _, _ in broken), f"strict rp_filter: {text}",
                  "strict reverse path filtering drops packets whose source is routed out of "
                  "another interface",
                  "fix the route (see drift), or use loose mode: sysctl -w "
                  "net.ipv4.conf.<dev>.rp_filter=2")


def br_netfilter(loaded: bool, call_iptables: str | None, forward_drop: list[str]) -> Check:
    name = "br_netfilter"
    if not loaded:
        return passed(FAMILY, name, "", "not loaded: bridged pod traffic skips iptables")
    detail = f"loaded, bridge-nf-call-iptables = {call_iptables}"
    if call_iptables == "1" and forward_drop:
        return failed(FAMILY, name, "", detail + f"; forward chains with policy drop: {', '.join(forward_drop)}",
                      "bridged pod traffic traverses iptables FORWARD, whose drop policy (as "
                      "Docker sets it) drops pod-to-pod frames on the bridge",
                      "accept the cluster CIDR in that FORWARD chain, or set "
                      "net.bridge.bridge-nf-call-iptables=0 if kube-proxy is not used")
    return passed(FAMILY, name, "", detail + "; no forward chain drops by policy")


def bridge(name: str, link: dict | None, addresses: list[str], gateway: str, pod_cidr: str,
           pod_mtu: int) -> Check:
    check = "pod bridge"
    if link is None:
        return failed(FAMILY, check, name, f"bridge {name} does not exist",
                      "podnetd's bridge was deleted: no pod on this node has a network",
                      "restart podnetd (it recreates the bridge); pods need re-attaching")
    prefix = ipaddress.ip_network(pod_cidr, strict=False).prefixlen
    want = f"{gateway}/{prefix}"
    problems = []
    if not link.get("up"):
        problems.append("is down")
    if want not in addresses:
        problems.append(f"lacks the gateway address {want} (has {', '.join(addresses) or 'none'})")
    if link.get("mtu") != pod_mtu:
        problems.append(f"has MTU {link.get('mtu')}, pods use {pod_mtu}")
    detail = f"{name} up, {want}, MTU {link.get('mtu')}"
    if not problems:
        return passed(FAMILY, check, name, detail)
    return failed(FAMILY, check, name, f"{name} " + "; ".join(problems),
                  "the pods' gateway is not as podnetd made it",
                  f"restart podnetd, which restores {name}; `ip addr show {name}` shows it now")


def conntrack(count: int | None, maximum: int | None) -> Check:
    name = "conntrack table"
    if count is None or not maximum:
        return passed(FAMILY, name, "", "connection tracking is not loaded in this namespace")
    use = count / maximum
    detail = f"{count} of {maximum} entries ({use:.0%})"
    if use < CONNTRACK_FULL:
        return passed(FAMILY, name, "", detail)
    return failed(FAMILY, name, "", detail,
                  "a full conntrack table drops new connections ('nf_conntrack: table full' in dmesg)",
                  "raise net.netfilter.nf_conntrack_max, or find who opens so many connections")


def uplink(dev: str | None, mtu: int | None, gso: int | None, pod_mtu: int, pod_gso: int,
           vxlan_used: bool) -> Check:
    name = "uplink MTU and GSO"
    if dev is None:
        return failed(FAMILY, name, "", "no interface holds this node's underlay address",
                      "the underlay address moved or the uplink is gone",
                      "run the doctor in the node's network namespace; check `ip -br addr`: "
                      "podnetd's --node-ip must be on an interface")
    need = pod_mtu + (VXLAN_OVERHEAD if vxlan_used else 0)
    detail = (f"{dev} MTU {mtu}, GSO limit {gso}; pods MTU {pod_mtu}"
              + (" + 50 VXLAN" if vxlan_used else "") + f", GSO {pod_gso}")
    if mtu is not None and mtu < need:
        return failed(FAMILY, name, dev, detail,
                      f"pods send {pod_mtu}-byte packets that need {need} bytes on {dev}: they "
                      "are fragmented or dropped",
                      f"raise {dev}'s MTU to {need} or restart podnetd with --mtu "
                      f"{mtu - (VXLAN_OVERHEAD if vxlan_used else 0)}")
    if gso is not None and pod_gso > gso:
        return failed(FAMILY, name, dev, detail,
                      f"pods build {pod_gso}-byte GSO packets that {dev} takes only up to {gso}: "
                      "the kernel segments them in software, at a fraction of the throughput",
                      f"give {dev} gso_ipv4_max_size {pod_gso} or restart podnetd so pods get its limit")
    return passed(FAMILY, name, dev, detail)


def skew_summary(measured: int, total: int) -> Check | None:
    if total and not measured:
        return skipped(FAMILY, "clock skew", "", "no peer answered ICMP timestamp requests")
    return None
