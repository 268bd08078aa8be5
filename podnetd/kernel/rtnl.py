"""A lean rtnetlink transport for the per-pod hot path.

pyroute2's synchronous IPRoute costs ~1 ms of Python per request here (its asyncio core runs
for every call); a plain netlink socket with pyroute2's own message classes costs ~0.1 ms, and it
can send several requests in one sendmsg. Attach is a handful of requests, so it goes through
here; everything else (dumps, bridge setup) keeps using IPRoute.
"""
import itertools
import socket
import struct
import threading

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import (RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK,
                                   RTM_NEWROUTE, RTM_SETLINK)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .errors import from_errno

NLMSG_ERROR = 2
IFF_UP = 0x1
_HEADER = struct.Struct("=IHHII")
_local = threading.local()
_seq = itertools.count(1)

CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
REQUEST = NLM_F_REQUEST | NLM_F_ACK


def _socket() -> socket.socket:
    sock = getattr(_local, "sock", None)
    if sock is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        sock.bind((0, 0))
        _local.sock = sock
    return sock


def close_thread_socket() -> None:
    sock = getattr(_local, "sock", None)
    if sock is not None:
        _local.sock = None
        sock.close()


def transact(requests: list[tuple]) -> list[list[bytes]]:
    """Send (message, type, flags, what) requests in one batch; return each one's reply payloads
    (raw netlink messages before its ack). The first failure is raised with its 'what'."""
    sock = _socket()
    seqs, blob = [], bytearray()
    for msg, msg_type, flags, _ in requests:
        seq = next(_seq) & 0x7FFFFFFF
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg.encode()
        blob += msg.data
        seqs.append(seq)
    sock.send(bytes(blob))
    index_of = {seq: i for i, seq in enumerate(seqs)}
    replies: list[list[bytes]] = [[] for _ in requests]
    errors: dict[int, int] = {}
    pending = set(seqs)
    while pending:
        data = sock.recv(65536)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, msg_type, _, seq, _ = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                break
            i = index_of.get(seq)
            if i is not None:
                if msg_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                    if code:
                        errors[i] = code
                    pending.discard(seq)
                else:
                    replies[i].append(data[offset:offset + length])
            offset += (length + 3) & ~3
    for i in sorted(errors):
        raise from_errno(errors[i], requests[i][3])
    return replies


_IFINFO = struct.Struct("=BxHiII")   # family, type, index, flags, change
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
# Linux 6.3+: the largest IPv4 GSO packet a device builds or GRO merges ("BIG TCP" above 64 KiB).
# pyroute2 0.9 has no names for them, so requests carrying them are encoded here by hand.
IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE = 63, 64
LEGACY_GSO_MAX_SIZE = 65536  # every IPv4 path before BIG TCP, and what a kernel without it reports


def _link_facts(raw: bytes) -> dict:
    """The few facts the hot path needs, read straight from the RTM_NEWLINK bytes (a full
    pyroute2 decode of a link message costs ~0.5 ms)."""
    _, _, index, flags, _ = _IFINFO.unpack_from(raw, _HEADER.size)
    facts = {"index": index, "name": None, "mac": None, "mtu": None, "master": 0,
             "up": bool(flags & IFF_UP), "gso_ipv4_max_size": LEGACY_GSO_MAX_SIZE}
    offset = _HEADER.size + _IFINFO.size
    while offset + _NLA.size <= len(raw):
        length, kind = _NLA.unpack_from(raw, offset)
        if length < _NLA.size:
            break
        value = raw[offset + _NLA.size:offset + length]
        kind &= 0x3FFF
        if kind == IFLA_ADDRESS:
            facts["mac"] = ":".join(f"{b:02x}" for b in value)
        elif kind == IFLA_IFNAME:
            facts["name"] = value.rstrip(b"\0").decode()
        elif kind == IFLA_MTU:
            facts["mtu"] = struct.unpack("=I", value)[0]
        elif kind == IFLA_MASTER:
            facts["master"] = struct.unpack("=I", value)[0]
        elif kind == IFLA_GSO_IPV4_MAX_SIZE:
            facts["gso_ipv4_max_size"] = _U32.unpack(value)[0]
        offset += (length + 3) & ~3
    return facts


