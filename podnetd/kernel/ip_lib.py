"""Links, addresses and routes, in the calling thread's network namespace.

Every function is flat (plain values in and out), idempotent on "exists"/"not found" where
that makes sense, and raises errors.KernelError subclasses with context (errors.translated)
instead of NetlinkError. Links are read one way, link_get (or links for a dump), as
rtnl.LinkMessage; single-link requests go through rtnl's batches, the rest through IPRoute.
"""
import errno
import ipaddress
import socket

from pyroute2.netlink.rtnl import (RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK,
                                   RTM_NEWROUTE, RTM_SETLINK)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from . import rtnl
from .errors import Exists, NotFound, translated
from .netns import ipr
from .rtnl import LEGACY_GSO_MAX_SIZE, LinkMessage, Request  # noqa: F401 - LEGACY_GSO_MAX_SIZE

IFF_UP = 0x1
RTNH_F_ONLINK = 4
RTPROT_BOOT = 3
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a third less to decode, and podnet reads no counters


def _link_dict(msg: LinkMessage) -> dict:
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    return {
        "index": msg["index"],
        "name": msg.get_attr("IFLA_IFNAME"),
        "kind": info.get_attr("IFLA_INFO_KIND") if info else None,
        "mtu": msg.get_attr("IFLA_MTU"),
        "mac": msg.get_attr("IFLA_ADDRESS"),
        "master": msg.get_attr("IFLA_MASTER") or 0,
        "up": bool(msg["flags"] & IFF_UP),
        "operstate": msg.get_attr("IFLA_OPERSTATE"),
        "gso_ipv4_max_size": msg.get_attr("IFLA_GSO_IPV4_MAX_SIZE") or LEGACY_GSO_MAX_SIZE,
        # The kind's own attributes (IFLA_VXLAN_ID, ...), when the kernel reports them.
        "data": {attr[0]: attr[1] for attr in data["attrs"]} if data else {},
    }


def _by_name(name: str, **attrs) -> LinkMessage:
    """A link message addressing the link by name (the kernel resolves it: no index lookup)."""
    msg = LinkMessage()
    msg["attrs"] = [("IFLA_IFNAME", name), *((f"IFLA_{key.upper()}", value)
                                             for key, value in attrs.items())]
    return msg


def link_require(name: str) -> dict:
    """The link's facts: index, name, kind, mtu, mac, master, up, operstate,
    gso_ipv4_max_size and data (the kind's attributes); errors.NotFound when it is absent."""
    msg = _by_name(name, ext_mask=RTEXT_FILTER_SKIP_STATS)
    (replies,) = rtnl.transact([Request(msg, RTM_GETLINK, rtnl.REQUEST, f"get link {name}")])
    return _link_dict(replies[0])


def link_get(name: str) -> dict | None:
    """link_require's facts, or None when there is no such link."""
    try:
        return link_require(name)
    except NotFound:
        return None


def link_index_of(name: str) -> int:
    """The link's index (errors.NotFound when absent), from libc's if_nametoindex: no netlink
    message to decode when only the index is needed."""
    try:
        return socket.if_nametoindex(name)
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENXIO, None):
            raise NotFound(f"link {name}: no such device") from None
        with translated(f"get link index of {name}"):
            raise
    except ValueError:      # an embedded NUL: no link has that name
        raise NotFound(f"link {name!r}: no such device") from None


def link_index(name: str) -> int | None:
    try:
        return link_index_of(name)
    except NotFound:
        return None


def link_names() -> dict[int, str]:
    """Every link's index -> name in this thread's netns. libc's if_nameindex parses the
    netlink dump in C: a route or address listing needs only the names, and decoding every
    link's whole message in Python costs about a millisecond per veth on a busy node."""
    with translated("list link names"):
        return dict(socket.if_nameindex())


def links(kind: str | None = None, master: int | None = None) -> list[dict]:
    """Every link's facts (as link_require), optionally only of a kind or on a master."""
    with translated("list links"):
        found = [_link_dict(m) for m in ipr().get_links()]
    return [link for link in found
            if (kind is None or link["kind"] == kind) and (master is None or link["master"] == master)]


