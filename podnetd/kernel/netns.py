"""Run kernel calls inside a network namespace.

A short-lived thread enters the namespace with setns(2) (the network namespace is a per-thread
attribute), opens its own netlink socket there and does the work. That is ~4x cheaper than
pyroute2's NetNS, which forks a helper process per open.
"""
import ctypes
import fcntl
import logging
import os
import stat
import threading
from typing import Callable, TypeVar

from pyroute2 import IPRoute

from . import rtnl
from .errors import KernelError, NamespaceGone

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_local = threading.local()
log = logging.getLogger(__name__)


def ipr() -> IPRoute:
    """The netlink socket of the calling thread's network namespace (one per thread)."""
    sock = getattr(_local, "ipr", None)
    if sock is None:
        sock = _local.ipr = IPRoute()
        rtnl.use_link_message(sock.marshal)
    return sock


def _close_thread_socket() -> None:
    rtnl.close_thread_socket()
    sock = getattr(_local, "ipr", None)
    if sock is not None:
        _local.ipr = None
        sock.close()


class InvalidNamespace(KernelError):
    """The path exists but is not a network namespace podnet may use: another kind of file or
    namespace, or the node's own network namespace."""


NSFS_MAGIC = 0x6E736673            # linux/magic.h: the filesystem of namespace files
NS_GET_NSTYPE = 0xB703             # linux/nsfs.h: _IO(0xb7, 0x3)
_NS_TYPES = {0x00020000: "mnt", 0x02000000: "cgroup", 0x04000000: "uts", 0x08000000: "ipc",
             0x10000000: "user", 0x20000000: "pid", CLONE_NEWNET: "net", 0x00000080: "time"}
# The node's own namespaces: podnetd's (the process's, /proc/self) and the init process's.
NODE_NAMESPACES = ("/proc/self/ns/net", "/proc/1/ns/net")


class _StatFs(ctypes.Structure):
    # Only f_type (first, a C long on Linux) is read; the padding covers the rest of the struct.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


def _fs_magic(fd: int) -> int:
    buf = _StatFs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.f_type & 0xFFFFFFFF


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a special file"


def open_netns(path: str) -> int:
    """Open a network namespace file and return its fd (O_RDONLY, close-on-exec).

    NamespaceGone when nothing is at path; InvalidNamespace when something is but it is not a
    network namespace. The path is opened once, with O_PATH: that neither blocks (a FIFO) nor
    opens a device (a watchdog starts ticking when opened); only once the inode is known to be
    a namespace file is it reopened for reading through /proc/self/fd, which names that inode
    and not the path again, so what is checked is what setns(2) later gets."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise InvalidNamespace(f"open netns {path!r}: not a usable path")
    try:
        path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise NamespaceGone(f"open netns {path}: no such file") from e
    except OSError as e:
        raise InvalidNamespace(f"open netns {path}: {e.strerror}") from e
    try:
        st = os.fstat(path_fd)
        try:
            magic = _fs_magic(path_fd)
        except OSError as e:
            raise InvalidNamespace(f"open netns {path}: statfs: {e.strerror}") from None
        if magic != NSFS_MAGIC:
            raise InvalidNamespace(f"netns {path} is {_kind(st.st_mode)}, not a network namespace")
        try:
            fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise InvalidNamespace(f"open netns {path}: {e.strerror}") from None
    finally:
        os.close(path_fd)
    try:
        again = os.fstat(fd)
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
            raise InvalidNamespace(f"netns {path} changed while it was being opened")
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as e:
            raise InvalidNamespace(f"netns {path}: namespace type: {e.strerror}") from None
        if kind != CLONE_NEWNET:
            raise InvalidNamespace(f"netns {path} is a {_NS_TYPES.get(kind, hex(kind))} namespace, "
                                   f"not a network namespace")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _node_namespace_ids() -> dict[tuple[int, int], str]:
    ids = {}
    for node_path in NODE_NAMESPACES:
        try:
            st = os.stat(node_path)
        except OSError as e:  # e.g. /proc/1 hidden from a confined daemon: nothing to compare
            log.debug("stat %s: %s", node_path, e.strerror)
            continue
        ids.setdefault((st.st_dev, st.st_ino), node_path)
    return ids


def open_pod_netns(path: str) -> int:
    """open_netns for a pod's namespace: also refuses the node's own network namespace
    (podnetd's or the init process's), whose routes and links a pod attachment would change."""
    fd = open_netns(path)
    try:
        st = os.fstat(fd)
        node_path = _node_namespace_ids().get((st.st_dev, st.st_ino))
        if node_path is not None:
            owner = "podnetd's" if node_path == "/proc/self/ns/net" else "the init process's"
            raise InvalidNamespace(f"netns {path} is the node's own network namespace "
                                   f"({owner}), not a pod's")
    except BaseException:
        os.close(fd)
        raise
    return fd


def setns(fd: int, path: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        # EINVAL: the file is not a network namespace (e.g. a plain file or another ns type).
        raise NamespaceGone(f"enter netns {path}: {os.strerror(err)}")


def run_in_netns(path_or_fd: str | int, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call fn(*args, **kwargs) in a fresh thread inside the given network namespace."""
    own_fd = isinstance(path_or_fd, str)
    fd = open_netns(path_or_fd) if own_fd else path_or_fd
    label = path_or_fd if own_fd else f"fd {fd}"
    box: dict = {}

    def body():
        try:
            setns(fd, label)
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e
        finally:
            _close_thread_socket()

    try:
        worker = threading.Thread(target=body, name=f"netns:{label}", daemon=True)
        worker.start()
        worker.join()
    finally:
        if own_fd:
            os.close(fd)
    if "error" in box:
        raise box["error"]
    return box["value"]
