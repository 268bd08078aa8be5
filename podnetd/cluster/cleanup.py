"""`podnetd --cleanup`: remove everything podnetd created on this node, keep going past
failures, report each one on a line, exit 1 if any remained."""
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
    for e in errors:
        sys.stderr.write(f"podnetd: cleanup: {e}\n")
    return 1 if errors else 0
