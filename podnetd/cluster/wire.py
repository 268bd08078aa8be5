"""The cluster feature of podnetd (podnetd/features.py): its flags and their ClusterConfig
(flags.py), the component (component.py: its prepare() decides the underlay, the pod MTU and,
with etcd, the pod CIDR before node setup), the service (service.py)."""
from ..wiring import Feature
from . import flags, service
from .component import ClusterComponent


def _component(ctx, cfg: flags.ClusterConfig | flags.CleanupRequest) -> ClusterComponent | None:
    if isinstance(cfg, flags.CleanupRequest):  # main.py runs the cleanup, never the daemon
        return None
    return ClusterComponent(ctx, cfg)


FEATURE = Feature("cluster", add_flags=flags.add_flags, config=flags.cluster_config,
                  component=_component, services=service.register)
