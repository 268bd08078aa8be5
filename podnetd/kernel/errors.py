"""The kernel layer's exceptions, and the one place errno becomes one of them.

Every kernel call in this package runs inside translated("what it does to what"), which turns a
NetlinkError or OSError into KernelError, NotFound or Exists with that context in the message,
so callers above the package never see an errno.
"""
import contextlib
import errno
import os

from pyroute2.netlink.exceptions import NetlinkError


class KernelError(Exception):
    """A kernel operation failed; the message says which and on what."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


class NotFound(KernelError):
    pass


class Exists(KernelError):
    pass


class NamespaceGone(NotFound):
    """The network namespace path does not exist or is not a network namespace."""


_NOT_FOUND = {errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENXIO}


def from_errno(code: int, what: str) -> KernelError:
    """The exception for errno code in the operation described by what."""
    text = f"{what}: {errno.errorcode.get(code, code)} ({_strerror(code)})"
    if code == errno.EEXIST:
        return Exists(text, code)
    if code in _NOT_FOUND:
        return NotFound(text, code)
    return KernelError(text, code)


@contextlib.contextmanager
def translated(what: str):
    """Raise the body's NetlinkError or OSError as from_errno(code, what)."""
    try:
        yield
    except NetlinkError as e:
        raise from_errno(e.code, what) from None
    except OSError as e:
        if e.errno is None:
            raise
        raise from_errno(e.errno, what) from None


def _strerror(code: int) -> str:
    try:
        return os.strerror(code)
    except ValueError:
        return "unknown error"
