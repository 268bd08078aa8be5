"""Node records and the pure rules on them: validation of incoming records, merging (first-hand
vs hearsay), CIDR conflicts, liveness."""
import collections
import dataclasses
import functools
import ipaddress
import re
import time
from typing import Mapping

from google.protobuf.timestamp_pb2 import Timestamp

# -- limits on what a peer may send ----------------------------------------------------------
MAX_NAME_LENGTH = 253            # a DNS subdomain, as Kubernetes node names
MAX_FIELD_LENGTH = 64            # any other string field (an IPv6 [host]:port fits)
MAX_FUTURE_MS = 5 * 60 * 1000    # how far ahead of our clock a heartbeat or claim time may be
MAX_NODES = 2000                 # records one node holds, its own included
MAX_TOMBSTONES = 4096
INT64_MAX = 2 ** 63 - 1

FIELDS = ("name", "underlay_ip", "pod_cidr", "vtep_mac", "heartbeat_ms", "peer_address", "started_ms")

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_PORT_RE = re.compile(r"[0-9]{1,5}")


class RecordError(ValueError):
    """An incoming node record (or one of its fields) that is not acceptable. The message names
    the record and the field: "record 'n2': pod_cidr '10.0.0.0/8': outside the cluster CIDR"."""

    def __init__(self, record: str, field: str, why: str):
        self.record, self.field, self.why = record, field, why
        super().__init__(f"record {record!r}: {field}: {why}")

from ..macs import stable_mac


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    name: str
    underlay_ip: str
    pod_cidr: str
    vtep_mac: str = ""
    heartbeat_ms: int = 0   # the origin's wall clock at its last renewal
    peer_address: str = ""  # static store: where its Peer service listens
    # When the claim on pod_cidr was made: the older claim wins an overlap. A node's own record
    # carries the time it first claimed the CIDR; a record of another node carries the time the
    # HOLDER first saw that claim (Membership sets it), never a time the claimant chose.
    started_ms: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NodeRecord":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def now_ms() -> int:
    return int(time.time() * 1000)


# -- validation ------------------------------------------------------------------------------

