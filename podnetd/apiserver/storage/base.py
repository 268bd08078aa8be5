"""The object store's contract, kept by both implementations (sqlite.py for one node, etcd.py for
a cluster) and checked by one shared test suite (tests/test_object_store.py).

A store maps keys (str, "/registry/pods/default/web") to values (bytes: an object's JSON) and
numbers every change with a cluster-wide revision that only grows, as etcd does: a key's
`mod_revision` is the revision of its last change, `create_revision` that of its creation.
The API server turns mod_revision into metadata.resourceVersion.

Watches deliver every change under a prefix after a revision, in revision order, each exactly
once; a revision the store no longer keeps history for (compacted) raises TooOld, and the
client lists again. A DELETE event carries the value as it was before the deletion.

Every method is a coroutine; nothing blocks the event loop (the SQLite store runs its queries
in a thread, the etcd store's client is blocking HTTP run in threads).
"""
import dataclasses
from typing import AsyncIterator


class StoreError(Exception):
    """Base of the store's errors; the message names the key."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (etcd down); the caller may retry."""


class KeyNotFound(StoreError):
    pass


class KeyExists(StoreError):
    pass


class Conflict(StoreError):
    """An update or delete whose expected mod_revision is not the key's current one."""


class TooOld(StoreError):
    """A watch from a revision whose history is gone (compacted)."""


@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    type: str                  # "PUT" or "DELETE"
    key: str
    value: bytes               # PUT: the new value; DELETE: the value before the deletion
    revision: int              # the change's revision (the key's new mod_revision for a PUT)
    created: bool = False      # PUT that created the key (ADDED rather than MODIFIED)


class ObjectStore:
    name = ""

    async def start(self) -> None:
        """Connect (etcd) or open (SQLite); raises StoreUnavailable when it cannot."""

    async def close(self) -> None:
        pass

    async def get(self, key: str) -> KeyValue:
        """KeyNotFound when absent."""
        raise NotImplementedError

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under prefix (sorted by key) and the store's revision at which the listing
        was read: a watch from that revision misses nothing and repeats nothing."""
        raise NotImplementedError

    async def create(self, key: str, value: bytes) -> int:
        """Create the key; KeyExists if present. Returns the new revision."""
        raise NotImplementedError

    async def update(self, key: str, value: bytes, expected_revision: int | None) -> int:
        """Replace the key's value if its mod_revision is expected_revision (None: any).
        KeyNotFound if absent, Conflict if changed meanwhile. Returns the new revision."""
        raise NotImplementedError

    async def delete(self, key: str, expected_revision: int | None) -> KeyValue:
        """Delete the key if its mod_revision is expected_revision (None: any); returns the
        value as it was deleted, with the deletion's revision as mod_revision. KeyNotFound,
        Conflict as update."""
        raise NotImplementedError

    async def revision(self) -> int:
        """The store's current revision."""
        raise NotImplementedError

    def peek(self, key: str) -> KeyValue | None:
        """A cached value of key that may be behind the store (watch_cache.py), or None: only
        a first guess for a write guarded by the key's revision."""
        return None

    def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under prefix with revision > after_revision, in order. Raises TooOld
        (on the first iteration) when after_revision is older than the kept history, and
        StoreUnavailable when the store goes away mid-watch (the caller resumes from the last
        revision it saw). Ends when the iterator is closed (aclose)."""
        raise NotImplementedError
