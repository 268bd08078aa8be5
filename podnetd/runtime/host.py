"""Host-side kernel operations of the pod runtime: mounts, pod network namespaces, cgroup
facts, process handles. Flat functions, idempotent where it makes sense, errors carry the path.
(The runc/crun invocations live in oci.py.)"""
import contextlib
import ctypes
import errno
import os
import stat
import subprocess

from ..kernel.errors import KernelError, from_errno

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
NETNS_DIR = "/run/netns"


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                     flags, data.encode() if data else None)
    if rc != 0:
        raise from_errno(ctypes.get_errno(), f"mount {fstype or 'bind'} {source} on {target}")


def mount_overlay(lower: list[str], upper: str, work: str, target: str) -> None:
    for d in (upper, work, target):
        os.makedirs(d, exist_ok=True)
    # ismount compares the device with the parent's: an overlay or a tmpfs always has its
    # own, and reading the host's mountinfo (hundreds of lines on a busy node) costs far more
    if os.path.ismount(target):
        return
    _mount("overlay", target, "overlay", 0,
           f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}")


def mount_tmpfs(target: str, size_bytes: int | None = None, mode: str = "1777") -> None:
    os.makedirs(target, exist_ok=True)
    if os.path.ismount(target):
        return
    opts = f"mode={mode}" + (f",size={size_bytes}" if size_bytes else "")
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, opts)


def umount(target: str) -> None:
    """Lazily unmount target (and whatever is stacked on it); absent or unmounted is fine:
    umount2 says so itself (EINVAL: not a mount point, ENOENT: no such path), without a read
    of the host's mountinfo per call."""
    while True:
        if _libc.umount2(target.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
                return
            raise from_errno(err, f"umount {target}")


def bind_fd(fd: int, target: str) -> None:
    """Bind-mount (recursively) exactly what fd refers to on target, through /proc/self/fd:
    the kernel mounts the object that was opened and checked, not whatever a path names now
    (the kubelet's fix for CVE-2017-1002101). target must exist with the same type."""
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC, None)
    try:  # a staging copy: nothing mounted later on either side propagates to the other
        _mount("none", target, None, MS_PRIVATE | MS_REC, None)
    except KernelError:
        umount(target)
        raise


def mounts_under(prefix: str) -> list[str]:
    prefix = os.path.realpath(prefix).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        return [p for p in (line.split()[4] for line in f) if p.startswith(prefix)]


# -- paths inside trees that containers or images control ---------------------------------
# A volume a container can write to and an image's root are hostile trees: a path inside them
# is resolved by the kernel without leaving them (openat2), or, on kernels before 5.6, one
# component at a time with O_NOFOLLOW, refusing every link.

SYS_OPENAT2 = 437  # the same number on every architecture (added after the syscall table merge)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_openat2_missing = False  # set once the kernel says ENOSYS (then: the per-component walk)


class UnsafePath(OSError):
    """A path inside a hostile tree could not be opened safely; str() is for users."""

    def __init__(self, code: int, path: str, why: str):
        super().__init__(code, why, path)
        self.message = f"{path}: {why}"

    def __str__(self) -> str:
        return self.message


_WHY = {errno.ELOOP: "a symbolic link is in the path (not allowed)",
        errno.EXDEV: "the path leads out of its tree",
        errno.ENOENT: "no such file or directory",
        errno.ENOTDIR: "a component of the path is not a directory",
        errno.EACCES: "permission denied"}


def relative_parts(path: str) -> list[str]:
    """'a//b/./c' -> ['a', 'b', 'c']; absolute paths and '..' are refused (ValueError)."""
    if path.startswith("/"):
        raise ValueError(f"{path}: must be a relative path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{path}: must not contain '..'")
    if "\0" in path:
        raise ValueError(f"{path!r}: must not contain NUL")
    return parts


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2); OSError on failure (ENOSYS on kernels before 5.6)."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    for _ in range(32):  # EAGAIN: a rename raced a '..' step; the kernel asks to retry
        fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd),
                           ctypes.c_char_p(path.encode()), ctypes.byref(how),
                           ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _walk_nofollow(dirfd: int, parts: list[str]) -> int:
    """The fallback: open each component below dirfd with O_PATH|O_NOFOLLOW; a link anywhere
    is refused (ELOOP), '..' never gets here (relative_parts)."""
    cur = os.dup(dirfd)
    try:
        for i, part in enumerate(parts):
            nxt = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = nxt
            mode = os.fstat(cur).st_mode
            bad = errno.ELOOP if stat.S_ISLNK(mode) else (  # O_PATH|O_NOFOLLOW: the link itself
                errno.ENOTDIR if i < len(parts) - 1 and not stat.S_ISDIR(mode) else 0)
            if bad:
                raise OSError(bad, os.strerror(bad), "/".join(parts[:i + 1]))
        return cur
    except BaseException:
        os.close(cur)
        raise


