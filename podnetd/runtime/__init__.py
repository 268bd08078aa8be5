"""The pod runtime: Kubernetes Pod manifests run by runc/crun with the network through CNI.

FEATURE (podnetd/features.py) gives podnetd its flags (RuntimeConfig), the component and the
podnet.v1.PodService service.
The runtime is created lazily on daemon start, so podnetd with only the network flags works
as before (the runtime needs nothing until a pod is run)."""
import logging
import os
import shutil
from dataclasses import dataclass

from .. import config
from ..wiring import DaemonContext, Feature
from . import manifest

DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CNI_BIN_DIR = "/opt/cni/bin"


@dataclass(frozen=True)
class RuntimeConfig:
    """The pod runtime's flags, checked and parsed."""
    cni_conf_dir: str
    cni_bin_dirs: tuple[str, ...]   # --cni-bin-dir split at ':' (CNI_PATH)
    oci_runtime: str                # "runc" or "crun"
    runtime_dir: str                # --runtime-dir, or STATE_DIR/runtime
    restart_backoff: float          # seconds, the first container restart back-off
    restart_backoff_max: float
    container_log_max_size: int     # bytes
    container_log_max_files: int
    seccomp_profile_root: str


def add_flags(p) -> None:
    g = p.add_argument_group("pod runtime")
    g.add_argument("--cni-conf-dir", default=DEFAULT_CNI_CONF_DIR,
                   help="where the pod runtime reads its CNI network configuration list")
    g.add_argument("--cni-bin-dir", default=DEFAULT_CNI_BIN_DIR,
                   help="CNI plugin directories (colon-separated), passed as CNI_PATH")
    g.add_argument("--oci-runtime", default="runc", choices=["runc", "crun"],
                   help="the OCI runtime that runs containers")
    g.add_argument("--runtime-dir", help="bundles, container roots, logs and images "
                                         "(default: STATE_DIR/runtime)")
    g.add_argument("--restart-backoff", type=float, default=10.0,
                   help="first container restart back-off in seconds (doubles each time)")
    g.add_argument("--restart-backoff-max", type=float, default=300.0,
                   help="the longest container restart back-off in seconds")
    g.add_argument("--container-log-max-size", default="10Mi", metavar="QUANTITY",
                   help="a container log file is rotated when it reaches this size "
                        "(kubelet's containerLogMaxSize; e.g. 10Mi, 512Ki, 1048576)")
    g.add_argument("--container-log-max-files", type=int, default=5, metavar="N",
                   help="log files kept per container, the current one included "
                        "(kubelet's containerLogMaxFiles; at least 2)")
    g.add_argument("--seccomp-profile-root", default="/var/lib/podnet/seccomp",
                   help="where seccompProfile type Localhost profiles live (localhostProfile "
                        "is a path below it)")
    g.add_argument("--no-pod-runtime", action="store_true",
                   help="do not run the pod runtime in this podnetd")


def runtime_config(ns, daemon: config.DaemonConfig) -> RuntimeConfig | None:
    """The runtime feature's config(): None with --no-pod-runtime."""
    if ns.no_pod_runtime:
        return None
    if not os.path.isabs(ns.seccomp_profile_root):
        raise config.ConfigError(f"--seccomp-profile-root {ns.seccomp_profile_root}: must be an "
                                 "absolute path")
    if ns.runtime_dir and not os.path.isabs(ns.runtime_dir):
        raise config.ConfigError(f"--runtime-dir {ns.runtime_dir}: must be an absolute path")
    if not 0 < ns.restart_backoff <= ns.restart_backoff_max:
        raise config.ConfigError("--restart-backoff must be > 0 and <= --restart-backoff-max")
    max_size = log_size(ns.container_log_max_size)
    if not 2 <= ns.container_log_max_files <= 1000:
        raise config.ConfigError(f"--container-log-max-files {ns.container_log_max_files}: "
                                 "must be between 2 and 1000 (the current file counts)")
    return RuntimeConfig(
        cni_conf_dir=ns.cni_conf_dir, cni_bin_dirs=tuple(ns.cni_bin_dir.split(":")),
        oci_runtime=ns.oci_runtime,
        runtime_dir=ns.runtime_dir or os.path.join(daemon.state_dir, "runtime"),
        restart_backoff=ns.restart_backoff, restart_backoff_max=ns.restart_backoff_max,
        container_log_max_size=max_size, container_log_max_files=ns.container_log_max_files,
        seccomp_profile_root=ns.seccomp_profile_root)


def log_size(value) -> int:
    """kubelet's containerLogMaxSize: a Kubernetes quantity (10Mi, 512Ki, 1e9), 1 KiB to 1 TiB,
    in bytes."""
    try:
        size = manifest.parse_quantity(str(value).strip())
    except ValueError:
        size = None
    if size is None or size != size.to_integral_value() or not 1024 <= size <= 2**40:
        raise config.ConfigError(f"--container-log-max-size {value!r}: give a size from 1Ki "
                                 "to 1Ti, e.g. 10Mi")
    return int(size)


def make_component(ctx: DaemonContext, cfg: RuntimeConfig):
    # imported here: a podnetd without the runtime does not load it (see the docstring)
    from .runtime import Runtime
    for needed in (cfg.oci_runtime, "conmon"):
        if shutil.which(needed) is None:
            # the network keeps working on a host without an OCI runtime; pods are not offered
            logging.getLogger(__name__).warning("pod runtime off: %s is not installed", needed)
            return None
    return Runtime(ctx, cfg)


def register_service(srv, ctx: DaemonContext, rt) -> list[str]:
    if rt is None:
        return []
    from ..api.podnet.v1 import pods_pb2, pods_pb2_grpc
    from .service import PodsService
    pods_pb2_grpc.add_PodServiceServicer_to_server(PodsService(rt), srv)
    return [pods_pb2.DESCRIPTOR.services_by_name["PodService"].full_name]


FEATURE = Feature("runtime", add_flags=add_flags, config=runtime_config,
                  component=make_component, services=register_service)
