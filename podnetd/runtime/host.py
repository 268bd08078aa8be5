"""Host-side kernel operations of the pod runtime: mounts, pod network namespaces, cgroup
facts, process handles. Flat functions, idempotent where it makes sense, errors carry the path.
(The runc/crun invocations live in oci.py.)"""
import ctypes
import errno
import os
import subprocess

from ..kernel.errors import KernelError, from_errno

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
NETNS_DIR = "/run/netns"


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                     flags, data.encode() if data else None)
    if rc != 0:
        raise from_errno(ctypes.get_errno(), f"mount {fstype or 'bind'} {source} on {target}")


def is_mounted(target: str) -> bool:
    target = os.path.realpath(target)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def mount_overlay(lower: list[str], upper: str, work: str, target: str) -> None:
    for d in (upper, work, target):
        os.makedirs(d, exist_ok=True)
    if is_mounted(target):
        return
    _mount("overlay", target, "overlay", 0,
           f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}")


def mount_tmpfs(target: str, size_bytes: int | None = None, mode: str = "1777") -> None:
    os.makedirs(target, exist_ok=True)
    if is_mounted(target):
        return
    opts = f"mode={mode}" + (f",size={size_bytes}" if size_bytes else "")
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, opts)


def umount(target: str) -> None:
    """Lazily unmount target (and whatever is stacked on it); absent or unmounted is fine."""
    while os.path.exists(target) and is_mounted(target):
        if _libc.umount2(target.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            raise from_errno(err, f"umount {target}")


def mounts_under(prefix: str) -> list[str]:
    prefix = os.path.realpath(prefix).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        return [p for p in (line.split()[4] for line in f) if p.startswith(prefix)]


# -- pod network namespaces (named, like `ip netns add`, so CNI gets a stable path) --------

def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def netns_create(name: str) -> str:
    path = netns_path(name)
    if not os.path.exists(path):
        _run(["ip", "netns", "add", name], f"create netns {name}")
    from ..kernel import netns
    try:  # setns in a short-lived thread: cheaper than forking `ip -n NAME link set lo up`
        netns.run_in_netns(path, lambda: netns.ipr().link("set", index=1, state="up"))
    except Exception as e:  # noqa: BLE001 - pyroute2/kernel errors become one line
        raise KernelError(f"set lo up in netns {name}: {e}") from None
    return path


def netns_delete(name: str) -> None:
    if os.path.exists(netns_path(name)):
        _run(["ip", "netns", "del", name], f"delete netns {name}")


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelError(f"{what}: {proc.stderr.strip() or f'exit {proc.returncode}'}")


# -- cgroups -----------------------------------------------------------------------------

def cgroup_v2() -> bool:
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def oom_killed(cgroups_path: str) -> bool:
    """Whether the kernel OOM-killed a process of this (runc-created) cgroup."""
    rel = cgroups_path.lstrip("/")
    if cgroup_v2():
        path, key = f"/sys/fs/cgroup/{rel}/memory.events", "oom_kill"
    else:
        path, key = f"/sys/fs/cgroup/memory/{rel}/memory.oom_control", "oom_kill"
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v) > 0
    except OSError:
        pass
    return False


def bounding_set() -> int:
    """This process's capability bounding set (CapBnd) as a bit mask."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return (1 << 64) - 1


# -- processes ---------------------------------------------------------------------------

def pid_alive(pid: int, marker: str | None = None) -> bool:
    """pid exists and (when marker is given) its command line contains marker."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return marker is None or marker.encode() in cmdline


def pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def reap(pid: int) -> None:
    """Collect a child that exited (shims are our children until podnetd restarts)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
