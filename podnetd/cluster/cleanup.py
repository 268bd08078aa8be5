"""`podnetd --cleanup`: remove everything podnetd created on this node, keep going past
failures, report each one on a line, exit 1 if any remained. With --store etcd that includes
the node's claim on its pod CIDR block: the node is deleted from the cluster, every other node
withdraws its routes and the block is free for another node."""
import sys

from .. import firewall
from ..kernel import ip_lib
from ..kernel.errors import KernelError
from . import routing
from .flags import CleanupRequest


def run(cfg: CleanupRequest) -> int:
    errors = []
    errors += firewall.remove_tables()
    errors += routing.remove_all(cfg.vxlan_dev)
    try:
        link = ip_lib.link_get(cfg.bridge)
        if link is not None and link["kind"] == "bridge":
            ip_lib.link_delete(cfg.bridge)
    except KernelError as e:
        errors.append(str(e))
    if cfg.etcd is not None:
        errors += _release_claim(cfg)
    for e in errors:
        sys.stderr.write(f"podnetd: cleanup: {e}\n")
    return 1 if errors else 0


def _release_claim(cfg) -> list[str]:
    from .etcd import StoreUnavailable, release_claim_now
    try:
        released = release_claim_now(cfg.etcd, cfg.node_name)
    except StoreUnavailable as e:
        return [f"release node {cfg.node_name}'s pod CIDR claim in etcd: {e}"]
    for cidr in released:
        sys.stdout.write(f"podnetd: cleanup: released node {cfg.node_name}'s claim on {cidr} in etcd\n")
    return []
