"""The cluster feature of podnetd (podnetd/features.py): its flags, the step before node setup
that decides the underlay, the pod MTU and (etcd) the pod CIDR, the component, the service."""
from ..features import Feature
from ..firewall_rules import ClusterRules
from . import flags, service
from .component import ClusterComponent


async def _prepare(d) -> None:
    d.cluster = None
    if getattr(d.cfg, "cluster", False):
        d.cluster = ClusterComponent(d)
        await d.cluster.prepare()
        # The cluster's part of the node firewall (podnetd/firewall.py, which starts first):
        # egress masquerade, remote pods' access to the node, VXLAN only from known peers.
        d.firewall_cluster = ClusterRules(
            cluster_cidr=d.cfg.cluster_cidr,
            vxlan_port=d.cfg.vxlan_port if d.cluster.backend.uses_vxlan() else None)


def _component(d):
    return d.cluster


FEATURE = Feature("cluster", add_flags=flags.add_flags, validate=flags.validate,
                  prepare=_prepare, component=_component, services=service.register)