def _set_request(name: str, *, up: bool | None = None, mtu: int | None = None,
                 master: int | None = None, mac: str | None = None,
                 gso_limit: int | None = None) -> Request | None:
    attrs: dict = {}
    if mtu is not None:
        attrs["mtu"] = mtu
    if master is not None:
        attrs["master"] = master
    if mac is not None:
        attrs["address"] = mac
    if gso_limit is not None:
        attrs["gso_ipv4_max_size"] = attrs["gro_ipv4_max_size"] = gso_limit
    if not attrs and up is None:
        return None
    msg = _by_name(name, **attrs)
    if up is not None:
        msg["change"] = IFF_UP
        msg["flags"] = IFF_UP if up else 0
    changes = ", ".join([f"{k} {v}" for k, v in attrs.items()] + ([] if up is None else
                                                                    ["up" if up else "down"]))
    return Request(msg, RTM_SETLINK, rtnl.REQUEST, f"set {name} {changes}")


def link_set(name: str, *, up: bool | None = None, mtu: int | None = None,
             master: int | None = None, mac: str | None = None,
             gso_limit: int | None = None) -> None:
    """Change what is given; gso_limit is the IPv4 GSO and GRO limit (gso/gro_ipv4_max_size)."""
    request = _set_request(name, up=up, mtu=mtu, master=master, mac=mac, gso_limit=gso_limit)
    if request is not None:
        rtnl.transact([request])


def link_delete(name: str) -> bool:
    """Delete a link; False when it was already gone."""
    try:
        rtnl.transact([Request(_by_name(name), RTM_DELLINK, rtnl.REQUEST, f"delete link {name}")])
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
            with translated(f"create bridge {name}"):
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
    the namespace behind peer_netns_fd (no move, no rename), both with the given MACs (so
    nothing is read back). gso_limit, when given, is the host end's IPv4 GSO/GRO limit (the
    peer's is set by pod_interface_setup). One batch."""
    msg = _by_name(host_name, mtu=mtu, master=master, address=host_mac)
    msg["flags"] = msg["change"] = IFF_UP
    msg["attrs"].append(("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "veth"),
        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": [
            ("IFLA_IFNAME", peer_name), ("IFLA_NET_NS_FD", peer_netns_fd), ("IFLA_MTU", mtu),
            ("IFLA_ADDRESS", peer_mac)]})]}),
    ]}))
    requests = [Request(msg, RTM_NEWLINK, rtnl.CREATE, f"create veth {host_name} (peer {peer_name})")]
    if gso_limit is not None:
        requests.append(_set_request(host_name, gso_limit=gso_limit))
    rtnl.transact(requests)


def pod_interface_setup(ifname: str, address: str, gateway: str,
                        gso_limit: int | None = None) -> int:
    """In the pod's netns, in one batch: lo and ifname up, the address, a default route via
    gateway, and the IPv4 GSO/GRO limit when one is given. Returns ifname's index."""
    iface = ipaddress.ip_interface(address)
    # The index by name without a netlink round trip and a link message to decode (a fifth of
    # the ADD's Python time): the address and the route need nothing else from the link.
    with translated(f"find {ifname}"):
        index = socket.if_nametoindex(ifname)
    addr = ifaddrmsg()
    addr["family"], addr["prefixlen"], addr["index"] = (socket.AF_INET, iface.network.prefixlen,
                                                        index)
    addr["attrs"] = [("IFA_LOCAL", str(iface.ip)), ("IFA_ADDRESS", str(iface.ip))]
    route = rtmsg()
    route["family"], route["table"], route["proto"], route["type"], route["scope"] = (
        socket.AF_INET, RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST, 0)
    route["attrs"] = [("RTA_TABLE", RT_TABLE_MAIN), ("RTA_GATEWAY", gateway),
                      ("RTA_OIF", index)]
    requests = [_set_request("lo", up=True), _set_request(ifname, up=True, gso_limit=gso_limit),
                Request(addr, RTM_NEWADDR, rtnl.REPLACE, f"add address {address} to {ifname}"),
                Request(route, RTM_NEWROUTE, rtnl.REPLACE,
                        f"add default route via {gateway} dev {ifname}")]
    rtnl.transact(requests)
    return index


