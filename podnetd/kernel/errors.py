import errno


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
    text = f"{what}: {errno.errorcode.get(code, code)} ({_strerror(code)})"
    if code == errno.EEXIST:
        return Exists(text, code)
    if code in _NOT_FOUND:
        return NotFound(text, code)
    return KernelError(text, code)


def _strerror(code: int) -> str:
    import os
    try:
        return os.strerror(code)
    except ValueError:
        return "unknown error"
