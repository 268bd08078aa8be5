"""VXLAN device, permanent neighbours and FDB entries, and the underlay's addresses.

Flat, idempotent functions in the calling thread's network namespace (see ip_lib). The FDB
entries are NTF_SELF entries on the VXLAN device itself (like `bridge fdb ... self`), which
tell the device which underlay address a remote VTEP MAC lives behind.
"""
import socket

from . import ip_lib
from .errors import Exists, NotFound, translated
from .netns import ipr

NUD_PERMANENT = 0x80
NTF_SELF = 0x02


def vxlan_get(name: str) -> dict | None:
    """The device's link facts (ip_lib.link_get) plus vni/port/local/learning, or None when
    absent."""
    link = ip_lib.link_get(name)
    if link is not None and link["kind"] == "vxlan" and link["data"]:
        data = link["data"]
        link.update(vni=data.get("IFLA_VXLAN_ID"), port=data.get("IFLA_VXLAN_PORT"),
                    local=data.get("IFLA_VXLAN_LOCAL"),
                    learning=bool(data.get("IFLA_VXLAN_LEARNING")))
    return link


def vxlan_ensure(name: str, *, vni: int, port: int, local: str, mac: str, mtu: int) -> int:
    """Create the VXLAN device (learning off, no group: unicast only) or repair it; return its
    index. A device of that name with other vni/port/local is recreated (those cannot change)."""
    link = vxlan_get(name)
    if link is not None and (link["kind"] != "vxlan" or link.get("vni") != vni
                             or link.get("port") != port or link.get("local") != local
                             or link.get("learning")):
        if link["kind"] != "vxlan":
            raise Exists(f"create vxlan {name}: a link of kind {link['kind']} already has that name")
        ip_lib.link_delete(name)
        link = None
    if link is None:
        try:
            with translated(f"create vxlan {name} vni {vni} port {port} local {local}"):
                ipr().link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=port,
                           vxlan_local=local, vxlan_learning=0, mtu=mtu, address=mac)
        except Exists:
            pass
        link = vxlan_get(name)
        if link is None:
            raise NotFound(f"create vxlan {name}: it vanished right after creation")
    ip_lib.link_set(name, mtu=mtu if link["mtu"] != mtu else None,
                    mac=mac if (link["mac"] or "").lower() != mac.lower() else None,
                    up=True if not link["up"] else None)
    return link["index"]


def neigh_replace(dev: str, ip: str, mac: str) -> None:
    """A permanent IPv4 neighbour entry ip -> mac on dev."""
    index = ip_lib.link_index_of(dev)
    with translated(f"replace neighbour {ip} lladdr {mac} dev {dev}"):
        ipr().neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)


def neigh_delete(dev: str, ip: str) -> bool:
    """Delete the neighbour entry; False when it (or dev) was already gone."""
    try:
        index = ip_lib.link_index_of(dev)
        with translated(f"delete neighbour {ip} dev {dev}"):
            ipr().neigh("del", dst=ip, ifindex=index)
        return True
    except NotFound:
        return False


def neighbours(dev: str) -> list[dict]:
    """Permanent IPv4 neighbours of dev as {ip, mac}."""
    index = ip_lib.link_index(dev)
    if index is None:
        return []
    with translated(f"list neighbours of {dev}"):
        msgs = ipr().neigh("dump", ifindex=index, family=socket.AF_INET)
    return [{"ip": m.get_attr("NDA_DST"), "mac": (m.get_attr("NDA_LLADDR") or "").lower()}
            for m in msgs if m["ifindex"] == index and m["state"] & NUD_PERMANENT]


def fdb_replace(dev: str, mac: str, dst: str) -> None:
    """A permanent FDB entry on the vxlan device: frames to mac go to underlay address dst."""
    index = ip_lib.link_index_of(dev)
    with translated(f"replace fdb {mac} dst {dst} dev {dev}"):
        ipr().fdb("replace", ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT, flags=NTF_SELF)


def fdb_delete(dev: str, mac: str, dst: str) -> bool:
    """Delete the FDB entry; False when it (or dev) was already gone."""
    try:
        index = ip_lib.link_index_of(dev)
        with translated(f"delete fdb {mac} dst {dst} dev {dev}"):
            ipr().fdb("del", ifindex=index, lladdr=mac, dst=dst, flags=NTF_SELF)
        return True
    except NotFound:
        return False


def fdb_entries(dev: str) -> list[dict]:
    """The device's own FDB entries that have a remote dst, as {mac, dst}."""
    index = ip_lib.link_index(dev)
    if index is None:
        return []
    with translated(f"list fdb of {dev}"):
        msgs = ipr().fdb("dump", ifindex=index)
    return [{"mac": (m.get_attr("NDA_LLADDR") or "").lower(), "dst": m.get_attr("NDA_DST")}
            for m in msgs if m["ifindex"] == index and m.get_attr("NDA_DST")]


def ipv4_addresses() -> list[dict]:
    """Every IPv4 address on every link: {dev, ip, prefixlen}."""
    with translated("list addresses"):
        msgs = ipr().get_addr(family=socket.AF_INET)
    names = ip_lib.link_names()
    return [{"dev": names.get(m["index"]), "ip": m.get_attr("IFA_ADDRESS"), "prefixlen": m["prefixlen"]}
            for m in msgs]


def default_route_address() -> str | None:
    """The first IPv4 address of the interface carrying the default route."""
    dev = ip_lib.default_route_dev()
    if dev is None:
        return None
    for a in ipv4_addresses():
        if a["dev"] == dev:
            return a["ip"]
    return None

