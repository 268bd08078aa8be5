"""rtnetlink through pyroute2: the link message podnet speaks, and batches for the hot path.

LinkMessage is pyroute2's ifinfmsg with the link attributes pyroute2 0.9 cannot name yet (BIG TCP's
IPv4 GSO/GRO limits), declared the way pyroute2 declares its own messages (an nla_map) and
registered in a socket's marshal, so replies decode into it and requests encode from it.

transact() is the per-pod hot path: requests encoded by pyroute2's message classes, sent in one
datagram on a plain NETLINK_ROUTE socket, the replies decoded by pyroute2's MarshalRtnl. Attaching
a pod is a handful of requests, half of them in a fresh thread inside the pod's netns, where
pyroute2 0.9's IPRoute (an asyncio core) costs about 0.65 ms to open and 0.27 ms per request, and
even its synchronous IPRSocket made 16 concurrent in-process attaches a quarter slower (31 against
24 ms at best). Everything else (dumps, bridges, VXLAN, addresses, routes) uses IPRoute
(netns.ipr()), whose marshal decodes LinkMessage too.
"""
import dataclasses
import itertools
import socket
import threading

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink import NLMSG_ERROR, nlmsg
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK, RTM_SETLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfbase
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from .errors import from_errno, translated

CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
REQUEST = NLM_F_REQUEST | NLM_F_ACK

# Attributes newer than pyroute2's ifinfmsg, by number (linux/if_link.h). Linux 6.3+: the largest
# IPv4 GSO packet a device builds or GRO merges ("BIG TCP" above 64 KiB).
_NEWER_LINK_ATTRIBUTES = (
    (62, "IFLA_DEVLINK_PORT", "hex"),
    (63, "IFLA_GSO_IPV4_MAX_SIZE", "uint32"),
    (64, "IFLA_GRO_IPV4_MAX_SIZE", "uint32"),
)
LEGACY_GSO_MAX_SIZE = 65536  # every IPv4 path before BIG TCP, and what a kernel without it reports


def _extended_nla_map(base: tuple) -> tuple:
    """base (pyroute2's positional IFLA_ list) with _NEWER_LINK_ATTRIBUTES appended where it
    stops; a pyroute2 that already names one must name it the same."""
    names = [entry[0] for entry in base]
    extra = []
    for number, name, kind in _NEWER_LINK_ATTRIBUTES:
        if number < len(names):
            if names[number] != name:
                raise ImportError(f"pyroute2's ifinfmsg names attribute {number} {names[number]}, "
                                  f"podnet expects {name}")
        elif number == len(names) + len(extra):
            extra.append((name, kind))
        else:
            raise ImportError(f"pyroute2's ifinfmsg stops at attribute {len(names) - 1}: "
                              f"cannot place {name} ({number})")
    return tuple(base) + tuple(extra)


class LinkMessage(ifinfbase, nlmsg):
    """pyroute2's ifinfmsg plus IFLA_GSO_IPV4_MAX_SIZE / IFLA_GRO_IPV4_MAX_SIZE (a sibling class
    rather than a subclass of ifinfmsg: pyroute2 compiles an nla_map once per class hierarchy)."""

    nla_map = _extended_nla_map(ifinfbase.nla_map)


def use_link_message(marshal) -> None:
    """Make a pyroute2 socket's marshal decode link messages as LinkMessage."""
    for msg_type in (RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK):
        marshal.msg_map[msg_type] = LinkMessage


@dataclasses.dataclass
class Request:
    """One netlink request of a batch; what names it in errors ("create veth X")."""
    msg: nlmsg
    msg_type: int
    flags: int
    what: str


class _Channel:
    """A thread's NETLINK_ROUTE socket (bound to no multicast group: only the answers to its
    own requests arrive) and the marshal that decodes them."""

    def __init__(self):
        self.socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                    socket.NETLINK_ROUTE)
        self.socket.bind((0, 0))
        self.marshal = MarshalRtnl()
        use_link_message(self.marshal)

    def receive(self) -> list[nlmsg]:
        return list(self.marshal.parse(self.socket.recv(65536)))


_local = threading.local()
_seq = itertools.count(1)


def _channel() -> _Channel:
    channel = getattr(_local, "channel", None)
    if channel is None:
        channel = _local.channel = _Channel()
    return channel


def close_thread_socket() -> None:
    channel = getattr(_local, "channel", None)
    if channel is not None:
        _local.channel = None
        channel.socket.close()


def transact(requests: list[Request]) -> list[list[nlmsg]]:
    """Send the requests in one datagram; return each one's decoded replies (those before its
    ack). The first failed request is raised with its what (errors.translated's map)."""
    with translated("open a netlink socket"):
        channel = _channel()
    index_of: dict[int, int] = {}
    batch = bytearray()
    for i, request in enumerate(requests):
        seq = next(_seq) % 0x7FFFFFFF + 1
        index_of[seq] = i
        header = request.msg["header"]
        header["type"], header["flags"], header["sequence_number"] = (request.msg_type,
                                                                       request.flags, seq)
        request.msg.encode()
        batch += request.msg.data
    # One send, not one per request: each socket call gives up the GIL, and under concurrent
    # ADDs taking it back costs more than the kernel's work.
    with translated(requests[0].what):
        channel.socket.send(bytes(batch))
    replies: list[list[nlmsg]] = [[] for _ in requests]
    failures: dict[int, int] = {}
    pending = set(index_of)
    while pending:
        with translated(requests[index_of[min(pending)]].what):
            received = channel.receive()
        for msg in received:
            seq = msg["header"]["sequence_number"]
            i = index_of.get(seq)
            if i is None:
                continue  # an answer to an earlier batch that failed before reading it
            if msg["header"]["type"] == NLMSG_ERROR:
                pending.discard(seq)
                error = msg["header"]["error"]
                if error is not None:
                    failures[i] = getattr(error, "code", None) or error.errno
            else:
                replies[i].append(msg)
    for i in sorted(failures):
        raise from_errno(failures[i], requests[i].what)
    return replies