def link_gso_limit(name: str) -> int:
    """The largest IPv4 GSO packet the link takes (its gso_ipv4_max_size; 64 KiB on kernels
    before 6.3, which have no BIG TCP for IPv4). errors.NotFound when there is no such link."""
    return link_require(name)["gso_ipv4_max_size"]


def link_set_gso_limit(name: str, size: int) -> None:
    """Set the link's IPv4 GSO and GRO limits (gso/gro_ipv4_max_size)."""
    link_set(name, gso_limit=size)


def addr_add(name: str, cidr: str) -> None:
    """Add an address (idempotent when it is already there)."""
    iface = ipaddress.ip_interface(cidr)
    index = link_index_of(name)
    try:
        with translated(f"add address {cidr} to {name}"):
            ipr().addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except Exists:
        pass


def addrs(name: str, family: int = socket.AF_INET) -> list[str]:
    index = link_index_of(name)
    with translated(f"list addresses of {name}"):
        msgs = ipr().get_addr(index=index, family=family)
    return [f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}" for m in msgs]


def route_replace(dst: str, *, gateway: str | None = None, dev: str | None = None,
                  onlink: bool = False, proto: int | None = None, src: str | None = None,
                  table: int | None = None, mtu: int | None = None) -> None:
    spec = _route_spec(dst, gateway=gateway, dev=dev, proto=proto, src=src, table=table)
    if onlink:
        spec["flags"] = RTNH_F_ONLINK
    if mtu:
        spec["metrics"] = {"RTAX_MTU": mtu}
    with translated(f"replace route {dst} via {gateway or '-'} dev {dev or '-'}"):
        ipr().route("replace", **spec)


def route_add(dst: str, *, gateway: str | None = None, dev: str | None = None,
              onlink: bool = False, proto: int | None = None) -> None:
    """Create a route, never replacing one (NLM_F_CREATE|NLM_F_EXCL): errors.Exists when the
    table already holds a route to dst (with the same metric), whoever made it."""
    spec = _route_spec(dst, gateway=gateway, dev=dev, proto=proto)
    if onlink:
        spec["flags"] = RTNH_F_ONLINK
    with translated(f"add route {dst} via {gateway or '-'} dev {dev or '-'}"):
        ipr().route("add", **spec)


def route_delete(dst: str, *, gateway: str | None = None, dev: str | None = None,
                 proto: int | None = None, table: int | None = None) -> bool:
    spec = _route_spec(dst, gateway=gateway, dev=dev, proto=proto, table=table)
    try:
        with translated(f"delete route {dst} via {gateway or '-'} dev {dev or '-'}"):
            ipr().route("del", **spec)
        return True
    except NotFound:
        return False


def routes(*, proto: int | None = None, table: int = RT_TABLE_MAIN, family: int = socket.AF_INET) -> list[dict]:
    """IPv4 routes of a table as {dst, gateway, dev, proto, flags}; dst 'default' for 0/0."""
    query: dict = {"family": family, "table": table}
    if proto is not None:
        query["proto"] = proto
    with translated("list routes"):
        msgs = ipr().route("dump", **query)
    names = link_names()
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


def _route_spec(dst, *, gateway=None, dev=None, proto=None, src=None, table=None) -> dict:
    spec: dict = {"dst": "0.0.0.0/0" if dst == "default" else dst}
    if gateway:
        spec["gateway"] = gateway
    if dev:
        spec["oif"] = link_index_of(dev)
    if proto is not None:
        spec["proto"] = proto
    if src:
        spec["prefsrc"] = src
    if table is not None:
        spec["table"] = table
    return spec
