"""What the node knows about itself for its Node object, read from the OS (blocking: called
off the event loop)."""
import functools
import os
import shutil
import subprocess

from . import node_object


def os_image() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')[:200]
    except OSError:
        pass
    return "Linux"


def memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


@functools.lru_cache(maxsize=4)
def container_runtime(oci: str) -> str:
    """runc://1.1.5 (kubelet shows containerd://1.7.x; our runtime is podnetd driving runc)."""
    path = shutil.which(oci)
    if not path:
        return f"{oci}://unknown"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=5).stdout
        version = out.split()[2] if out.startswith(f"{oci} version") else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "unknown"
    return f"{oci}://{version}"


def memory_available_bytes() -> int:
    """MemAvailable (the kernel's estimate of what can be had without swapping); -1 unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return -1


def pressures(state_dir: str) -> tuple[bool, bool]:
    """(memory pressure, disk pressure) of the node, its filesystem being the state dir's."""
    try:
        st = os.statvfs(state_dir)
        disk = (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, st.f_files, st.f_favail)
    except OSError:
        disk = (0, 0, 0, 0)
    return node_object.pressures(memory_available_bytes(), *disk)


def storage_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
        return st.f_blocks * st.f_frsize
    except OSError:
        return 0


def gather(name: str, internal_ip: str, pod_cidr: str, oci: str, state_dir: str, *,
           labels=(), taints=(), system_reserved=(), max_pods=110,
           api_port=0, api_scope="cluster", images=()) -> node_object.NodeFacts:
    memory_pressure, disk_pressure = pressures(state_dir)
    return node_object.NodeFacts(
        name=name, internal_ip=internal_ip, pod_cidr=pod_cidr, cpus=os.cpu_count() or 1,
        memory_bytes=memory_bytes(), os_image=os_image(), kernel_version=os.uname().release,
        container_runtime=container_runtime(oci), labels=tuple(labels), taints=tuple(taints),
        system_reserved=tuple(system_reserved), max_pods=max_pods,
        ephemeral_storage_bytes=storage_bytes(state_dir), api_port=api_port,
        api_scope=api_scope, memory_pressure=memory_pressure, disk_pressure=disk_pressure,
        images=tuple(images))
