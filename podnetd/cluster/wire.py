"""Plugs the cluster feature into podnetd's extension points (imported by podnetd.main)."""
from .. import daemon, server
from ..firewall_rules import ClusterRules
from . import flags, service  # noqa: F401 - flags registers itself with podnetd.config
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
    return d.cluster if d.cluster is not None else _Idle()


class _Idle:
    async def start(self):
        pass

    async def stop(self):
        pass


daemon.PRE_SETUP.append(_prepare)
daemon.COMPONENTS.append(_component)
server.SERVICE_REGISTRARS.append(service.register)
