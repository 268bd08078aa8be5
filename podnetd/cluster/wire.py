"""Plugs the cluster feature into podnetd's extension points (imported by podnetd.main)."""
from .. import daemon, server
from . import flags, service  # noqa: F401 - flags registers itself with podnetd.config
from .component import ClusterComponent


async def _prepare(d) -> None:
    d.cluster = None
    if getattr(d.cfg, "cluster", False):
        d.cluster = ClusterComponent(d)
        await d.cluster.prepare()


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
