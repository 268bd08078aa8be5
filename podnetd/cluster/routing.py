"""Programs backend entries into the kernel and reads back the ones podnetd owns.

Blocking (netlink); called from an executor thread. Owned state is: routes in the main table
with protocol ROUTE_PROTO, and the permanent neighbours and FDB entries of our own VXLAN
device. Nothing else is read as ours, so nothing else is ever removed, and nothing else is ever
replaced: a new route is created exclusively (NLM_F_EXCL), and a route to a peer's pod CIDR
that already exists with another protocol (an admin's static route, a routing daemon's) is left
alone and reported as foreign.
"""
import ipaddress
import logging

from ..kernel import ip_lib, vxlan
from ..kernel.errors import Exists, KernelError
from .backends import KIND_ORDER, ROUTE_PROTO, Entry, diff, same

log = logging.getLogger(__name__)


def owned_entries(vxlan_dev: str) -> list[Entry]:
    """Entries in the kernel that podnetd made (node and mode as far as the kernel tells)."""
    found: list[Entry] = []
    for f in vxlan.fdb_entries(vxlan_dev):
        found.append(Entry("fdb", "", "vxlan", f["mac"], f["dst"], vxlan_dev))
    for n in vxlan.neighbours(vxlan_dev):
        found.append(Entry("neigh", "", "vxlan", n["ip"], n["mac"], vxlan_dev))
    for r in ip_lib.routes(proto=ROUTE_PROTO):
        if r["proto"] != ROUTE_PROTO or r["dst"] == "default":
            continue
        on_vxlan = r["dev"] == vxlan_dev
        found.append(Entry("route", "", "vxlan" if on_vxlan else "host-gw", r["dst"],
                           r["gateway"] or "", vxlan_dev if on_vxlan else ""))
    return found


# iproute2's names for the protocol numbers (/etc/iproute2/rt_protos and rtnetlink.h)
PROTO_NAMES = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra",
               10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk",
               16: "dhcp", 42: "babel", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip",
               192: "eigrp"}


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def foreign_routes(dsts) -> dict[str, str]:
    """{dst: protocol name} of the main table's routes to dsts that podnetd did not make."""
    wanted = set(dsts)
    if not wanted:
        return {}
    return {r["dst"]: proto_name(r["proto"]) for r in ip_lib.routes()
            if r["dst"] in wanted and r["proto"] != ROUTE_PROTO}


def install(e: Entry, replace: bool = True) -> None:
    """Program e. A route is replaced only when replace (ours is there, with other values);
    otherwise it is created exclusively: errors.Exists when any route to its destination is."""
    if e.kind == "fdb":
        vxlan.fdb_replace(e.dev, e.destination, e.via)
    elif e.kind == "neigh":
        vxlan.neigh_replace(e.dev, e.destination, e.via)
    else:
        how = ip_lib.route_replace if replace else ip_lib.route_add
        if e.dev:
            how(e.destination, gateway=e.via, dev=e.dev, onlink=True, proto=ROUTE_PROTO)
        else:
            how(e.destination, gateway=e.via, proto=ROUTE_PROTO)


def remove(e: Entry) -> None:
    if e.kind == "fdb":
        vxlan.fdb_delete(e.dev, e.destination, e.via)
    elif e.kind == "neigh":
        vxlan.neigh_delete(e.dev, e.destination)
    else:
        # proto in the request: the kernel deletes only a route with our protocol number.
        ip_lib.route_delete(e.destination, proto=ROUTE_PROTO)


def sync(desired: list[Entry], vxlan_dev: str, allow_removal: bool) -> dict:
    """Make the kernel hold desired (in order), removing owned entries not desired when
    allow_removal. Keeps going past failures; returns counts, the errors and the desired routes
    left alone because a route we do not own holds their destination ({dst: protocol})."""
    owned = owned_entries(vxlan_dev)
    to_install, to_remove = diff(desired, owned)
    owned_routes = {e.destination for e in owned if e.kind == "route"}
    # A route to create (none of ours there) whose destination someone else routes: not ours.
    foreign = foreign_routes(e.destination for e in to_install
                             if e.kind == "route" and e.destination not in owned_routes)
    errors: list[str] = []
    installed = removed = 0
    if allow_removal:
        # Routes first (reverse install order), so no route is left pointing at a removed neighbour.
        for e in to_remove:
            try:
                remove(e)
                removed += 1
            except KernelError as err:
                errors.append(f"remove {e.kind} {e.destination}: {err}")
    failed_nodes: set[str] = set()
    for e in to_install:
        if e.node in failed_nodes:
            continue  # never a route whose fdb/neigh could not be made
        if e.kind == "route" and e.destination in foreign:
            continue
        try:
            install(e, replace=e.kind != "route" or e.destination in owned_routes)
            installed += 1
        except Exists:
            # made by someone else between our listing and our add (NLM_F_EXCL said so)
            foreign.update(foreign_routes([e.destination]) or {e.destination: "unknown"})
        except KernelError as err:
            failed_nodes.add(e.node)
            errors.append(f"install {e.kind} {e.destination} for {e.node}: {err}")
    return {"installed": installed, "removed": removed, "errors": errors, "foreign": foreign}


def present(desired: list[Entry], vxlan_dev: str) -> list[tuple[Entry, bool]]:
    have = {e.key: e for e in owned_entries(vxlan_dev)}
    return [(e, same(have.get(e.key), e)) for e in desired]


def underlay(node_ip: str) -> dict:
    """The underlay device holding node_ip: {dev, mtu, subnets, gso_limit}."""
    addrs = vxlan.ipv4_addresses()
    mine = [a for a in addrs if a["ip"] == node_ip]
    if not mine:
        raise KernelError(f"underlay: no interface holds {node_ip}")
    dev = mine[0]["dev"]
    link = ip_lib.link_get(dev)
    subnets = tuple(ipaddress.ip_interface(f"{a['ip']}/{a['prefixlen']}").network
                    for a in addrs if a["dev"] == dev and a["prefixlen"] < 32)
    return {"dev": dev, "mtu": (link or {}).get("mtu") or 1500, "subnets": subnets,
            "gso_limit": ip_lib.link_gso_limit(dev)}


def remove_all(vxlan_dev: str) -> list[str]:
    """Remove every owned entry and the VXLAN device; keep going past failures."""
    errors = []
    for e in sorted(owned_entries(vxlan_dev), key=lambda e: -KIND_ORDER[e.kind]):
        try:
            remove(e)
        except KernelError as err:
            errors.append(str(err))
    link = vxlan.vxlan_get(vxlan_dev)
    if link is not None and link["kind"] == "vxlan":
        try:
            ip_lib.link_delete(vxlan_dev)
        except KernelError as err:
            errors.append(str(err))
    return errors
