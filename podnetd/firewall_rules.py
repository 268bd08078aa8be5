"""What podnetd's two nftables tables should hold (pure: text in, text out; no kernel access).

- `bridge podnet`, in every mode: a frame entering the bridge from a pod port (host veths are
  named pn…) passes only with the pod's own IPv4 address (set `pods`: port . address, from the
  IPAM records; for ARP the sender address) and the port's own MAC (set `pod_macs`: the MAC
  podnet gave the pod, plus at most one MAC the pod took later, e.g. set by a chained `tuning`
  plugin, learned from its first frame if no other pod and not the node has it: `macs_taken`).
  A pod's first frame settles its MAC (port in `ports_settled`): after it, no other. Pods acting as DHCP servers, IPv6 (router
  advertisements, NS/NA, DHCPv6: podnet speaks no IPv6 yet), 802.1Q tags and every other
  ethertype are dropped. No pod code runs before its CNI chain is done (the pause process sends
  nothing), so the MAC learned is the one the chain left.
- `inet podnet`, in every mode: an input hook that limits what pods may send to the node itself
  (its gateway address, underlay address, anything listening on any of its addresses): replies
  to connections the node opened (the runtime's probes) and ICMP echo to the gateway, nothing
  else. In cluster mode it also masquerades pod traffic leaving the cluster CIDR, applies the
  same limit to pods of other nodes (their sources lie in the cluster CIDR), and, with VXLAN,
  accepts VXLAN packets only from the underlay addresses in set `vxlan_peers`, before
  decapsulation.

Every value put into a rule or an element is validated here first: some (peers' underlay
addresses) come from other nodes, and nft text must never be built from unchecked input.
"""
import dataclasses
import ipaddress
import re

TABLE = "podnet"
PODS_SET = "pods"                    # bridge: port . IPv4
POD_MACS_SET = "pod_macs"            # bridge: port . MAC (given, or learned once)
PORTS_SETTLED_SET = "ports_settled"  # bridge: ports whose MAC is settled (by a first frame)
MACS_TAKEN_SET = "macs_taken"        # bridge: every MAC in pod_macs, and the bridge's
VXLAN_PEERS_SET = "vxlan_peers"      # inet: underlay addresses of VXLAN peers
HOST_VETH_PATTERN = "pn*"  # endpoints.HOST_VETH_PREFIX + "*"

_IFNAME = re.compile(r"[A-Za-z0-9_.@:-]{1,15}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class RuleInputError(ValueError):
    """A value that cannot be put into an nft rule or set element."""


def ifname(name: str, what: str = "interface name") -> str:
    if not isinstance(name, str) or not _IFNAME.fullmatch(name):
        raise RuleInputError(f"{what} {name!r}: not usable in an nftables rule")
    return name


def ipv4(text: str, what: str = "address") -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise RuleInputError(f"{what} {text!r}: not an IPv4 address") from None


def ipv4_net(text: str, what: str = "network") -> str:
    try:
        return str(ipaddress.IPv4Network(text))
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError):
        raise RuleInputError(f"{what} {text!r}: not an IPv4 network") from None


def mac(text: str, what: str = "MAC") -> str:
    value = text.lower() if isinstance(text, str) else ""
    if not _MAC.fullmatch(value):
        raise RuleInputError(f"{what} {text!r}: not a MAC address")
    return value


@dataclasses.dataclass(frozen=True)
class ClusterRules:
    """The cluster's part of `inet podnet` (given by cluster/wire.py)."""
    cluster_cidr: str
    vxlan_port: int | None = None  # None: no VXLAN on this node, no VXLAN rule


@dataclasses.dataclass(frozen=True)
class Policy:
    bridge: str
    gateway: str
    pod_cidr: str
    bridge_mac: str = ""  # never learned by a pod: the gateway's MAC
    cluster: ClusterRules | None = None
    # The one place to let pods reach DNS on their gateway (UDP and TCP 53), off until podnet
    # serves DNS there; then also "later, DNS" in docs/architecture.md.
    dns_to_gateway: bool = False

    def __post_init__(self):
        ifname(self.bridge, "bridge")
        if self.bridge_mac:
            mac(self.bridge_mac, "bridge MAC")
        ipv4(self.gateway, "gateway")
        ipv4_net(self.pod_cidr, "pod CIDR")
        if self.cluster is not None:
            ipv4_net(self.cluster.cluster_cidr, "cluster CIDR")
            port = self.cluster.vxlan_port
            if port is not None and not (isinstance(port, int) and 0 < port < 65536):
                raise RuleInputError(f"VXLAN port {port!r}: not a port number")


