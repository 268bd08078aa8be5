"""What a new cluster holds before anyone writes to it, as kube-apiserver bootstraps it: the
system namespaces and the default RBAC policy. Created by whichever node starts first; a node
that finds them there leaves them as they are (an admin may have changed them)."""
import logging

from . import kinds, objects
from .registry import Registry

log = logging.getLogger(__name__)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def namespaces() -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
            for n in SYSTEM_NAMESPACES]


async def ensure(registry: Registry, policy: list[dict]) -> int:
    """Create what is missing; returns how many objects were created."""
    created = 0
    for obj in [*namespaces(), *policy]:
        kind = kinds.BY_KIND[obj["kind"]]
        try:
            await registry.create(kind, obj["metadata"].get("namespace", ""), obj,
                                  validate_namespace=False)
            created += 1
        except objects.AlreadyExists:
            pass
    if created:
        log.info("cluster API: bootstrapped %d objects (system namespaces, RBAC policy)", created)
    return created
