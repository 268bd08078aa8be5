"""Node records and the pure rules on them: merging, CIDR conflicts, liveness."""
import dataclasses
import functools
import ipaddress
import time

from ..macs import stable_mac


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    name: str
    underlay_ip: str
    pod_cidr: str
    vtep_mac: str = ""
    heartbeat_ms: int = 0   # the origin's wall clock at its last renewal
    peer_address: str = ""  # static store: where its Peer service listens
    started_ms: int = 0     # when it first claimed pod_cidr: the older claim wins an overlap

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NodeRecord":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def now_ms() -> int:
    return int(time.time() * 1000)


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


class Membership:
    """Known records with the local time each was last refreshed, and tombstones of withdrawn
    nodes so a stale copy still circulating cannot bring one back. Not thread-safe: used from
    the event loop only."""

    def __init__(self, self_name: str, timeout_s: float, clock=time.monotonic):
        self.self_name = self_name
        self.timeout_s = timeout_s
        self.clock = clock
        self.records: dict[str, NodeRecord] = {}
        self.seen: dict[str, float] = {}
        self.tombstones: dict[str, int] = {}  # name -> last heartbeat_ms withdrawn

    def set_self(self, record: NodeRecord) -> None:
        self.records[record.name] = record
        self.seen[record.name] = self.clock()

    def merge(self, incoming: NodeRecord) -> bool:
        """Take a record if it is newer than what we hold; True when something changed."""
        if incoming.name == self.self_name:
            return False
        if incoming.heartbeat_ms <= self.tombstones.get(incoming.name, -1):
            return False
        known = self.records.get(incoming.name)
        if not newer(incoming, known):
            return False
        self.records[incoming.name] = incoming
        self.seen[incoming.name] = self.clock()
        self.tombstones.pop(incoming.name, None)
        return known is None or _routing_fields(known) != _routing_fields(incoming)

    def expire(self) -> list[str]:
        """Withdraw nodes silent for longer than the timeout; return their names."""
        now = self.clock()
        gone = [n for n, t in self.seen.items()
                if n != self.self_name and now - t > self.timeout_s]
        for name in gone:
            self.tombstones[name] = self.records.pop(name).heartbeat_ms
            del self.seen[name]
        return gone

    def remove(self, name: str) -> bool:
        if name == self.self_name or name not in self.records:
            return False
        del self.records[name]
        self.seen.pop(name, None)
        return True

    def age(self, name: str) -> float:
        if name == self.self_name or name not in self.seen:
            return 0.0
        return max(0.0, self.clock() - self.seen[name])

    def all(self) -> list[NodeRecord]:
        return sorted(self.records.values(), key=lambda r: r.name)


def _routing_fields(r: NodeRecord) -> tuple:
    return (r.underlay_ip, r.pod_cidr, r.vtep_mac, r.peer_address, r.started_ms)
