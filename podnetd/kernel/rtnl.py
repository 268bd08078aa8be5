"""rtnetlink through pyroute2: the link message podnet speaks, and batches for the hot path.

LinkMessage is pyroute2's ifinfmsg with the link attributes pyroute2 0.9 cannot name yet (BIG TCP's
IPv4 GSO/GRO limits), declared the way pyroute2 declares its own messages (an nla_map) and
registered in a socket's marshal, so replies decode into it and requests encode from it.

transact() sends several requests on pyroute2's synchronous IPRSocket before it reads their acks.
Attaching a pod is a handful of requests, half of them in a fresh thread inside the pod's netns,
and pyroute2 0.9's IPRoute runs an asyncio core: about 0.65 ms to open per thread and 0.27 ms per
request here, against 0.3 ms and 0.15 ms for IPRSocket (bench figures in docs/architecture.md).
Dumps, bridges, addresses and routes use IPRoute (netns.ipr()), which decodes LinkMessage too.
"""
import dataclasses
import itertools
import threading

from pyroute2 import IPRSocket
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink import NLMSG_ERROR, nlmsg
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK, RTM_SETLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfbase

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


_local = threading.local()
_seq = itertools.count(1)


def _socket() -> IPRSocket:
    sock = getattr(_local, "sock", None)
    if sock is None:
        sock = IPRSocket(groups=0)  # no multicast: only the replies to our requests arrive
        use_link_message(sock.marshal)
        _local.sock = sock
    return sock


def close_thread_socket() -> None:
    sock = getattr(_local, "sock", None)
    if sock is not None:
        _local.sock = None
        sock.close()


def transact(requests: list[Request]) -> list[list[nlmsg]]:
    """Send the requests, all before reading any reply; return each one's decoded replies
    (those before its ack). The first failed request is raised with its what (errors.py)."""
    sock = _socket()
    index_of: dict[int, int] = {}
    for i, request in enumerate(requests):
        # Our own sequence numbers: IPRSocket's pool hands out numbers it never takes back.
        seq = next(_seq) % 0x7FFFFFFF + 1
        index_of[seq] = i
        with translated(request.what):
            sock.put(request.msg, request.msg_type, request.flags, msg_seq=seq)
    replies: list[list[nlmsg]] = [[] for _ in requests]
    failures: dict[int, int] = {}
    pending = set(index_of)
    while pending:
        with translated(requests[index_of[min(pending)]].what):
            received = sock.get()
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
