"""What podnetd is made of beside its core (IPAM, bridge, endpoints, API), in start order: the
one place where a feature is added.

A Feature names its flags (`add_flags(parser)`) and their checks (`validate(namespace)`, raising
config.ConfigError), an optional step before the node is set up (`prepare(daemon)`: may decide
the pod CIDR, the MTU and the pods' GSO limit), the component started after node setup
(`component(daemon)` -> an object with async start() and stop(), or None when the feature is off
for this configuration) and the gRPC services it serves (`services(server, daemon)` -> the
services' full names). Components start in this order and stop in reverse.
"""
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Feature:
    name: str
    add_flags: Callable | None = None
    validate: Callable | None = None
    prepare: Callable | None = None
    component: Callable | None = None
    services: Callable | None = None


def all_features() -> tuple[Feature, ...]:
    """The firewall first (anti-spoofing and the node's input limits exist before any pod is
    attached), then cluster routing, then the cluster API (its store may be the cluster's etcd),
    then the pod runtime (its pods need the network), then the node agent (it runs the
    cluster's pods with the runtime and reports to the API), then the control plane (leader
    election for the scheduler and the controllers)."""
    from .apiserver.wire import FEATURE as apiserver
    from .cluster.wire import FEATURE as cluster
    from .controllers.wire import FEATURE as controllers
    from .firewall import FEATURE as firewall
    from .kubelet.wire import FEATURE as kubelet
    from .runtime import FEATURE as runtime
    return (firewall, cluster, apiserver, runtime, kubelet, controllers)