# -- set elements ---------------------------------------------------------------------------

# What each set holds: the validator of each part of an element.
SET_TYPES = {
    PODS_SET: (ifname, ipv4),
    POD_MACS_SET: (ifname, mac),
    PORTS_SETTLED_SET: (ifname,),
    MACS_TAKEN_SET: (mac,),
    VXLAN_PEERS_SET: (ipv4,),
}


def element(set_name: str, value) -> tuple | str:
    """value validated for set_name: a string for a single type, a tuple for a concatenation."""
    kinds = SET_TYPES[set_name]
    parts = value if isinstance(value, tuple) else (value,)
    if len(parts) != len(kinds):
        raise RuleInputError(f"{set_name} element {value!r}: not {len(kinds)} parts")
    checked = tuple(kind(part, f"{set_name} element") for kind, part in zip(kinds, parts))
    return checked if len(checked) > 1 else checked[0]


def element_text(set_name: str, value) -> str:
    """An element in nft syntax (interface names quoted), validated."""
    checked = element(set_name, value)
    parts = checked if isinstance(checked, tuple) else (checked,)
    return " . ".join(f'"{p}"' if kind is ifname else p
                      for kind, p in zip(SET_TYPES[set_name], parts))


def elements_text(set_name: str, values) -> list[str]:
    return [element_text(set_name, v) for v in sorted(values)]


def record_elements(record) -> dict[str, set] | None:
    """What an IPAM record puts into the bridge table's sets ({set: {element}}); None for a
    record not (yet) attached."""
    if not (record.host_ifname and record.mac and record.address):
        return None
    port = ifname(record.host_ifname, "pod port")
    pod_mac = mac(record.mac, "pod MAC")
    return {PODS_SET: {(port, ipv4(record.address.split("/")[0], "pod address"))},
            POD_MACS_SET: {(port, pod_mac)}, MACS_TAKEN_SET: {pod_mac}}


# -- tables ---------------------------------------------------------------------------------

def _set(name: str, type_: str, elements, flags: str = "") -> str:
    listed = elements_text(name, elements)
    elems = f"    elements = {{ {', '.join(listed)} }}\n" if listed else ""
    return f"  set {name} {{\n    type {type_}\n{flags}{elems}  }}\n"


BRIDGE_SETS = (PODS_SET, POD_MACS_SET, PORTS_SETTLED_SET, MACS_TAKEN_SET)


def bridge_body(policy: Policy, sets: dict) -> str:
    """`table bridge podnet`: per-port anti-spoofing. sets: {set name: elements}."""
    dynamic = "    flags dynamic\n"  # the packet path adds a learned MAC
    rules = [
        'ether type ip udp sport 67 counter drop comment "no DHCP server in a pod"',
        "ether type ip6 counter drop comment "
        '"no IPv6 from pods (RA, NS/NA, DHCPv6) until podnet speaks it"',
        'ether type != { ip, arp } counter drop comment "802.1Q tag or another ethertype"',
        f'ether type ip iifname . ip saddr != @{PODS_SET} counter drop comment "forged IPv4 source"',
        f"ether type arp iifname . arp saddr ip != @{PODS_SET} counter drop "
        'comment "forged ARP sender address"',
        f"iifname . ether saddr @{POD_MACS_SET} iifname @{PORTS_SETTLED_SET} jump pod_mac",
        f"iifname . ether saddr @{POD_MACS_SET} add @{PORTS_SETTLED_SET} {{ iifname }} jump pod_mac "
        "comment \"a pod's first frame settles its MAC\"",
        f'iifname @{PORTS_SETTLED_SET} counter drop comment "forged MAC: the port has its MAC"',
        f"ether saddr @{MACS_TAKEN_SET} counter drop "
        "comment \"forged MAC: another pod's or the node's\"",
        f"add @{POD_MACS_SET} {{ iifname . ether saddr }} add @{PORTS_SETTLED_SET} {{ iifname }} "
        f"add @{MACS_TAKEN_SET} {{ ether saddr }} jump pod_mac "
        'comment "a MAC set after attach (a chained tuning plugin): learned once"',
    ]
    return (
        _set(PODS_SET, "ifname . ipv4_addr", sets.get(PODS_SET, ()))
        + _set(POD_MACS_SET, "ifname . ether_addr", sets.get(POD_MACS_SET, ()), dynamic)
        + _set(PORTS_SETTLED_SET, "ifname", sets.get(PORTS_SETTLED_SET, ()), dynamic)
        + _set(MACS_TAKEN_SET, "ether_addr", sets.get(MACS_TAKEN_SET, ()), dynamic)
        + "  chain prerouting {\n"
        "    type filter hook prerouting priority -200; policy accept;\n"
        f'    iifname "{HOST_VETH_PATTERN}" jump from_pod\n'
        "  }\n"
        "  chain from_pod {\n"
        + "".join(f"    {r}\n" for r in rules)
        + "  }\n"
        "  chain pod_mac {\n"
        f"    ether type arp iifname . arp saddr ether != @{POD_MACS_SET} counter drop "
        'comment "forged ARP sender MAC"\n'
        "    accept\n"
        "  }")


