"""A watch cache in front of an object store, as kube-apiserver's cacher: one store watch per
resource (the first segment of the key: /pods/, /nodes/, ...) per process, fanned out to every
watcher of that resource, and the resource's current objects kept from it.

Without it every watcher in podnetd (the node agent, the Node authorizer's pod index, the
scheduler's and the controllers' informers, each client's watch) held its own etcd watch, and
etcd sent, and podnetd parsed, every pod change once per watcher.

- watch(prefix, after) is served from the resource's hub when the hub's history reaches back to
  `after`; otherwise (an old revision, a hub that failed) by a watch of its own on the store, so
  "too old" and every other edge keeps the store's meaning. A hub is started by the first
  watch of its resource, from that watch's revision, and kept while anyone watches (and IDLE
  seconds more).
- A hub that loses its store watch (etcd gone, compaction under it) ends every watch it serves
  with StoreUnavailable; the watchers resume from the last revision they saw, as from any cut.
- peek(key) is the hub's view of a key, possibly behind the store: good as the first guess of
  a read-modify-write guarded by the key's revision (the registry reads the store when the
  guess proves stale), never as an answer to a client.

The hub applies events to its view only past the revision of its own listing (the history it
replays may start earlier); a watcher that falls more than backlog events behind is ended with
StoreUnavailable, as the etcd store's own watches are."""
import asyncio
import collections
import contextlib
import logging
from typing import AsyncIterator

from .base import KeyValue, ObjectStore, StoreError, StoreUnavailable, WatchEvent

log = logging.getLogger(__name__)

HISTORY = 5000          # events a hub keeps for watchers that resume or start behind it
BACKLOG = 10000         # events a watcher may have queued before it is ended
IDLE = 60.0             # seconds a hub nobody watches is kept (a `get -w` of events ends)


def resource_of(prefix: str) -> str:
    """The resource's own prefix ("/pods/") of a key or prefix ("/pods/default/")."""
    head = prefix.lstrip("/").split("/", 1)[0]
    return f"/{head}/"


class _Watcher:
    def __init__(self, prefix: str, after: int, backlog: int):
        self.prefix, self.after, self.backlog = prefix, after, backlog
        self.queue: collections.deque[WatchEvent] = collections.deque()
        self.error: StoreError | None = None
        self.wake = asyncio.Event()

    def offer(self, event: WatchEvent) -> None:
        if self.error is not None or event.revision <= self.after \
                or not event.key.startswith(self.prefix):
            return
        if len(self.queue) >= self.backlog:
            self.fail(StoreUnavailable(f"watch {self.prefix} from revision {self.after}: the "
                                       f"watcher fell more than {self.backlog} events behind; "
                                       f"resume from its last revision"))
            return
        self.queue.append(event)
        self.wake.set()

    def fail(self, error: StoreError) -> None:
        if self.error is None:
            self.error = error
        self.wake.set()


class _Hub:
    """One store watch of a resource, its recent history and its current objects."""

    def __init__(self, store: ObjectStore, resource: str, after: int, history: int):
        self.store, self.resource = store, resource
        self.start = after                    # the history covers revisions > start
        self.history: collections.deque[WatchEvent] = collections.deque(maxlen=history)
        self.objects: dict[str, KeyValue] = {}
        self.listed = -1                      # the view is the store's at this revision, then
        self.watchers: set[_Watcher] = set()  # every event past it
        self.failed: StoreError | None = None
        self.task: asyncio.Task | None = None

    def covers(self, after: int) -> bool:
        if self.failed is not None or after < self.start:
            return False
        if len(self.history) == self.history.maxlen:
            return after >= self.history[0].revision - 1
        return True

    def subscribe(self, prefix: str, after: int, backlog: int) -> _Watcher:
        watcher = _Watcher(prefix, after, backlog)
        for event in self.history:            # no await between the replay and the join
            watcher.offer(event)
        self.watchers.add(watcher)
        return watcher

    async def run(self) -> None:
        try:
            # the listing first, the watch from the first watcher's revision: events the
            # listing already holds are history, not changes to the view
            kvs, self.listed = await self.store.list(self.resource)
            self.objects = {kv.key: kv for kv in kvs}
            async for event in self.store.watch(self.resource, self.start):
                self.history.append(event)
                if event.revision > self.listed:
                    if event.type == "DELETE":
                        self.objects.pop(event.key, None)
                    else:
                        before = self.objects.get(event.key)
                        self.objects[event.key] = KeyValue(
                            event.key, event.value, event.revision,
                            event.revision if event.created or before is None
                            else before.create_revision)
                for watcher in list(self.watchers):
                    watcher.offer(event)
            raise StoreUnavailable(f"watch {self.resource}: the store's watch ended")
        except asyncio.CancelledError:
            self._fail(StoreUnavailable(f"watch {self.resource}: the store is closed"))
            raise
        except (StoreError, ValueError) as e:
            self._fail(e if isinstance(e, StoreError) else StoreUnavailable(str(e)))
        except Exception as e:  # noqa: BLE001 - a broken hub ends its watches, never podnetd
            log.exception("watch cache %s: %s", self.resource, e)
            self._fail(StoreUnavailable(f"watch {self.resource}: {type(e).__name__}: {e}"))

    def _fail(self, error: StoreError) -> None:
        self.failed = error
        for watcher in list(self.watchers):
            watcher.fail(error)


