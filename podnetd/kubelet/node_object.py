"""The Node object a podnetd registers for itself, built from facts (pure logic): labels,
taints, capacity and allocatable, addresses, podCIDR, the Ready condition and nodeInfo, as the
kubelet fills them in."""
import dataclasses
import platform
from decimal import Decimal

from .. import __version__, timestamps
from ..runtime import manifest

HOSTNAME_LABEL = "kubernetes.io/hostname"
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x", "riscv64": "riscv64"}


class NodeConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    name: str
    internal_ip: str
    pod_cidr: str
    cpus: int
    memory_bytes: int
    os_image: str
    kernel_version: str
    container_runtime: str               # e.g. "runc://1.1.5"
    labels: tuple[tuple[str, str], ...] = ()
    taints: tuple[dict, ...] = ()
    system_reserved: tuple[tuple[str, str], ...] = ()   # ("cpu", "500m"), ("memory", "1Gi")
    max_pods: int = 110
    ephemeral_storage_bytes: int = 0
    api_port: int = 0                     # the node's --api-listen port, for logs/exec
    api_scope: str = "cluster"            # "cluster" (etcd) or "node-local" (its own store)
    memory_pressure: bool = False         # below the kubelet's hard eviction thresholds
    disk_pressure: bool = False           # (see pressures())
    images: tuple = ()                    # ((name, ...), size in bytes): what the node holds


def arch() -> str:
    machine = platform.machine()
    return ARCHES.get(machine, machine)


def parse_labels(text: str | None) -> tuple[tuple[str, str], ...]:
    """--node-labels k=v,k2=v2 (kubelet's flag)."""
    out = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        problem = manifest.key_problem(key)
        if not sep or problem:
            raise NodeConfigError(f"--node-labels {part!r}: expected KEY=VALUE"
                                  + (f" ({problem})" if sep and problem else ""))
        if len(value) > 63 or not manifest.LABEL_VALUE.fullmatch(value):
            raise NodeConfigError(f"--node-labels {part!r}: invalid label value")
        out.append((key, value))
    return tuple(out)


def parse_taints(text: str | None) -> tuple[dict, ...]:
    """--register-with-taints k=v:NoSchedule,k2:NoExecute (kubelet's flag)."""
    out = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        head, sep, effect = part.rpartition(":")
        key, _, value = head.partition("=")
        if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") \
                or manifest.key_problem(key):
            raise NodeConfigError(f"--register-with-taints {part!r}: expected "
                                  "KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute")
        taint = {"key": key, "effect": effect}
        if value:
            taint["value"] = value
        out.append(taint)
    return tuple(out)


def parse_reserved(text: str | None) -> tuple[tuple[str, str], ...]:
    """--system-reserved cpu=500m,memory=1Gi (kubelet's flag)."""
    out = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in ("cpu", "memory", "ephemeral-storage", "pid"):
            raise NodeConfigError(f"--system-reserved {part!r}: expected cpu=Q, memory=Q, "
                                  "ephemeral-storage=Q or pid=N")
        try:
            manifest.parse_quantity(value)
        except ValueError:
            raise NodeConfigError(f"--system-reserved {part!r}: {value!r} is not a "
                                  "quantity") from None
        out.append((name, value))
    return tuple(out)


def _format_bytes(n: int) -> str:
    return f"{n // 1024}Ki" if n % 1024 == 0 else str(n)


def capacity(f: NodeFacts) -> dict:
    cap = {"cpu": str(f.cpus), "memory": _format_bytes(f.memory_bytes), "pods": str(f.max_pods)}
    if f.ephemeral_storage_bytes:
        cap["ephemeral-storage"] = _format_bytes(f.ephemeral_storage_bytes)
    return cap


