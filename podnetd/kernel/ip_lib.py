"""Links, addresses and routes, in the calling thread's network namespace.

Every function is flat (plain values in and out), idempotent on "exists"/"not found" where
that makes sense, and raises errors.KernelError subclasses with context instead of
NetlinkError.
"""
import contextlib
import ipaddress
import socket

from pyroute2.netlink.exceptions import NetlinkError

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from . import rtnl
from .rtnl import LEGACY_GSO_MAX_SIZE  # noqa: F401 - part of this layer's interface
from .errors import Exists, NotFound, from_errno
from .netns import ipr

IFF_UP = 0x1


@contextlib.contextmanager
def _netlink(what: str):
    try:
        yield
    except NetlinkError as e:
        raise from_errno(e.code, what) from None


def _link_dict(msg) -> dict:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    return {
        "index": msg["index"],
        "name": msg.get_attr("IFLA_IFNAME"),
        "kind": kind,
        "mtu": msg.get_attr("IFLA_MTU"),
        "mac": msg.get_attr("IFLA_ADDRESS"),
        "master": msg.get_attr("IFLA_MASTER") or 0,
        "up": bool(msg["flags"] & IFF_UP),
        "operstate": msg.get_attr("IFLA_OPERSTATE"),
    }


def link_get(name: str) -> dict | None:
    """The link's facts, or None when there is no such link."""
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    try:
        (reply,) = rtnl.transact([(msg, rtnl.RTM_GETLINK, rtnl.REQUEST, f"get link {name}")])
    except NotFound:
        return None
    found = ifinfmsg(reply[0])
    found.decode()
    return _link_dict(found)


def link_index(name: str) -> int | None:
    link = link_get(name)
    return link["index"] if link else None


def links(kind: str | None = None, master: int | None = None) -> list[dict]:
    with _netlink("list links"):
        found = [_link_dict(m) for m in ipr().get_links()]
    return [link for link in found
            if (kind is None or link["kind"] == kind) and (master is None or link["master"] == master)]


def link_set(name: str, *, up: bool | None = None, mtu: int | None = None,
             master: int | None = None, mac: str | None = None) -> None:
    changes: dict = {}
    if mtu is not None:
        changes["mtu"] = mtu
    if master is not None:
        changes["master"] = master
    if mac is not None:
        changes["address"] = mac
    if up is not None:
        changes["state"] = "up" if up else "down"
    if not changes:
        return
    with _netlink(f"set link {name} {changes}"):
        ipr().link("set", ifname=name, **changes)


def link_delete(name: str) -> bool:
    """Delete a link; False when it was already gone."""
    try:
        rtnl.delete_link(name)
        return True
    except NotFound:
        return False


def bridge_ensure(name: str, *, mtu: int, mac: str) -> int:
    """Create the bridge if missing, fix mtu/mac/state if drifted; return its index.

    The MAC is pinned so the bridge does not take a new one each time ports come and go
    (which would flush every pod's neighbour cache entry for the gateway).
    """
    link = link_get(name)
    if link is None:
        try:
            with _netlink(f"create bridge {name}"):
                ipr().link("add", ifname=name, kind="bridge", mtu=mtu, address=mac)
        except Exists:
            pass
        link = link_get(name)
        if link is None:
            raise NotFound(f"create bridge {name}: it vanished right after creation")
    elif link["kind"] != "bridge":
        raise Exists(f"create bridge {name}: a link of kind {link['kind']} already has that name")
    link_set(name, mtu=mtu if link["mtu"] != mtu else None,
             mac=mac if (link["mac"] or "").lower() != mac.lower() else None,
             up=True if not link["up"] else None)
    return link["index"]


def veth_create(host_name: str, peer_name: str, peer_netns_fd: int, *, mtu: int,
                master: int, host_mac: str, peer_mac: str, gso_limit: int | None = None) -> None:
    """Create a veth pair with the host end up on master and the peer created directly inside
    the namespace behind peer_netns_fd (no move, no rename). gso_limit, when given, is the
    host end's IPv4 GSO/GRO limit (the peer's is set by pod_interface_setup)."""
    rtnl.create_veth(host_name, peer_name, peer_netns_fd, mtu, master, host_mac, peer_mac,
                     gso_limit)


def pod_interface_setup(ifname: str, address: str, gateway: str,
                        gso_limit: int | None = None) -> dict:
    """In the pod's netns: lo and ifname up, the address, a default route via gateway, and
    the IPv4 GSO/GRO limit when one is given. Returns ifname's facts (index, mac, ...)."""
    iface = ipaddress.ip_interface(address)
    return rtnl.configure_interface(ifname, str(iface.ip), iface.network.prefixlen, gateway,
                                    gso_limit)