def validate_name(name) -> str:
    """A node name: a DNS subdomain (labels of letters, digits and '-', dot-separated), at most
    253 characters. Raises RecordError."""
    shown = _shown(name)
    if not isinstance(name, str):
        raise RecordError(shown, "name", f"expected a string, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
        raise RecordError(shown, "name", "not a DNS subdomain of at most 253 characters "
                          "(letters, digits, '-' and '.')")
    return name


def validate_record(data, *, cluster_cidr: str | None, cidr_size: int | None = None,
                    now: int | None = None) -> NodeRecord:
    """An incoming record checked field by field, returned normalised; RecordError otherwise.

    data is a mapping (JSON from etcd, a protobuf message's fields) or a NodeRecord. Unknown keys
    are ignored (a newer peer may send more). The pod CIDR must be an IPv4 network inside
    cluster_cidr, of prefix length cidr_size when given, else between the cluster's prefix and
    /30. Heartbeat and claim time are bounded and at most MAX_FUTURE_MS ahead of `now` (ms)."""
    if isinstance(data, NodeRecord):
        data = data.to_dict()
    if not isinstance(data, Mapping):
        raise RecordError("?", "record", f"expected a mapping, got {type(data).__name__}")
    name = validate_name(data.get("name"))
    now = now_ms() if now is None else now

    def string(field: str, required: bool) -> str:
        value = data.get(field, None if required else "")
        if not isinstance(value, str):
            raise RecordError(name, field, f"expected a string, got {type(value).__name__}")
        if required and not value:
            raise RecordError(name, field, "missing")
        if len(value) > MAX_FIELD_LENGTH:
            raise RecordError(name, field, f"longer than {MAX_FIELD_LENGTH} characters")
        return value

    def millis(field: str, required: bool, minimum: int) -> int:
        value = data.get(field, None if required else 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise RecordError(name, field, f"expected an integer, got {type(value).__name__}")
        if not minimum <= value <= min(INT64_MAX, now + MAX_FUTURE_MS):
            raise RecordError(name, field, f"{value} is not a time between {minimum} and "
                              f"{MAX_FUTURE_MS // 1000} s from now ({now} ms)")
        return value

    underlay, pod_cidr, mac, peer = _checked(
        name, string("underlay_ip", True), string("pod_cidr", True), string("vtep_mac", False),
        string("peer_address", False), cluster_cidr, cidr_size)
    return NodeRecord(name=name, underlay_ip=underlay, pod_cidr=pod_cidr, vtep_mac=mac,
                      heartbeat_ms=millis("heartbeat_ms", True, 1), peer_address=peer,
                      started_ms=millis("started_ms", False, 0))


@functools.lru_cache(maxsize=4096)
def _checked(name: str, underlay: str, pod_cidr: str, mac: str, peer: str,
             cluster_cidr: str | None, cidr_size: int | None) -> tuple[str, str, str, str]:
    """The string fields checked and normalised. Remembered: the same record comes back every
    gossip round with only its heartbeat changed (errors are not remembered)."""
    underlay = _unicast_ipv4(name, "underlay_ip", underlay)
    pod_cidr = _pod_cidr(name, pod_cidr, cluster_cidr, cidr_size)
    if mac:
        if not _MAC_RE.fullmatch(mac):
            raise RecordError(name, "vtep_mac", f"{mac!r} is not a MAC address aa:bb:cc:dd:ee:ff")
        mac = mac.lower()
        if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
            raise RecordError(name, "vtep_mac", f"{mac} is not a unicast MAC address")
        if mac != vtep_mac(name):
            # Derived from the name on every node: a record cannot take over another node's
            # FDB entry by announcing its MAC.
            raise RecordError(name, "vtep_mac", f"{mac} is not node {name}'s VTEP MAC "
                              f"({vtep_mac(name)})")
    if peer:
        peer = _peer_address(name, peer)
    return underlay, pod_cidr, mac, peer


def _shown(value) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unicast_ipv4(name: str, field: str, text: str) -> str:
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise RecordError(name, field, f"{text!r} is not an IPv4 address") from None
    if (str(ip) != text or ip.is_multicast or ip.is_unspecified or ip.is_loopback
            or ip.is_reserved):
        raise RecordError(name, field, f"{text!r} is not a unicast address a peer can use")
    return text


def _pod_cidr(name: str, text: str, cluster_cidr: str | None, cidr_size: int | None) -> str:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise RecordError(name, "pod_cidr", f"{text!r} is not an IPv4 network: {e}") from None
    if str(net) != text:
        raise RecordError(name, "pod_cidr", f"{text!r} is not written as {net}")
    cluster = _network(cluster_cidr) if cluster_cidr else None
    if cluster is not None and not (net.version == cluster.version and net.subnet_of(cluster)):
        raise RecordError(name, "pod_cidr", f"{text} is outside the cluster CIDR {cluster_cidr}")
    low = cluster.prefixlen if cluster is not None else 1
    if cidr_size is not None and net.prefixlen != cidr_size:
        raise RecordError(name, "pod_cidr", f"{text} is not a /{cidr_size} block")
    if not low <= net.prefixlen <= 30:
        raise RecordError(name, "pod_cidr", f"{text}: prefix length must be between {low} and 30")
    return text


def _peer_address(name: str, text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536:
        raise RecordError(name, "peer_address", f"{text!r} is not IP:PORT")
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        raise RecordError(name, "peer_address", f"{text!r} is not IP:PORT") from None
    expected = f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"
    if (text != expected or ip.is_multicast or ip.is_unspecified or ip.is_loopback
            or ip.is_reserved):
        raise RecordError(name, "peer_address", f"{text!r} is not a unicast IP:PORT a peer can use")
    return text


# On the wire (podnet.peer.v1.NodeRecord) a record's times are google.protobuf.Timestamps; here
# they stay integer milliseconds, compared and bounded as numbers (validate_record).
WIRE_TIMES = {"heartbeat_ms": "heartbeat_time", "started_ms": "start_time"}


def _wire_millis(ts) -> int:
    """A Timestamp as milliseconds; -1 (refused by validate_record's range check) when its nanos
    are outside [0, 10^9), which no valid Timestamp has."""
    if not 0 <= ts.nanos < 1_000_000_000:
        return -1
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def wire_fields(message) -> dict:
    """A protobuf NodeRecord's fields as a dict for validate_record (times in milliseconds)."""
    return {f: _wire_millis(getattr(message, WIRE_TIMES[f])) if f in WIRE_TIMES
            else getattr(message, f) for f in FIELDS}


def to_wire(r: NodeRecord) -> dict:
    """A record's fields for a protobuf NodeRecord (times as Timestamps)."""
    out = r.to_dict()
    for field, wire in WIRE_TIMES.items():
        ms = out.pop(field)
        out[wire] = Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)
    return out


# -- identity --------------------------------------------------------------------------------

def vtep_mac(node_name: str) -> str:
    """A stable, locally administered unicast MAC for the node's VXLAN device."""
    return stable_mac("podnet-vtep", node_name)


def vtep_ip(pod_cidr: str) -> str:
    """A node's VTEP address is the network address of its pod CIDR (as in flannel): unique per
    node, never handed to a pod (the gateway is .1), and costs no extra address space."""
    return str(ipaddress.ip_network(pod_cidr).network_address)


@functools.lru_cache(maxsize=4096)
def _network(cidr: str):
    return ipaddress.ip_network(cidr)


def overlaps(a: str, b: str) -> bool:
    return _network(a).overlaps(_network(b))


def inside(cidr: str, cluster_cidr: str) -> bool:
    return _network(cidr).subnet_of(_network(cluster_cidr))


def conflicts(records: list[NodeRecord], cluster_cidr: str | None) -> dict[str, str]:
    """The records refused and why, decided the same way on every node that holds the same
    records: outside the cluster CIDR, or overlapping an older claim (started_ms, then name).
    Called on every gossip message; heartbeats do not change the claims, so the answer for a
    set of claims is remembered (the pairwise check is O(n^2))."""
    claims = tuple(sorted((r.started_ms, r.name, r.pod_cidr) for r in records))
    return dict(_conflicts(claims, cluster_cidr))


@functools.lru_cache(maxsize=16)
def _conflicts(claims: tuple, cluster_cidr: str | None) -> dict[str, str]:
    refused: dict[str, str] = {}
    accepted: list[tuple[str, str]] = []  # (name, pod CIDR), oldest claim first
    for _, name, pod_cidr in claims:
        try:
            _network(pod_cidr)
        except ValueError:
            refused[name] = f"pod CIDR {pod_cidr!r} is not a network"
            continue
        if cluster_cidr and not inside(pod_cidr, cluster_cidr):
            refused[name] = f"pod CIDR {pod_cidr} is outside the cluster CIDR {cluster_cidr}"
            continue
        holder = next((a for a in accepted if overlaps(a[1], pod_cidr)), None)
        if holder is not None:
            refused[name] = (f"pod CIDR {pod_cidr} overlaps node {holder[0]}'s "
                             f"{holder[1]} (claimed earlier); refused")
            continue
        accepted.append((name, pod_cidr))
    return refused


def newer(incoming: NodeRecord, known: NodeRecord | None) -> bool:
    """Whether incoming supersedes known: a later heartbeat from the origin."""
    return known is None or incoming.heartbeat_ms > known.heartbeat_ms


# -- membership ------------------------------------------------------------------------------

class Verdict:
    """What merge() did with a record (for logs and tests)."""
    CHANGED = "changed"          # taken, and routing changes
    REFRESHED = "refreshed"      # taken: a newer heartbeat only
    STALE = "stale"              # not newer than what we hold (or a withdrawn node's old copy)
    SELF = "self"                # nobody else speaks for this node
    HEARSAY_CONFLICT = "hearsay-conflict"  # a relayed copy differing from what we hold
    FULL = "full"                # at MAX_NODES and nothing we may evict for it


class Membership:
    """Known records with the local time each was last refreshed, and tombstones of withdrawn
    nodes so a stale copy still circulating cannot bring one back. Not thread-safe: used from
    the event loop only.

    Trust (docs/architecture.md, "Static store"): a record received from the node it names, over
    a connection authenticated as that node, is FIRST-HAND and authoritative. Any other record
    (relayed by a peer, or in a peer's answer) is HEARSAY: it may introduce a node we do not know
    and refresh the heartbeat of one we do, but never change a known node's underlay, pod CIDR,
    VTEP MAC or peer address, and never replace a first-hand record. Claim times are the
    holder's: the time this node first saw a claim once it has joined (relayed times are trusted
    only for the view it joins with), so a peer cannot backdate a claim to win an overlap."""

    def __init__(self, self_name: str, timeout_s: float, clock=time.monotonic, wall=now_ms,
                 max_nodes: int = MAX_NODES, max_tombstones: int = MAX_TOMBSTONES,
                 claims: dict[str, tuple[str, int]] | None = None):
        self.self_name = self_name
        self.timeout_s = timeout_s
        self.clock = clock
        self.wall = wall
        self.max_nodes = max_nodes
        self.max_tombstones = max_tombstones
        self.records: dict[str, NodeRecord] = {}
        self.seen: dict[str, float] = {}
        self.firsthand: set[str] = set()  # names whose record we hold came from themselves
        # name -> (last heartbeat_ms withdrawn, when): oldest first, bounded in size and age
        self.tombstones: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()
        # name -> (pod CIDR, claim time) this node dated before it restarted (claims())
        self.remembered = dict(claims or {})
        # Set once this node has a view of the cluster of its own (its first exchange, or the
        # dates it remembers): from then on a claim it has not seen is dated by its clock.
        self.joined = bool(self.remembered)

    def set_self(self, record: NodeRecord) -> None:
        self.records[record.name] = record
        self.seen[record.name] = self.clock()
        self.firsthand.add(record.name)

    def merge(self, incoming: NodeRecord, firsthand: bool = False) -> bool:
        """Take a (validated) record if the trust rules allow; True when routing changed."""
        return self.judge(incoming, firsthand) == Verdict.CHANGED

    def judge(self, incoming: NodeRecord, firsthand: bool = False) -> str:
        name = incoming.name
        if name == self.self_name:
            return Verdict.SELF
        known = self.records.get(name)
        if firsthand:
            if known is not None and name in self.firsthand and not newer(incoming, known):
                return Verdict.STALE  # reordered delivery; hearsay never blocks first-hand
        else:
            tomb = self.tombstones.get(name)
            if tomb is not None and incoming.heartbeat_ms <= tomb[0]:
                return Verdict.STALE
            if known is not None:
                if not newer(incoming, known):
                    return Verdict.STALE
                if _routing_fields(known) != _routing_fields(incoming):
                    return Verdict.HEARSAY_CONFLICT
                self.records[name] = dataclasses.replace(known, heartbeat_ms=incoming.heartbeat_ms)
                self.seen[name] = self.clock()
                return Verdict.REFRESHED
        if known is None and len(self.records) >= self.max_nodes and not self._evict_for(firsthand):
            return Verdict.FULL
        if known is not None and known.pod_cidr == incoming.pod_cidr:
            claimed = known.started_ms
        elif self.remembered.get(name, ("",))[0] == incoming.pod_cidr:
            claimed = self.remembered[name][1]
        elif self.joined:
            claimed = max(self.wall(), incoming.started_ms)
        else:
            claimed = incoming.started_ms
        record = dataclasses.replace(incoming, started_ms=claimed)
        self.records[name] = record
        self.seen[name] = self.clock()
        if firsthand:
            self.firsthand.add(name)
        else:
            self.firsthand.discard(name)
        self.tombstones.pop(name, None)
        if known is None or _routing_fields(known) != _routing_fields(record) \
                or known.started_ms != record.started_ms:
            return Verdict.CHANGED
        return Verdict.REFRESHED

    def _evict_for(self, firsthand: bool) -> bool:
        """Make room for a node that speaks for itself: drop the hearsay-only record heard of
        least recently. Hearsay never evicts anything (a flood of forged names stops at the cap)."""
        if not firsthand:
            return False
        victims = [n for n in self.records if n not in self.firsthand]
        if not victims:
            return False
        victim = min(victims, key=lambda n: self.seen.get(n, 0.0))
        self.remove(victim)
        return True

    def expire(self) -> list[str]:
        """Withdraw nodes silent for longer than the timeout; return their names. Tombstones
        live for three timeouts (longer than any copy keeps circulating) and at most
        max_tombstones of them, oldest dropped first."""
        now = self.clock()
        gone = [n for n, t in self.seen.items()
                if n != self.self_name and now - t > self.timeout_s]
        for name in gone:
            self.tombstones.pop(name, None)
            self.tombstones[name] = (self.records.pop(name).heartbeat_ms, now)
            del self.seen[name]
            self.firsthand.discard(name)
        while self.tombstones:
            name, (_, when) = next(iter(self.tombstones.items()))
            if len(self.tombstones) <= self.max_tombstones and now - when <= 3 * self.timeout_s:
                break
            del self.tombstones[name]
        return gone

    def remove(self, name: str) -> bool:
        if name == self.self_name or name not in self.records:
            return False
        del self.records[name]
        self.seen.pop(name, None)
        self.firsthand.discard(name)
        return True

    def age(self, name: str) -> float:
        if name == self.self_name or name not in self.seen:
            return 0.0
        return max(0.0, self.clock() - self.seen[name])

    def all(self) -> list[NodeRecord]:
        return sorted(self.records.values(), key=lambda r: r.name)

    def claims(self) -> dict[str, tuple[str, int]]:
        """The claim dates to keep across a restart (other nodes'; ours is kept apart)."""
        return {r.name: (r.pod_cidr, r.started_ms) for r in self.records.values()
                if r.name != self.self_name}


def _routing_fields(r: NodeRecord) -> tuple:
    """What hearsay may never change (started_ms is the holder's own, so not compared)."""
    return (r.underlay_ip, r.pod_cidr, r.vtep_mac, r.peer_address)