class WatchCache(ObjectStore):
    """An ObjectStore: reads and writes go to the store; watches are shared per resource."""

    def __init__(self, store: ObjectStore, history: int = HISTORY, backlog: int = BACKLOG,
                 idle: float = IDLE):
        self.store = store
        self.name = store.name
        self.history, self.backlog, self.idle = history, backlog, idle
        self._hubs: dict[str, _Hub] = {}
        self._closed = False

    # -- delegated ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._closed = False
        await self.store.start()

    async def close(self) -> None:
        self._closed = True
        hubs, self._hubs = list(self._hubs.values()), {}
        for hub in hubs:
            if hub.task is not None:
                hub.task.cancel()
        for hub in hubs:
            if hub.task is not None:
                with contextlib.suppress(BaseException):
                    await hub.task
        await self.store.close()

    async def get(self, key: str) -> KeyValue:
        return await self.store.get(key)

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self.store.list(prefix)

    async def create(self, key: str, value: bytes) -> int:
        return await self.store.create(key, value)

    async def update(self, key: str, value: bytes, expected_revision: int | None) -> int:
        return await self.store.update(key, value, expected_revision)

    async def delete(self, key: str, expected_revision: int | None) -> KeyValue:
        return await self.store.delete(key, expected_revision)

    async def revision(self) -> int:
        return await self.store.revision()

    # -- the cache ----------------------------------------------------------------------------

    def peek(self, key: str) -> KeyValue | None:
        """The hub's view of key (None: no live hub, or the key is not in its view)."""
        hub = self._hubs.get(resource_of(key))
        if hub is None or hub.failed is not None or hub.listed < 0:
            return None
        return hub.objects.get(key)

    def _hub(self, resource: str, after: int) -> _Hub | None:
        hub = self._hubs.get(resource)
        if hub is not None and hub.failed is not None:
            del self._hubs[resource]
            hub = None
        if hub is None and not self._closed:
            hub = _Hub(self.store, resource, after, self.history)
            hub.task = asyncio.get_running_loop().create_task(hub.run())
            self._hubs[resource] = hub
        return hub

    async def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        if isinstance(after_revision, bool) or not isinstance(after_revision, int) \
                or after_revision < 0:
            raise ValueError(f"watch {prefix}: revision {after_revision!r} is not a revision")
        if self._closed:
            raise StoreUnavailable(f"watch {prefix}: the store is closed")
        resource = resource_of(prefix)
        hub = self._hub(resource, after_revision) if prefix.startswith(resource) else None
        if hub is None or not hub.covers(after_revision):
            # older than the hub's history: a watch of its own keeps the store's answers
            async for event in self.store.watch(prefix, after_revision):
                yield event
            return
        watcher = hub.subscribe(prefix, after_revision, self.backlog)
        try:
            while True:
                while watcher.queue:
                    yield watcher.queue.popleft()
                if watcher.error is not None:
                    raise watcher.error
                watcher.wake.clear()
                await watcher.wake.wait()
        finally:
            hub.watchers.discard(watcher)
            if not hub.watchers:
                with contextlib.suppress(RuntimeError):   # closed outside a running loop
                    asyncio.get_running_loop().call_later(self.idle, self._stop_if_idle, hub)

    def _stop_if_idle(self, hub: _Hub) -> None:
        if not hub.watchers and self._hubs.get(hub.resource) is hub:
            del self._hubs[hub.resource]
            if hub.task is not None:
                hub.task.cancel()


__all__ = ["WatchCache", "resource_of"]