def open_beneath(dirfd: int, path: str, *, in_root: bool = False) -> int:
    """An O_PATH fd for path inside the directory dirfd, never leaving it.

    in_root=False (a subPath in a volume): no symbolic link anywhere in the path, no '..',
    not absolute. in_root=True (a file of an image, looked up as the container will see it):
    links are followed as if dirfd were '/', so '/etc/shadow' or '../../x' stay inside.
    Raises UnsafePath (an OSError whose errno says what happened) with a message for users."""
    global _openat2_missing
    try:
        parts = relative_parts(path)
    except ValueError as e:
        raise UnsafePath(errno.EINVAL, path, str(e).partition(": ")[2]) from None
    rel = "/".join(parts) or "."
    resolve = RESOLVE_NO_MAGICLINKS | (RESOLVE_IN_ROOT if in_root
                                       else RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
    try:
        if not _openat2_missing:
            try:
                return _openat2(dirfd, rel, os.O_PATH, resolve)
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise
                _openat2_missing = True
        return _walk_nofollow(dirfd, parts)
    except OSError as e:
        raise UnsafePath(e.errno or errno.EIO, path,
                         _WHY.get(e.errno, e.strerror or "cannot open")) from None


def make_dirs_beneath(dirfd: int, path: str, mode: int) -> None:
    """mkdir -p path inside dirfd with mode (exactly: the umask does not apply), creating
    each component with mkdirat and never following a link (kubelet's SafeMakeDir)."""
    try:
        parts = relative_parts(path)
    except ValueError as e:
        raise UnsafePath(errno.EINVAL, path, str(e).partition(": ")[2]) from None
    cur = os.dup(dirfd)
    try:
        for i, part in enumerate(parts):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                nxt = os.open(part, flags, dir_fd=cur)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # another creator won: fine
                    os.mkdir(part, mode, dir_fd=cur)
                nxt = os.open(part, flags, dir_fd=cur)
                os.fchmod(nxt, mode)
            os.close(cur)
            cur = nxt
    except OSError as e:
        where = "/".join(parts[:i + 1]) if parts else path
        raise UnsafePath(e.errno or errno.EIO, where,
                         _WHY.get(e.errno, e.strerror or "cannot create")) from None
    finally:
        os.close(cur)


def open_dir_nofollow(path: str) -> int:
    """An O_PATH fd of a directory we made (a volume's root); a link there is refused."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def read_regular_beneath(root: str, path: str, limit: int) -> bytes:
    """The content of path inside root (an image's rootfs) as the container would see it, read
    only when it is a regular file of at most limit bytes: a FIFO, a device, a directory or a
    link out of the root gives UnsafePath, never a block or the host's file."""
    rootfd = open_dir_nofollow(root)
    try:
        fd = open_beneath(rootfd, path, in_root=True)
    finally:
        os.close(rootfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(errno.EINVAL, path, "not a regular file")
        if st.st_size > limit:
            raise UnsafePath(errno.EFBIG, path, f"larger than {limit} bytes")
        # reopen the checked inode for reading (an O_PATH fd cannot read); O_NONBLOCK in
        # case it is not what fstat said any more
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
                      | os.O_CLOEXEC)
    finally:
        os.close(fd)
    try:
        if not stat.S_ISREG(os.fstat(rfd).st_mode):
            raise UnsafePath(errno.EINVAL, path, "not a regular file")
        data = os.read(rfd, limit + 1)
    finally:
        os.close(rfd)
    if len(data) > limit:
        raise UnsafePath(errno.EFBIG, path, f"larger than {limit} bytes")
    return data


def open_host_path(path: str) -> int:
    """An O_PATH fd of a hostPath volume's path. The path is the manifest author's (links are
    followed, as Kubernetes does), but it is resolved once: the type check and the mount see
    the same object, whatever a container later does to that path."""
    return os.open(path, os.O_PATH | os.O_CLOEXEC)


def fd_kind(fd: int) -> str:
    """'directory', 'file', 'socket', 'fifo', 'char device', 'block device' or 'symlink'."""
    mode = os.fstat(fd).st_mode
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISREG, "file"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISCHR, "char device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "unknown"


def disk_usage(path: str, stop_above: int, max_depth: int = 256) -> int:
    """Bytes allocated (st_blocks) in the tree at path, as `du` counts them: each inode once,
    no link followed (every directory is opened with O_NOFOLLOW relative to its parent, so a
    container renaming things meanwhile cannot send the walk to the host's files), no other
    filesystem entered. Stops once the count passes stop_above: the caller asks "over the
    limit?", and the work stays bounded by the limit rather than by what a container wrote.
    Directories below max_depth are not entered (one open fd per level)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(path, flags)
    dev = os.fstat(top).st_dev
    total = os.fstat(top).st_blocks * 512
    seen: set[int] = set()
    stack = [(top, os.scandir(top))]
    try:
        while stack and total <= stop_above:
            fd, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                entries.close()
                os.close(fd)
                stack.pop()
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != dev or (st.st_nlink > 1 and st.st_ino in seen):
                continue
            if st.st_nlink > 1:
                seen.add(st.st_ino)
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode) and len(stack) < max_depth:
                try:
                    child = os.open(entry.name, flags, dir_fd=fd)
                except OSError:
                    continue
                stack.append((child, os.scandir(child)))
        return total
    finally:
        for fd, entries in stack:
            entries.close()
            os.close(fd)


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
