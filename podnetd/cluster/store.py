"""The Store interface: where node records are published and learnt."""
from dataclasses import dataclass
from typing import Callable

from .flags import ClusterConfig
from .records import NodeRecord


@dataclass(frozen=True)
class LocalNode:
    """This node as its store sees it (decided before node setup: cluster/component.py)."""
    name: str
    ip: str                  # the underlay address
    pod_cidr: str | None     # --pod-cidr; None: the store leases one
    state_dir: str | None    # where the store keeps what survives a restart (None: nothing)


class Store:
    name = ""

    def __init__(self, cfg: ClusterConfig, node: LocalNode, on_change: Callable[[], None]):
        self.cfg = cfg
        self.node = node
        self.on_change = on_change

    async def lease_cidr(self, node_name: str, vtep_mac: str) -> str | None:
        """Before node setup: the pod CIDR this store hands the node, or None when the node
        brings its own (--pod-cidr). vtep_mac goes into the record published with it."""
        return None

    async def start(self, own: NodeRecord) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def records(self) -> list[NodeRecord]:
        """Every live record, this node's included."""
        raise NotImplementedError

    def age(self, name: str) -> float:
        """Seconds since this node last heard of name's liveness."""
        return 0.0

    def synced(self) -> bool:
        """True once the store has a complete view, so that a missing record means a departed
        node (before that, e.g. right after a restart, nothing is removed)."""
        return True

    def last_sync(self) -> float | None:
        """time.monotonic() of the last complete exchange with the store (etcd: a listing;
        static: a peer that answered or called), None before the first."""
        return None

    def rounds(self) -> int:
        """Gossip rounds made (the static store; 0 for others)."""
        return 0

    def problem(self) -> str | None:
        return None

    def refusal(self) -> str | None:
        """Why the cluster refuses this node (said by a peer), or None."""
        return None
