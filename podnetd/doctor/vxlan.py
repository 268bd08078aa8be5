"""VXLAN: did the probe leave the underlay encapsulated as it should (pure)?"""
import dataclasses

from .model import Check, Peer, failed, passed, skipped

FAMILY = "vxlan"


@dataclasses.dataclass(frozen=True)
class Encap:
    """One captured VXLAN packet carrying a doctor probe."""
    outer_src: str
    outer_dst: str
    dport: int
    vni: int
    inner_dst: str


@dataclasses.dataclass(frozen=True)
class Device:
    """This node's VXLAN device as the kernel has it."""
    name: str
    vni: int
    port: int
    local: str
    underlay_dev: str


def verdict(peer: Peer, dev: Device | None, captured: list[Encap], fdb: list[dict],
            neigh: list[dict], capture_error: str = "", route_hint: str = "") -> Check:
    name = "encapsulation"
    if dev is None:
        return failed(FAMILY, name, peer.name, "this node has no VXLAN device",
                      "podnetd routes this peer over VXLAN but its device is gone",
                      "restart podnetd (it recreates the device), and check its log")
    if capture_error:
        return skipped(FAMILY, name, peer.name, f"no capture on {dev.underlay_dev}: {capture_error}")
    mine = [c for c in captured if c.inner_dst == peer.gateway]
    want = f"{dev.local} -> {peer.underlay_ip} UDP {dev.port} VNI {dev.vni}"
    good = [c for c in mine if (c.outer_src, c.outer_dst, c.dport, c.vni)
            == (dev.local, peer.underlay_ip, dev.port, dev.vni)]
    if good:
        return passed(FAMILY, name, peer.name, f"probe to {peer.gateway} seen on {dev.underlay_dev} "
                                               f"as {want}")
    if mine:
        c = mine[0]
        seen = f"{c.outer_src} -> {c.outer_dst} UDP {c.dport} VNI {c.vni}"
        if c.outer_dst != peer.underlay_ip:
            cause = (f"the FDB entry for {peer.name}'s VTEP MAC {peer.vtep_mac} sends to "
                     f"{c.outer_dst}, not to its underlay address {peer.underlay_ip}")
        else:
            cause = "the VXLAN device's port or VNI is not the one podnet configured"
        return failed(FAMILY, name, peer.name, f"probe to {peer.gateway} left as {seen}, expected {want}",
                      cause, f"podnetd repairs its entries at the next reconcile; "
                             f"`bridge fdb show dev {dev.name}` shows the entries now")
    fdb_dst = {f["mac"].lower(): f["dst"] for f in fdb}.get(peer.vtep_mac.lower())
    neigh_mac = {n["ip"]: n["mac"].lower() for n in neigh}.get(peer.vtep_ip)
    if route_hint:
        cause = route_hint + ", not the VXLAN device"
    elif neigh_mac is None:
        cause = (f"the neighbour entry {peer.vtep_ip} -> {peer.vtep_mac} on {dev.name} is missing: "
                 "the kernel cannot address the peer's VTEP")
    elif neigh_mac != peer.vtep_mac.lower():
        cause = (f"the neighbour entry for {peer.vtep_ip} has MAC {neigh_mac}, not {peer.name}'s "
                 f"VTEP MAC {peer.vtep_mac}")
    elif fdb_dst is None:
        cause = (f"the FDB entry {peer.vtep_mac} -> {peer.underlay_ip} on {dev.name} is missing: "
                 "frames for the peer's VTEP are dropped (learning is off, no default destination)")
    elif fdb_dst != peer.underlay_ip:
        cause = f"the FDB entry for {peer.vtep_mac} sends to {fdb_dst}, not to {peer.underlay_ip}"
    else:
        cause = (f"the probe never reached {dev.name}: the route to {peer.pod_cidr} does not go "
                 "through it, or the probe was dropped before (see drift and node checks)")
    return failed(FAMILY, name, peer.name,
                  f"no VXLAN packet for {peer.gateway} left {dev.underlay_dev} (expected {want})",
                  cause, "podnetd repairs its entries at the next reconcile (--reconcile-interval); "
                         f"compare `bridge fdb show dev {dev.name}` and `ip neigh show dev {dev.name}` "
                         "with `podnetctl routes`")
