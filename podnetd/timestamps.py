"""The one way podnet writes a time for people and the API: RFC 3339 in UTC, whole seconds
(as Kubernetes' metav1.Time), e.g. 2026-12-02T10:05:58Z."""
import time


def rfc3339(t: float | None = None) -> str:
    """t: seconds since the epoch (default: now)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def rfc3339_micro(t: float | None = None) -> str:
    """metav1.MicroTime (Lease renewTime): RFC 3339 in UTC with microseconds."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