def link_gso_limit(name: str) -> int:
    """The largest IPv4 GSO packet the link takes (its gso_ipv4_max_size; 64 KiB on kernels
    before 6.3, which have no BIG TCP for IPv4)."""
    return rtnl.get_link(name)["gso_ipv4_max_size"]


def link_set_gso_limit(name: str, size: int) -> None:
    """Set the link's IPv4 GSO and GRO limits (gso/gro_ipv4_max_size)."""
    rtnl.set_gso_limit(name, size)


def addr_add(name: str, cidr: str) -> None:
    """Add an address (idempotent when it is already there)."""
    iface = ipaddress.ip_interface(cidr)
    index = _require_index(name)
    try:
        with _netlink(f"add address {cidr} to {name}"):
            ipr().addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except Exists:
        pass


def addrs(name: str, family: int = socket.AF_INET) -> list[str]:
    index = _require_index(name)
    with _netlink(f"list addresses of {name}"):
        msgs = ipr().get_addr(index=index, family=family)
    return [f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}" for m in msgs]


def route_replace(dst: str, *, gateway: str | None = None, dev: str | None = None,
                  onlink: bool = False, proto: int | None = None, src: str | None = None,
                  table: int | None = None, mtu: int | None = None) -> None:
    spec = _route_spec(dst, gateway=gateway, dev=dev, proto=proto, src=src, table=table)
    if onlink:
        spec["flags"] = 4  # RTNH_F_ONLINK
    if mtu:
        spec["metrics"] = {"RTAX_MTU": mtu}
    with _netlink(f"replace route {dst} via {gateway or '-'} dev {dev or '-'}"):
        ipr().route("replace", **spec)


def route_add(dst: str, *, gateway: str | None = None, dev: str | None = None,
              onlink: bool = False, proto: int | None = None) -> None:
    """Create a route, never replacing one (NLM_F_CREATE|NLM_F_EXCL): errors.Exists when the
    table already holds a route to dst (with the same metric), whoever made it."""
    spec = _route_spec(dst, gateway=gateway, dev=dev, proto=proto)
    if onlink:
        spec["flags"] = 4  # RTNH_F_ONLINK
    with _netlink(f"add route {dst} via {gateway or '-'} dev {dev or '-'}"):
        ipr().route("add", **spec)


def route_delete(dst: str, *, gateway: str | None = None, dev: str | None = None,
                 proto: int | None = None, table: int | None = None) -> bool:
    spec = _route_spec(dst, gateway=gateway, dev=dev, proto=proto, table=table)
    try:
        ipr().route("del", **spec)
        return True
    except NetlinkError as e:
        err = from_errno(e.code, f"delete route {dst}")
        if isinstance(err, NotFound):
            return False
        raise err from None


def routes(*, proto: int | None = None, table: int = 254, family: int = socket.AF_INET) -> list[dict]:
    """IPv4 routes of a table as {dst, gateway, dev, proto, flags}; dst 'default' for 0/0."""
    query: dict = {"family": family, "table": table}
    if proto is not None:
        query["proto"] = proto
    with _netlink("list routes"):
        msgs = ipr().route("dump", **query)
    names = {link["index"]: link["name"] for link in links()}
    out = []
    for m in msgs:
        dst = m.get_attr("RTA_DST")
        out.append({
            "dst": f"{dst}/{m['dst_len']}" if dst else "default",
            "gateway": m.get_attr("RTA_GATEWAY"),
            "dev": names.get(m.get_attr("RTA_OIF")),
            "proto": m["proto"],
            "scope": m["scope"],
            "flags": m["flags"],
            "prefsrc": m.get_attr("RTA_PREFSRC"),
        })
    return out


def default_route_dev() -> str | None:
    for r in routes():
        if r["dst"] == "default" and r["dev"]:
            return r["dev"]
    return None


def _require_index(name: str) -> int:
    index = link_index(name)
    if index is None:
        raise NotFound(f"link {name}: no such device")
    return index


def _route_spec(dst, *, gateway=None, dev=None, proto=None, src=None, table=None) -> dict:
    spec: dict = {"dst": "0.0.0.0/0" if dst == "default" else dst}
    if gateway:
        spec["gateway"] = gateway
    if dev:
        spec["oif"] = _require_index(dev)
    if proto is not None:
        spec["proto"] = proto
    if src:
        spec["prefsrc"] = src
    if table is not None:
        spec["table"] = table
    return spec
