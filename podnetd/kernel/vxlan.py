"""VXLAN device, permanent neighbours and FDB entries, and the underlay's addresses.

Flat, idempotent functions in the calling thread's network namespace (see ip_lib). The FDB
entries are NTF_SELF entries on the VXLAN device itself (like `bridge fdb ... self`), which
tell the device which underlay address a remote VTEP MAC lives behind.
"""
import socket

from pyroute2.netlink.exceptions import NetlinkError

from . import ip_lib
from .errors import Exists, KernelError, NotFound, from_errno
from .netns import ipr

NUD_PERMANENT = 0x80
NTF_SELF = 0x02


def vxlan_get(name: str) -> dict | None:
    """The device's link facts plus vni/port/local/learning, or None when absent."""
    try:
        msgs = ipr().link("get", ifname=name)
    except NetlinkError as e:
        err = from_errno(e.code, f"get link {name}")
        if isinstance(err, NotFound):
            return None
        raise err from None
    if not msgs:
        return None
    link = ip_lib._link_dict(msgs[0])
    info = msgs[0].get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    if link["kind"] == "vxlan" and data is not None:
        link.update(vni=data.get_attr("IFLA_VXLAN_ID"), port=data.get_attr("IFLA_VXLAN_PORT"),
                    local=data.get_attr("IFLA_VXLAN_LOCAL"),
                    learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")))
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
            ipr().link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=port,
                       vxlan_local=local, vxlan_learning=0, mtu=mtu, address=mac)
        except NetlinkError as e:
            err = from_errno(e.code, f"create vxlan {name} vni {vni} port {port} local {local}")
            if not isinstance(err, Exists):
                raise err from None
        link = vxlan_get(name)
        if link is None:
            raise NotFound(f"create vxlan {name}: it vanished right after creation")
    ip_lib.link_set(name, mtu=mtu if link["mtu"] != mtu else None,
                    mac=mac if (link["mac"] or "").lower() != mac.lower() else None,
                    up=True if not link["up"] else None)
    return link["index"]


def neigh_replace(dev: str, ip: str, mac: str) -> None:
    """A permanent IPv4 neighbour entry ip -> mac on dev."""
    index = ip_lib._require_index(dev)
    try:
        ipr().neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)
    except NetlinkError as e:
        raise from_errno(e.code, f"replace neighbour {ip} lladdr {mac} dev {dev}") from None


def neigh_delete(dev: str, ip: str) -> bool:
    index = ip_lib.link_index(dev)
    if index is None:
        return False
    try:
        ipr().neigh("del", dst=ip, ifindex=index)
        return True
    except NetlinkError as e:
        err = from_errno(e.code, f"delete neighbour {ip} dev {dev}")
        if isinstance(err, NotFound):
            return False
        raise err from None


def neighbours(dev: str) -> list[dict]:
    """Permanent IPv4 neighbours of dev as {ip, mac}."""
    index = ip_lib.link_index(dev)
    if index is None:
        return []
    try:
        msgs = ipr().neigh("dump", ifindex=index, family=socket.AF_INET)
    except NetlinkError as e:
        raise from_errno(e.code, f"list neighbours of {dev}") from None
    return [{"ip": m.get_attr("NDA_DST"), "mac": (m.get_attr("NDA_LLADDR") or "").lower()}
            for m in msgs if m["ifindex"] == index and m["state"] & NUD_PERMANENT]


def fdb_replace(dev: str, mac: str, dst: str) -> None:
    """A permanent FDB entry on the vxlan device: frames to mac go to underlay address dst."""
    index = ip_lib._require_index(dev)
    try:
        ipr().fdb("replace", ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT, flags=NTF_SELF)
    except NetlinkError as e:
        raise from_errno(e.code, f"replace fdb {mac} dst {dst} dev {dev}") from None


def fdb_delete(dev: str, mac: str, dst: str) -> bool:
    index = ip_lib.link_index(dev)
    if index is None:
        return False
    try:
        ipr().fdb("del", ifindex=index, lladdr=mac, dst=dst, flags=NTF_SELF)
        return True
    except NetlinkError as e:
        err = from_errno(e.code, f"delete fdb {mac} dst {dst} dev {dev}")
        if isinstance(err, NotFound):
            return False
        raise err from None


def fdb_entries(dev: str) -> list[dict]:
    """The device's own FDB entries that have a remote dst, as {mac, dst}."""
    index = ip_lib.link_index(dev)
    if index is None:
        return []
    try:
        msgs = ipr().fdb("dump", ifindex=index)
    except NetlinkError as e:
        raise from_errno(e.code, f"list fdb of {dev}") from None
    return [{"mac": (m.get_attr("NDA_LLADDR") or "").lower(), "dst": m.get_attr("NDA_DST")}
            for m in msgs if m["ifindex"] == index and m.get_attr("NDA_DST")]


def ipv4_addresses() -> list[dict]:
    """Every IPv4 address on every link: {dev, ip, prefixlen}."""
    try:
        msgs = ipr().get_addr(family=socket.AF_INET)
    except NetlinkError as e:
        raise from_errno(e.code, "list addresses") from None
    names = {link["index"]: link["name"] for link in ip_lib.links()}
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


__all__ = ["KernelError"]
