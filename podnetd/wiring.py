"""The contract between podnetd's daemon and its features (podnetd/features.py says how to add
one): the Feature record, the node plan components may change before node setup, the node once
it is set up, and the context the daemon passes to every component."""
import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import DaemonConfig


@dataclass(frozen=True)
class Feature:
    name: str
    add_flags: Callable | None = None    # (parser) -> None
    config: Callable | None = None       # (namespace, DaemonConfig) -> its config, or None: off
    component: Callable | None = None    # (DaemonContext, its config) -> component or None
    services: Callable | None = None     # (grpc server, DaemonContext, component|None) -> [names]


@dataclass(frozen=True)
class NodePlan:
    """How the node is set up: the core's flags, then what components' prepare() decided."""
    pod_cidr: str | None            # None until a store leases one (--store etcd)
    mtu: int | None                 # None: the uplink's MTU
    node_ip: str | None = None      # the underlay address, when the cluster decided it
    pod_gso_limit: int | None = None  # None: the uplink's (BIG TCP), else this limit
    # The cluster's part of the node firewall (firewall_rules.ClusterRules), or None.
    firewall_cluster: Any = None


@dataclass(frozen=True)
class Node:
    """The node once it is set up (DaemonContext.node)."""
    plan: NodePlan                  # pod_cidr and mtu as set up (never None here)
    net: Any                        # endpoints.NodeNet: bridge, gateway, prefixlen, mtu, GSO
    ipam: Any                       # ipam.Ipam
    endpoints: Any                  # endpoints.Endpoints (attach/detach hooks)
    bridge_facts: Callable[[], dict]  # () -> {"name", "mac"} of the bridge (its stable MAC)
    status: Callable[[], tuple[bool, str]]  # () -> (ready, message): CNI STATUS (blocking)


@dataclass
class DaemonContext:
    """What the daemon shares with its components."""
    config: DaemonConfig
    events: Any                     # events.EventRecorder
    metrics: Any                    # metrics.Metrics
    serving: asyncio.Event          # set once the API and the CNI relay answer
    node: Node | None = None        # set by node setup, before components start
    components: dict[str, Any] = field(default_factory=dict)  # feature name -> component

    def component(self, name: str):
        """The component of feature `name` (None when it is off)."""
        return self.components.get(name)