def inet_body(policy: Policy, vxlan_peers) -> str:
    """`table inet podnet`: what pods may send to this node, VXLAN senders, egress masquerade."""
    cluster = policy.cluster
    gateway = ipv4(policy.gateway)
    out = []
    if cluster is not None and cluster.vxlan_port is not None:
        out.append(_set(VXLAN_PEERS_SET, "ipv4_addr", vxlan_peers))
    out.append("  chain input {\n"
               "    type filter hook input priority filter; policy accept;\n")
    if cluster is not None and cluster.vxlan_port is not None:
        out.append(f"    udp dport {cluster.vxlan_port} ip saddr != @{VXLAN_PEERS_SET} counter drop "
                   'comment "VXLAN only from known peers"\n')
    # Pod traffic for the node enters through the bridge (a pod port is a bridge port; the
    # IP stack sees the bridge device); a remote pod's arrives with its own source address.
    out.append(f'    iifname "{ifname(policy.bridge)}" jump pod_to_node\n')
    if cluster is not None:
        out.append(f"    iif != lo ip saddr {ipv4_net(cluster.cluster_cidr)} jump pod_to_node\n")
    out.append("  }\n"
               "  chain pod_to_node {\n"
               '    ct state established,related accept comment "replies to the node: probes"\n'
               f"    ip daddr {gateway} icmp type echo-request accept\n")
    if policy.dns_to_gateway:
        out.append(f"    ip daddr {gateway} udp dport 53 accept\n"
                   f"    ip daddr {gateway} tcp dport 53 accept\n")
    out.append("    meta l4proto tcp counter reject with tcp reset\n"
               "    counter reject with icmpx admin-prohibited\n"
               "  }")
    if cluster is not None:
        cluster_cidr, pod_cidr = ipv4_net(cluster.cluster_cidr), ipv4_net(policy.pod_cidr)
        out.append("\n  chain postrouting {\n"
                   "    type nat hook postrouting priority srcnat; policy accept;\n"
                   f"    ip saddr {cluster_cidr} ip daddr {cluster_cidr} return\n"
                   f"    ip saddr {pod_cidr} ip daddr != {cluster_cidr} masquerade\n"
                   "  }")
    return "".join(out)


# -- reading back (nftables JSON) -----------------------------------------------------------

def _without_volatile(value):
    """A JSON value without what changes by itself: handles and counter values."""
    if isinstance(value, dict):
        return {k: ("*" if k == "counter" else _without_volatile(v))
                for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def structure(objects: list[dict]) -> list:
    """A table's listing (nft JSON objects) without set elements, handles or counter values:
    its chains, rules and set types, to compare with what we wrote."""
    out = []
    for obj in objects:
        if "set" in obj:
            obj = {"set": {k: v for k, v in obj["set"].items() if k != "elem"}}
        out.append(_without_volatile(obj))
    return out


def listed_elements(objects: list[dict], set_name: str) -> set:
    """The elements of set_name in a table's listing: addresses as strings, concatenations as
    (port, MAC, IPv4) tuples; elements we could not have written are returned as text, so they
    are found extra and removed."""
    found = set()
    for obj in objects:
        s = obj.get("set")
        if not isinstance(s, dict) or s.get("name") != set_name:
            continue
        for elem in s.get("elem") or []:
            if isinstance(elem, dict) and "elem" in elem:  # {"elem": {"val": ..., "timeout": ...}}
                elem = elem["elem"].get("val")
            if isinstance(elem, dict) and isinstance(elem.get("concat"), list):
                found.add(tuple(str(v) for v in elem["concat"]))
            elif isinstance(elem, str):
                found.add(elem)
    return found
