"""The private directory that podnetd's unix sockets live in.

A socket's own mode is not enough: it is created by bind(2) with the process umask and only then
can be chmod-ed, so for a moment it would be open to anyone. Its directory decides instead: the
daemon's sockets are bound inside a directory that is root's (podnetd's euid), mode 0700 and not
a symbolic link, so nobody else can reach them (connect(2) needs search permission on it) or put
anything in their place. Every socket of the daemon (the API's, the CNI relay's) goes there.
"""
import contextlib
import logging
import os
import socket
import stat

log = logging.getLogger(__name__)

MODE = 0o700


class InsecureSocketDir(Exception):
    pass


def problem(st: os.stat_result, euid: int) -> str | None:
    """Why a directory with these attributes may not hold podnetd's sockets (pure logic)."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != euid:
        return f"is owned by uid {st.st_uid}, not {euid}"
    if st.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, not {MODE:04o}"
    return None


def ensure(directory: str) -> None:
    """Create directory with mode 0700 if it is missing (its parents 0755, as /run is), else
    check it: InsecureSocketDir for a symlink, a non-directory, another owner or any access for
    group or others. An existing directory is never chmod-ed: --socket may name a system
    directory (/run/podnetd.sock), which must keep its mode; the error says what to do."""
    parent = os.path.dirname(directory.rstrip("/")) or "/"
    os.makedirs(parent, mode=0o755, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, MODE)   # the umask may only take bits away from 0700
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        st = _lstat(directory)
        reason = problem(st, os.geteuid()) if st else None
        raise InsecureSocketDir(f"socket directory {directory} {reason or e.strerror}") from None
    try:
        reason = problem(os.fstat(fd), os.geteuid())
    finally:
        os.close(fd)
    if reason:
        raise InsecureSocketDir(f"socket directory {directory} {reason}")


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


@contextlib.contextmanager
def private_umask():
    """Sockets bound inside this block are born 0600 (umask 077): the umask is per process, so
    this belongs where the bind happens, around nothing that runs long."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


class SocketPathTaken(Exception):
    pass


def prepare(path: str, what: str) -> None:
    """Make path ready for bind(2): its directory ensured (InsecureSocketDir, with what to do),
    a socket left by a daemon that died removed. SocketPathTaken when a live daemon answers
    there, or when something that is not a socket is in the way."""
    try:
        ensure(os.path.dirname(path) or "/")
    except (InsecureSocketDir, OSError) as e:
        raise InsecureSocketDir(f"{what}: {e}: podnetd's sockets need a directory of their own, "
                                f"owned by root with mode 0700") from None
    st = _lstat(path)
    if st is None:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathTaken(f"{what} {path}: something that is not a socket is there")
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
        raise SocketPathTaken(f"{what} {path} is in use by a running daemon")
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)   # left by a daemon that died
    finally:
        probe.close()