def allocatable(f: NodeFacts) -> dict:
    reserved = dict(f.system_reserved)
    cpu_m = Decimal(f.cpus) * 1000 - manifest.parse_quantity(reserved.get("cpu", "0")) * 1000
    memory = Decimal(f.memory_bytes) - manifest.parse_quantity(reserved.get("memory", "0"))
    out = {"cpu": f"{max(0, int(cpu_m))}m" if cpu_m % 1000 else str(max(0, int(cpu_m // 1000))),
           "memory": _format_bytes(max(0, int(memory))), "pods": str(f.max_pods)}
    if f.ephemeral_storage_bytes:
        storage = Decimal(f.ephemeral_storage_bytes) - manifest.parse_quantity(
            reserved.get("ephemeral-storage", "0"))
        out["ephemeral-storage"] = _format_bytes(max(0, int(storage)))
    return out


def labels(f: NodeFacts) -> dict:
    out = {HOSTNAME_LABEL: f.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch(),
           "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": arch()}
    out.update(dict(f.labels))
    return out


MAX_IMAGES = 50     # the kubelet's nodeStatusMaxImages


def node_images(images: list[dict]) -> tuple:
    """The runtime's images (ImageStore.list(): name, id, size) as node.status.images reports
    them: one entry per image with all its names (a Docker Hub one also under its full
    docker.io/library/ name), largest first, at most MAX_IMAGES."""
    by_id: dict[str, tuple[set, int]] = {}
    for img in images:
        names, _ = by_id.setdefault(img.get("id", ""), (set(), int(img.get("size") or 0)))
        name = img.get("name", "")
        names.add(name)
        first = name.split("/", 1)[0]
        if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
            names.add("docker.io/" + ("" if "/" in name else "library/") + name)
    entries = sorted(((tuple(sorted(n)), size) for n, size in by_id.values()),
                     key=lambda e: (-e[1], e[0]))
    return tuple(entries[:MAX_IMAGES])


# The kubelet's default hard eviction thresholds (--eviction-hard): memory.available<100Mi,
# nodefs.available<10%, nodefs.inodesFree<5%.
MEMORY_AVAILABLE_MIN = 100 * 2**20
NODEFS_AVAILABLE_MIN = 0.10
NODEFS_INODES_FREE_MIN = 0.05

PRESSURES = {   # condition -> (reason, message) when False, when True: the kubelet's words
    "MemoryPressure": (("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                       ("KubeletHasInsufficientMemory",
                        "kubelet has insufficient memory available")),
    "DiskPressure": (("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                     ("KubeletHasDiskPressure", "kubelet has disk pressure")),
}


def pressures(memory_available: int, disk_total: int, disk_available: int, inodes_total: int,
              inodes_free: int) -> tuple[bool, bool]:
    """(memory pressure, disk pressure) against the kubelet's default thresholds; unknown
    totals (0) are no pressure."""
    memory = 0 <= memory_available < MEMORY_AVAILABLE_MIN
    disk = bool(disk_total) and disk_available < disk_total * NODEFS_AVAILABLE_MIN \
        or bool(inodes_total) and inodes_free < inodes_total * NODEFS_INODES_FREE_MIN
    return memory, disk


def _condition(kind: str, status: str, reason: str, message: str, previous: dict | None,
               now: float) -> dict:
    changed = previous is None or previous.get("status") != status
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": timestamps.rfc3339(now),
            "lastTransitionTime": timestamps.rfc3339(now) if changed
            else previous.get("lastTransitionTime", timestamps.rfc3339(now))}


def pressure_condition(kind: str, pressured: bool, previous: dict | None, now: float) -> dict:
    reason, message = PRESSURES[kind][pressured]
    return _condition(kind, str(pressured), reason, message, previous, now)


def ready_condition(ready: bool, message: str, previous: dict | None, now: float) -> dict:
    return _condition("Ready", "True" if ready else "False",
                      "KubeletReady" if ready else "KubeletNotReady", message, previous, now)


def node_status(f: NodeFacts, ready: bool, message: str, previous: dict | None,
                now: float) -> dict:
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    return {
        "capacity": capacity(f), "allocatable": allocatable(f),
        "conditions": [
            pressure_condition("MemoryPressure", f.memory_pressure, old.get("MemoryPressure"),
                               now),
            pressure_condition("DiskPressure", f.disk_pressure, old.get("DiskPressure"), now),
            ready_condition(ready, message, old.get("Ready"), now)],
        "addresses": [{"type": "InternalIP", "address": f.internal_ip},
                      {"type": "Hostname", "address": f.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": f.api_port}},
        "images": [{"names": list(names), "sizeBytes": size} for names, size in f.images],
        "nodeInfo": {"osImage": f.os_image, "kernelVersion": f.kernel_version,
                     "containerRuntimeVersion": f.container_runtime,
                     "kubeletVersion": f"podnet/{__version__}",
                     "kubeProxyVersion": "", "operatingSystem": "linux",
                     "architecture": arch(), "machineID": "", "systemUUID": "",
                     "bootID": ""},
    }


def new_node(f: NodeFacts) -> dict:
    """The Node as first registered (status is written through nodes/status after)."""
    spec = {"podCIDR": f.pod_cidr, "podCIDRs": [f.pod_cidr]}
    if f.taints:
        spec["taints"] = [dict(t) for t in f.taints]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f.name, "labels": labels(f), "annotations": annotations(f)},
            "spec": spec}


API_SCOPE = "podnet.io/cluster-api"   # podnetctl get nodes says when the API is node-local


def annotations(f: NodeFacts) -> dict:
    return {API_SCOPE: f.api_scope}
