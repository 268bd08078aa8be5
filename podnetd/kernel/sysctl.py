"""sysctl through /proc/sys.

net.* keys resolve in the network namespace of the thread that opens them, so inside
netns.run_in_netns they act on that namespace.
"""
from .errors import KernelError


def _path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read(key: str) -> str:
    try:
        with open(_path(key)) as f:
            return f.read().strip()
    except OSError as e:
        raise KernelError(f"read sysctl {key}: {e.strerror}") from e


def write(key: str, value: str | int) -> None:
    """Write a sysctl, skipping the write when it already holds the value."""
    value = str(value)
    try:
        if read(key) == value:
            return
        with open(_path(key), "w") as f:
            f.write(value)
    except OSError as e:
        raise KernelError(f"set sysctl {key}={value}: {e.strerror}") from e