class _GsoLimitRequest:
    """RTM_SETLINK of a link (by name) setting its IPv4 GSO and GRO limits. Shaped like a
    pyroute2 message (a "header" dict, encode(), data) so transact() can batch it."""

    def __init__(self, name: str, size: int):
        self._name, self._size = name, size
        self._header: dict = {}
        self.data = b""

    def __getitem__(self, key: str) -> dict:
        if key != "header":
            raise KeyError(key)
        return self._header

    def encode(self) -> None:
        name = self._name.encode() + b"\0"
        attrs = _NLA.pack(_NLA.size + len(name), IFLA_IFNAME) + name + bytes(-len(name) % 4)
        for kind in (IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE):
            attrs += _NLA.pack(_NLA.size + _U32.size, kind) + _U32.pack(self._size)
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attrs
        h = self._header
        self.data = _HEADER.pack(_HEADER.size + len(body), h["type"], h["flags"],
                                 h["sequence_number"], 0) + body


def gso_limit_request(name: str, size: int) -> tuple:
    """A transact() request setting name's IPv4 GSO/GRO limits to size."""
    return (_GsoLimitRequest(name, size), RTM_SETLINK, REQUEST,
            f"set {name} gso_ipv4_max_size {size}")


def set_gso_limit(name: str, size: int) -> None:
    transact([gso_limit_request(name, size)])


def get_link(name: str) -> dict:
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    (reply,) = transact([(msg, RTM_GETLINK, REQUEST, f"get link {name}")])
    return _link_facts(reply[0])


def delete_link(name: str) -> None:
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    transact([(msg, RTM_DELLINK, REQUEST, f"delete link {name}")])


def create_veth(host: str, peer: str, peer_netns_fd: int, mtu: int, master: int,
                host_mac: str, peer_mac: str, gso_limit: int | None = None) -> None:
    """One batch: the host end up on master, the peer created inside the pod netns, both with
    the given MACs (so nothing has to be read back); then the host end's GSO/GRO limit."""
    msg = ifinfmsg()
    msg["flags"] = msg["change"] = IFF_UP
    msg["attrs"] = [
        ("IFLA_IFNAME", host), ("IFLA_MTU", mtu), ("IFLA_MASTER", master), ("IFLA_ADDRESS", host_mac),
        ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": [
                ("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", peer_netns_fd), ("IFLA_MTU", mtu),
                ("IFLA_ADDRESS", peer_mac)]})]}),
        ]}),
    ]
    requests = [(msg, RTM_NEWLINK, CREATE, f"create veth {host} (peer {peer})")]
    if gso_limit is not None:
        requests.append(gso_limit_request(host, gso_limit))
    transact(requests)


def configure_interface(ifname: str, address: str, prefixlen: int, gateway: str,
                        gso_limit: int | None = None) -> dict:
    """Inside the pod netns, in one batch: lo up, ifname up, its address, the default route via
    gateway, and its IPv4 GSO/GRO limit when one is given. Returns the interface's facts."""
    link = get_link(ifname)
    lo_up, if_up = ifinfmsg(), ifinfmsg()
    for msg, name in ((lo_up, "lo"), (if_up, ifname)):
        msg["flags"] = msg["change"] = IFF_UP
        msg["attrs"] = [("IFLA_IFNAME", name)]
    addr = ifaddrmsg()
    addr["family"], addr["prefixlen"], addr["index"] = socket.AF_INET, prefixlen, link["index"]
    addr["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
    route = rtmsg()
    route["family"], route["table"], route["proto"], route["type"] = socket.AF_INET, 254, 3, 1
    route["scope"] = 0
    route["attrs"] = [("RTA_TABLE", 254), ("RTA_GATEWAY", gateway), ("RTA_OIF", link["index"])]
    requests = [(lo_up, RTM_SETLINK, REQUEST, "set lo up"),
                (if_up, RTM_SETLINK, REQUEST, f"set {ifname} up"),
                (addr, RTM_NEWADDR, REPLACE, f"add address {address}/{prefixlen} to {ifname}"),
                (route, RTM_NEWROUTE, REPLACE, f"add default route via {gateway} dev {ifname}")]
    if gso_limit is not None:
        requests.append(gso_limit_request(ifname, gso_limit))
    transact(requests)
    link["up"] = True
    return link
