"""A local multi-node lab of network namespaces: an underlay, a podnetd per node, pods.

Layers: plan (addresses, pure), state (the record of what exists, for teardown after a crash),
netops (the only code here that changes the kernel, via `ip`), procs (processes by PID),
pki (a CA and node certificates), lab (the orchestration), pods and probe (traffic checks).
"""
from .lab import Lab, LabError  # noqa: F401
