"""The watch cache (podnetd/apiserver/storage/watch_cache.py) over a real etcd: watchers of a
resource share one etcd watch, a watcher from before the hub's history gets its own, a stale
cached copy never loses an update, and closing the store ends every watch. The store contract
itself is checked on the cached stores by tests/test_object_store.py."""
import asyncio
import json

from etcd_local import shared_etcd  # noqa: F401 (a fixture)
from podnetd.apiserver import kinds, objects
from podnetd.apiserver.registry import Registry
from podnetd.apiserver.storage.base import StoreUnavailable, TooOld
from podnetd.apiserver.storage.etcd import EtcdObjectStore
from podnetd.apiserver.storage.watch_cache import WatchCache, resource_of
from testlib import unique

WAIT = 20.0   # a hang guard, not a speed check


def cache_on(etcd, **kw) -> WatchCache:
    return WatchCache(EtcdObjectStore([etcd.url], prefix=f"/podnet-test/{unique()}/registry",
                                      tls=etcd.tls), **kw)


def run(body, store):
    async def main():
        await store.start()
        try:
            return await asyncio.wait_for(body(store), 120)
        finally:
            await store.close()
    return asyncio.run(main())


async def take(events, n: int) -> list:
    return [await asyncio.wait_for(anext(events), WAIT) for _ in range(n)]


def test_resource_of():
    assert resource_of("/pods/") == resource_of("/pods/default/") == "/pods/"
    assert resource_of("/nodes/n1") == "/nodes/"


def test_watchers_of_a_resource_share_one_etcd_watch(shared_etcd):
    async def body(s: WatchCache):
        start = await s.create("/pods/a/x", b"1")
        everything = s.watch("/pods/", start)
        one_namespace = s.watch("/pods/b/", start)
        first = asyncio.ensure_future(anext(everything))
        second = asyncio.ensure_future(anext(one_namespace))
        r1 = await s.create("/pods/a/y", b"2")
        r2 = await s.create("/pods/b/z", b"3")
        await s.create("/nodes/n1", b"elsewhere")
        got_all = [await asyncio.wait_for(first, WAIT), *await take(everything, 1)]
        assert [(e.key, e.revision) for e in got_all] == [("/pods/a/y", r1), ("/pods/b/z", r2)]
        got_b = await asyncio.wait_for(second, WAIT)
        assert (got_b.key, got_b.revision, got_b.created) == ("/pods/b/z", r2, True)
        # a third watcher joining later from an early revision is replayed from the history
        late = s.watch("/pods/", start)
        assert [e.revision for e in await take(late, 2)] == [r1, r2]
        assert len(s.store._streams) == 1, "one etcd watch for every watcher of /pods/"
        for events in (everything, one_namespace, late):
            await events.aclose()
    run(body, cache_on(shared_etcd))


def test_a_watch_from_before_the_hub_gets_its_own_and_too_old_keeps_its_meaning(shared_etcd):
    async def body(s: WatchCache):
        early = await s.create("/pods/a/x", b"1")
        later = await s.create("/pods/a/y", b"2")
        hub_watch = s.watch("/pods/", later)         # the hub starts here
        pending = asyncio.ensure_future(anext(hub_watch))
        await asyncio.sleep(0.2)
        behind = s.watch("/pods/", early - 1)         # older than the hub's history
        got = await take(behind, 2)
        assert [e.revision for e in got] == [early, later]
        assert len(s.store._streams) == 2
        r3 = await s.create("/pods/a/z", b"3")
        assert (await asyncio.wait_for(pending, WAIT)).revision == r3
        await behind.aclose()
        await hub_watch.aclose()
        await asyncio.to_thread(shared_etcd.ctl, "compact", str(await s.revision()))
        gone = s.watch("/pods/", early)
        try:
            await asyncio.wait_for(anext(gone), WAIT)
            raise AssertionError("a compacted revision was watched")
        except TooOld:
            pass
    run(body, cache_on(shared_etcd))


def test_a_stale_cached_copy_never_loses_an_update(shared_etcd):
    """The registry's read-modify-write starts from the cache's copy; when another writer got
    there first, the guarded write fails and the object is read again: both changes stay."""
    async def body(s: WatchCache):
        registry = Registry(s, available=True)
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}
        await registry.create(kinds.BY_RESOURCE["namespaces"], "", ns)
        pods = kinds.BY_RESOURCE["pods"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
               "spec": {"containers": [{"name": "c", "image": "registry.test:5000/busybox:1.36"}]}}
        created = await registry.create(pods, "default", pod)
        key = pods.key("default", "p")
        stale = await s.get(key)
        events = s.watch("/pods/", int(created["metadata"]["resourceVersion"]))
        labelled = json.loads(json.dumps(created))
        labelled["metadata"]["labels"] = {"by": "other"}
        await registry.update(pods, "default", labelled)
        await take(events, 1)                           # the hub has seen the other write
        assert json.loads(s.peek(key).value)["metadata"]["labels"] == {"by": "other"}
        s.peek = lambda k: stale if k == key else None   # and now a copy from before it
        status = {"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "p", "namespace": "default"},
                  "status": {"phase": "Running"}}
        written = await registry.update(pods, "default", status, "status")
        stored = json.loads((await s.get(key)).value)
        assert stored["status"]["phase"] == "Running" == written["status"]["phase"]
        assert stored["metadata"]["labels"] == {"by": "other"}, "the other writer's change was lost"
        # a stale copy is never an answer: an update on the old revision still conflicts
        old = json.loads(json.dumps(created))
        old["metadata"]["labels"] = {"by": "me"}
        try:
            await registry.update(pods, "default", old)
            raise AssertionError("an update on a stale resourceVersion was accepted")
        except objects.Conflict as e:
            assert "has been modified" in e.message, e.message
        await events.aclose()
    run(body, cache_on(shared_etcd))


def test_closing_the_store_ends_its_watches(shared_etcd):
    async def body(s: WatchCache):
        start = await s.create("/pods/a/x", b"1")
        events = s.watch("/pods/", start)
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)
        await s.close()
        try:
            await asyncio.wait_for(pending, WAIT)
            raise AssertionError("a watch outlived its store")
        except StoreUnavailable:
            pass
    run(body, cache_on(shared_etcd))


def test_a_hub_nobody_watches_ends_its_etcd_watch(shared_etcd):
    async def body(s: WatchCache):
        start = await s.create("/events/a/x", b"1")
        events = s.watch("/events/", start)
        pending = asyncio.ensure_future(anext(events))
        r2 = await s.create("/events/a/y", b"2")
        assert (await asyncio.wait_for(pending, WAIT)).revision == r2
        assert len(s.store._streams) == 1
        await events.aclose()
        for _ in range(100):
            if not s.store._streams:
                break
            await asyncio.sleep(0.1)
        assert not s.store._streams, "an idle hub kept its etcd watch"
        again = s.watch("/events/", r2)               # a new hub when someone watches again
        pending = asyncio.ensure_future(anext(again))
        r3 = await s.create("/events/a/z", b"3")
        assert (await asyncio.wait_for(pending, WAIT)).revision == r3
        await again.aclose()
    run(body, cache_on(shared_etcd, idle=0.2))
