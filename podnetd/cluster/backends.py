"""Routing backends behind one small interface, registered by name.

A backend turns (this node, a peer, the local underlay subnets) into the kernel entries that
make the peer's pod CIDR reachable. The entries are plain values (pure logic, unit-tested);
programming them is podnetd.cluster.routing's job.
"""
import dataclasses
import ipaddress

from .records import NodeRecord, vtep_ip

# The rtnetlink protocol number on every route podnetd installs: 0x6e ('n'), unused by
# iproute2's /etc/iproute2/rt_protos and by the well-known routing daemons (bird 12, zebra 11,
# babel 42, bgp 186..192). Routes with any other protocol are never touched.
ROUTE_PROTO = 0x6E


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str         # "fdb" | "neigh" | "route"
    node: str
    mode: str         # "host-gw" | "vxlan"
    destination: str  # fdb: peer VTEP MAC; neigh: peer VTEP IP; route: peer pod CIDR
    via: str          # fdb: peer underlay IP; neigh: peer VTEP MAC; route: gateway
    dev: str          # "" for host-gw routes (the kernel finds the underlay device)

    @property
    def key(self) -> tuple:
        """What identifies the entry in the kernel (its value may differ: then it is replaced)."""
        if self.kind == "route":
            return ("route", self.destination)
        if self.kind == "neigh":
            return ("neigh", self.dev, self.destination)
        return ("fdb", self.dev, self.destination)


# Installation order per peer: whatever a route needs exists before the route, so a packet
# never meets a route pointing at nothing. Removal runs in the reverse order.
KIND_ORDER = {"fdb": 0, "neigh": 1, "route": 2}


@dataclasses.dataclass(frozen=True)
class Context:
    self_record: NodeRecord
    local_subnets: tuple      # ipaddress.IPv4Network of the underlay, connected to this node
    vxlan_dev: str


class Backend:
    name = ""

    def mode_for(self, ctx: Context, peer: NodeRecord) -> tuple[str, str]:
        """(mode, problem): mode is "host-gw", "vxlan" or "unreachable"."""
        raise NotImplementedError

    def uses_vxlan(self) -> bool:
        return False


def on_same_subnet(ctx: Context, peer_ip: str) -> bool:
    ip = ipaddress.ip_address(peer_ip)
    return any(ip in net for net in ctx.local_subnets)


class HostGw(Backend):
    name = "host-gw"

    def mode_for(self, ctx, peer):
        if on_same_subnet(ctx, peer.underlay_ip):
            return "host-gw", ""
        return "unreachable", (f"{peer.underlay_ip} is not on this node's L2 subnet; host-gw "
                               f"cannot reach it (use --backend vxlan or auto)")


class Vxlan(Backend):
    name = "vxlan"

    def mode_for(self, ctx, peer):
        if not peer.vtep_mac:
            return "unreachable", "the node publishes no VTEP MAC (it runs --backend host-gw)"
        return "vxlan", ""

    def uses_vxlan(self):
        return True


class Auto(Backend):
    name = "auto"

    def mode_for(self, ctx, peer):
        if on_same_subnet(ctx, peer.underlay_ip):
            return "host-gw", ""
        return Vxlan().mode_for(ctx, peer)

    def uses_vxlan(self):
        return True


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (HostGw, Vxlan, Auto)}


def get(name: str) -> Backend:
    return BACKENDS[name]()


def entries_for(ctx: Context, peer: NodeRecord, mode: str) -> list[Entry]:
    if mode == "host-gw":
        return [Entry("route", peer.name, mode, peer.pod_cidr, peer.underlay_ip, "")]
    if mode == "vxlan":
        gw = vtep_ip(peer.pod_cidr)
        dev = ctx.vxlan_dev
        return [Entry("fdb", peer.name, mode, peer.vtep_mac.lower(), peer.underlay_ip, dev),
                Entry("neigh", peer.name, mode, gw, peer.vtep_mac.lower(), dev),
                Entry("route", peer.name, mode, peer.pod_cidr, gw, dev)]
    return []


def plan(ctx: Context, backend: Backend, peers: list[NodeRecord]) -> tuple[list[Entry], dict]:
    """Desired entries for all peers (in install order) and {peer name: (mode, problem)}."""
    entries: list[Entry] = []
    modes: dict[str, tuple[str, str]] = {}
    for peer in peers:
        mode, problem = backend.mode_for(ctx, peer)
        modes[peer.name] = (mode, problem)
        entries += entries_for(ctx, peer, mode)
    return sorted(entries, key=lambda e: KIND_ORDER[e.kind]), modes


def same(a: Entry | None, b: Entry) -> bool:
    """Whether the kernel entry a already is b (the kernel knows no node names)."""
    return a is not None and (a.key, a.via, a.dev) == (b.key, b.via, b.dev)


def diff(desired: list[Entry], actual: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """(to install in order, to remove in order) so that actual becomes desired."""
    want = {e.key: e for e in desired}
    have = {e.key: e for e in actual}
    install = [e for e in desired if not same(have.get(e.key), e)]
    remove = [e for k, e in have.items() if k not in want]
    return install, sorted(remove, key=lambda e: -KIND_ORDER[e.kind])
