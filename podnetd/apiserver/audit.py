"""The cluster API's audit log (--audit-log FILE): one JSON line per request that changes
something (create, update, patch, delete, deletecollection, whatever its result) or is denied
(any verb), written when the response is complete.

A line:
  {"time": "2026-12-02T10:05:58Z", "auditID": "…", "stage": "ResponseComplete",
   "user": "alice", "uid": "", "groups": ["dev", "system:authenticated"],
   "verb": "create", "resource": "pods", "namespace": "prod", "name": "web",
   "decision": "allow", "reason": "RBAC: allowed by …", "code": "OK"}
plus "resource": "pods/log" for subresources, "apiGroup" when not core, "impersonatedUser"
({"user", "groups"}) when the authenticated user acted as another ("user" is then the
authenticated one, as Kubernetes' audit events) and "sourceIP" when known.

Each line is one os.write() on an O_APPEND descriptor, bounded in size, so lines of concurrent
writers (threads, processes) never interleave and a write never holds the event loop long.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import uuid

from podnetd.apiserver.authn import UserInfo
from podnetd.apiserver.rbac import Attributes
from podnetd.timestamps import rfc3339

log = logging.getLogger(__name__)

MUTATING_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
MAX_STRING = 256
MAX_REASON = 1024
MAX_GROUPS = 32


def should_audit(verb: str, allowed: bool) -> bool:
    return not allowed or verb in MUTATING_VERBS


def _clip(value, limit: int = MAX_STRING) -> str:
    value = str(value or "")
    return value if len(value) <= limit else value[:limit] + "…"


def _groups(groups) -> list[str]:
    out = [_clip(g) for g in list(groups)[:MAX_GROUPS]]
    if len(groups) > MAX_GROUPS:
        out.append(f"… {len(groups) - MAX_GROUPS} more")
    return out


def event(attrs: Attributes, allowed: bool, code: str, *, reason: str = "",
          requester: UserInfo | None = None, source_ip: str = "", now: float | None = None,
          audit_id: str | None = None) -> dict:
    """The audit line for one request. attrs.user is the user the request was authorised as;
    requester the authenticated one when it impersonated attrs.user. code: the gRPC status code's
    name ("OK", "PERMISSION_DENIED", "NOT_FOUND", ...)."""
    actor = requester or attrs.user
    line = {
        "time": rfc3339(now),
        "auditID": audit_id or str(uuid.uuid4()),
        "stage": "ResponseComplete",
        "user": _clip(actor.name),
        "uid": _clip(actor.uid),
        "groups": _groups(actor.groups),
        "verb": _clip(attrs.verb, 64),
        "resource": _clip(attrs.full_resource),
        "namespace": _clip(attrs.namespace),
        "name": _clip(attrs.name),
        "decision": "allow" if allowed else "forbid",
        "reason": _clip(reason, MAX_REASON),
        "code": _clip(code, 64),
    }
    if attrs.api_group:
        line["apiGroup"] = _clip(attrs.api_group)
    if requester is not None:
        line["impersonatedUser"] = {"user": _clip(attrs.user.name),
                                    "groups": _groups(attrs.user.groups)}
    if source_ip:
        line["sourceIP"] = _clip(source_ip, 64)
    return line


class AuditLog:
    """Appends audit lines to a file (mode 0600, created if missing). Thread-safe; a failed
    write is logged and counted, never raised into the request (as kube-apiserver's log
    backend)."""

    def __init__(self, path: str):
        self.path = path
        self.failures = 0
        self._lock = threading.Lock()
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
        except OSError as e:
            raise OSError(e.errno, f"audit log {path}: {e.strerror}") from None
        try:
            os.fchmod(self._fd, 0o600)   # an older file may have been readable by others
        except OSError as e:
            os.close(self._fd)
            raise OSError(e.errno, f"audit log {path}: {e.strerror}") from None

    def write(self, line: dict) -> None:
        data = (json.dumps(line, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                return
            try:
                written = os.write(self._fd, data)
                if written != len(data):   # disk full mid-line: finish it so lines stay lines
                    os.write(self._fd, data[written:])
            except OSError as e:
                self.failures += 1
                if self.failures == 1 or self.failures % 1000 == 0:
                    log.error("audit log %s: %s (%d lines lost)", self.path, e.strerror,
                              self.failures)

    def record(self, attrs: Attributes, allowed: bool, code: str, **kw) -> dict | None:
        """Write the request's line if it is one to audit (a change, or denied); returns it."""
        if not should_audit(attrs.verb, allowed):
            return None
        line = event(attrs, allowed, code, **kw)
        self.write(line)
        return line

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
