"""The object store's contract (podnetd/apiserver/storage/base.py), one suite run against both
stores: SqliteStore on a temp file, and EtcdObjectStore against a real etcd (TLS, client
certificates, free loopback ports, a temp data dir; tests/etcd_local.py). Each etcd test works
under a prefix of its own in the module's etcd; the tests that stop or freeze etcd get their own.
"""
import asyncio
import contextlib
import os
import signal

import etcd3gw
import pytest
import requests

from etcd_local import LocalEtcd, shared_etcd  # noqa: F401 (a fixture)
from podnetd.apiserver.storage.base import (Conflict, KeyExists, KeyNotFound, KeyValue,
                                            StoreError, StoreUnavailable, TooOld, WatchEvent)
from podnetd.apiserver.storage.etcd import EtcdObjectStore
from podnetd.apiserver.storage.keys import MAX_VALUE_BYTES, InvalidKey, ValueTooLarge
from podnetd.apiserver.storage.sqlite import PAGE, SqliteStore
from podnetd.apiserver.storage.watch_cache import WatchCache
from testlib import unique

WAIT = 20.0  # a hang guard for one event, not a speed check


@pytest.fixture
def own_etcd():
    etcd = LocalEtcd()
    try:
        etcd.start()
        yield etcd
    finally:
        etcd.cleanup()


class Backend:
    """Makes stores over the same data (a reopened SqliteStore, or a second etcd client)."""

    def __init__(self, kind: str, make, etcd: LocalEtcd | None = None, prefix: str = ""):
        self.kind, self._make, self.etcd, self.prefix = kind, make, etcd, prefix

    def store(self, **kw):
        return self._make(**kw)

    def raw_client(self) -> etcd3gw.Etcd3Client:
        session = requests.Session()
        session.trust_env = False  # the test CA, not REQUESTS_CA_BUNDLE
        session.verify = self.etcd.ca
        session.cert = (self.etcd.client_cert, self.etcd.client_key)
        return etcd3gw.Etcd3Client(host="127.0.0.1", port=self.etcd.client_port, protocol="https",
                                   api_path="/v3/", session=session, timeout=10)


def sqlite_backend(tmp_path) -> Backend:
    path = str(tmp_path / "state" / "objects.db")  # the state dir does not exist yet
    return Backend("sqlite", lambda **kw: SqliteStore(path, **kw))


def etcd_backend(etcd: LocalEtcd) -> Backend:
    prefix = f"/podnet-test/{unique()}/registry"
    return Backend("etcd", lambda **kw: EtcdObjectStore([etcd.url], prefix=prefix, tls=etcd.tls,
                                                        **kw), etcd, prefix)


def cached(backend: Backend) -> Backend:
    """The same store behind the watch cache (every watch served by a shared hub)."""
    make = backend._make
    return Backend(backend.kind + "+cache", lambda **kw: WatchCache(make(**kw)), backend.etcd,
                   backend.prefix)


@pytest.fixture(params=["sqlite", "etcd", "sqlite+cache", "etcd+cache"])
def backend(request, tmp_path):
    if request.param.startswith("sqlite"):
        made = sqlite_backend(tmp_path)
    else:
        made = etcd_backend(request.getfixturevalue("shared_etcd"))
    return cached(made) if request.param.endswith("+cache") else made


@contextlib.asynccontextmanager
async def opened(store):
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def run(body, store):
    async def main():
        async with opened(store) as s:
            return await body(s)
    return asyncio.run(main())


async def take(events, n: int) -> list[WatchEvent]:
    return [await asyncio.wait_for(anext(events), WAIT) for _ in range(n)]


async def next_is_sentinel(store, events, prefix: str) -> None:
    """Nothing but the sentinel written now comes next: no duplicate, no stray event."""
    revision = await store.create(prefix + "sentinel-" + unique(), b"sentinel")
    event = await asyncio.wait_for(anext(events), WAIT)
    assert (event.type, event.value, event.revision) == ("PUT", b"sentinel", revision), event


# -- the contract, both stores ---------------------------------------------------------------

def test_list_then_watch_from_its_revision_sees_later_changes_once_in_order(backend):
    async def body(s):
        first = {}
        for name in ("b", "a", "c"):
            first[name] = await s.create(f"/pods/default/{name}", f'{{"n":"{name}"}}'.encode())
        await s.create("/podsx/default/a", b"not under /pods/")      # a neighbouring prefix
        await s.create("/nodes/n1", b"elsewhere")
        items, listed = await s.list("/pods/")
        assert [kv.key for kv in items] == ["/pods/default/a", "/pods/default/b", "/pods/default/c"]
        assert items[0] == KeyValue("/pods/default/a", b'{"n":"a"}', first["a"], first["a"])
        assert listed == await s.revision() >= max(first.values())

        d = await s.create("/pods/default/d", b"")                  # an empty value is a value
        a = await s.update("/pods/default/a", b'{"n":"a2"}', first["a"])
        await s.create("/nodes/n2", b"elsewhere")
        gone = await s.delete("/pods/default/b", first["b"])
        assert d < a < gone.mod_revision

        events = s.watch("/pods/", listed)
        try:
            got = await take(events, 3)
            assert got == [WatchEvent("PUT", "/pods/default/d", b"", d, True),
                           WatchEvent("PUT", "/pods/default/a", b'{"n":"a2"}', a, False),
                           WatchEvent("DELETE", "/pods/default/b", b'{"n":"b"}', gone.mod_revision)]
            await next_is_sentinel(s, events, "/pods/")
        finally:
            await events.aclose()
    run(body, backend.store())


def test_get_and_write_errors_name_the_key(backend):
    async def body(s):
        created = await s.create("/pods/ns/web", b"v1")
        assert await s.get("/pods/ns/web") == KeyValue("/pods/ns/web", b"v1", created, created)
        with pytest.raises(KeyExists, match="/pods/ns/web"):
            await s.create("/pods/ns/web", b"v2")
        for call in (s.get("/pods/ns/none"), s.update("/pods/ns/none", b"x", None),
                     s.update("/pods/ns/none", b"x", created), s.delete("/pods/ns/none", None),
                     s.delete("/pods/ns/none", created)):
            with pytest.raises(KeyNotFound, match="/pods/ns/none"):
                await call
        # nothing of the refused writes was stored
        assert (await s.get("/pods/ns/web")).value == b"v1"
        assert [kv.key for kv in (await s.list("/pods/"))[0]] == ["/pods/ns/web"]
    run(body, backend.store())


def test_stale_revision_is_a_conflict_for_update_and_delete(backend):
    async def body(s):
        first = await s.create("/pods/ns/web", b"v1")
        second = await s.update("/pods/ns/web", b"v2", first)
        assert second > first
        with pytest.raises(Conflict, match="/pods/ns/web"):
            await s.update("/pods/ns/web", b"stale", first)
        with pytest.raises(Conflict, match="/pods/ns/web"):
            await s.delete("/pods/ns/web", first)
        assert await s.get("/pods/ns/web") == KeyValue("/pods/ns/web", b"v2", second, first)
        third = await s.update("/pods/ns/web", b"v3", None)          # None: whatever it is now
        deleted = await s.delete("/pods/ns/web", third)
        assert deleted == KeyValue("/pods/ns/web", b"v3", deleted.mod_revision, first)
        assert deleted.mod_revision == await s.revision() > third
        with pytest.raises(KeyNotFound):
            await s.get("/pods/ns/web")
    run(body, backend.store())


def test_created_flag_and_delete_event_value(backend):
    async def body(s):
        start = await s.revision()
        r1 = await s.create("/leases/ns/l", b"one")
        r2 = await s.update("/leases/ns/l", b"two", r1)
        r3 = (await s.delete("/leases/ns/l", r2)).mod_revision
        r4 = await s.create("/leases/ns/l", b"three")              # made again: created again
        events = s.watch("/leases/ns/l", start)
        try:
            got = await take(events, 4)
        finally:
            await events.aclose()
        assert [(e.type, e.value, e.revision, e.created) for e in got] == [
            ("PUT", b"one", r1, True), ("PUT", b"two", r2, False),
            ("DELETE", b"two", r3, False), ("PUT", b"three", r4, True)]
        assert (await s.get("/leases/ns/l")).create_revision == r4
    run(body, backend.store())


def test_watch_resumes_from_last_seen_revision_without_gap_or_duplicate(backend):
    async def body(s):
        start = await s.revision()
        written = [await s.create(f"/events/ns/e{i}", b"%d" % i) for i in range(6)]
        events = s.watch("/events/", start)
        seen = await take(events, 2)
        await events.aclose()
        with pytest.raises(StopAsyncIteration):  # a closed watch stays closed
            await anext(events)
        written.append(await s.update("/events/ns/e0", b"again", None))  # while nobody watches
        events = s.watch("/events/", seen[-1].revision)
        try:
            seen += await take(events, 5)
            assert [e.revision for e in seen] == written
            await next_is_sentinel(s, events, "/events/")
        finally:
            await events.aclose()
    run(body, backend.store())


def test_watch_from_a_future_revision_waits_for_it(backend):
    async def body(s):
        now = await s.revision()
        events = s.watch("/pods/", now + 2)  # changes now+1 and now+2 are not for it
        pending = asyncio.ensure_future(anext(events))
        try:
            await s.create("/pods/ns/a", b"1")
            await s.create("/pods/ns/b", b"2")
            third = await s.create("/pods/ns/c", b"3")
            event = await asyncio.wait_for(pending, WAIT)
            assert (event.key, event.revision) == ("/pods/ns/c", third)
        finally:
            pending.cancel()
            await events.aclose()
    run(body, backend.store())


def test_many_watch_pages_arrive_in_order_exactly_once(backend):
    """More changes than a SQLite watcher reads at a time, interleaved with changes elsewhere."""
    count = PAGE * 2 + 10

    async def body(s):
        start = await s.revision()
        for i in range(count):
            await s.create(f"/pods/ns/p{i:04d}", b"x")
            if i % 50 == 0:
                await s.create(f"/nodes/n{i}", b"elsewhere")
        events = s.watch("/pods/", start)
        try:
            got = await take(events, count)
            assert [e.key for e in got] == [f"/pods/ns/p{i:04d}" for i in range(count)]
            assert all(a.revision < b.revision for a, b in zip(got, got[1:]))
            await next_is_sentinel(s, events, "/pods/")
        finally:
            await events.aclose()
    run(body, backend.store())


def test_concurrent_creates_of_one_key_exactly_one_wins(backend):
    async def body(s):
        results = await asyncio.gather(*(s.create("/pods/ns/race", b"writer %d" % i)
                                         for i in range(16)), return_exceptions=True)
        wins = [(i, r) for i, r in enumerate(results) if isinstance(r, int)]
        assert len(wins) == 1, results
        assert all(isinstance(r, KeyExists) for r in results if not isinstance(r, int)), results
        winner, revision = wins[0]
        assert await s.get("/pods/ns/race") == KeyValue("/pods/ns/race", b"writer %d" % winner,
                                                        revision, revision)
        # and of concurrent updates from the same revision, exactly one lands
        results = await asyncio.gather(*(s.update("/pods/ns/race", b"update %d" % i, revision)
                                         for i in range(8)), return_exceptions=True)
        assert sum(isinstance(r, int) for r in results) == 1, results
        assert all(isinstance(r, Conflict) for r in results if not isinstance(r, int)), results
    run(body, backend.store())


def test_too_old_after_compaction(tmp_path, shared_etcd):
    async def body(s, compact):
        start = await s.revision()
        revisions = [await s.create(f"/pods/ns/p{i}", b"x") for i in range(8)]
        await compact(revisions[5])
        events = s.watch("/pods/", start)
        with pytest.raises(TooOld, match="/pods/"):
            await asyncio.wait_for(anext(events), WAIT)
        await events.aclose()
        # from the compaction point on, the history is there
        events = s.watch("/pods/", revisions[5])
        try:
            got = await take(events, 2)
            assert [e.revision for e in got] == revisions[6:]
        finally:
            await events.aclose()

    # SQLite keeps the last `history` changes: 3 of 8 kept is the compaction at revisions[5]
    sqlite = sqlite_backend(tmp_path).store(history=3)

    async def nothing(_):
        pass
    run(lambda s: body(s, nothing), sqlite)

    etcd = etcd_backend(shared_etcd)

    async def compact(revision):
        await asyncio.to_thread(shared_etcd.ctl, "compact", str(revision))
    run(lambda s: body(s, compact), etcd.store())


def test_sqlite_slow_watcher_overtaken_by_history_is_too_old(tmp_path):
    async def body(s):
        start = await s.revision()
        for i in range(3):
            await s.create(f"/pods/ns/p{i}", b"x")
        events = s.watch("/pods/", start)
        try:
            assert (await take(events, 1))[0].key == "/pods/ns/p0"
            for i in range(3, 12):  # the watcher's next change falls out of the history
                await s.create(f"/pods/ns/p{i}", b"x")
            with pytest.raises(TooOld):
                await take(events, 11)
        finally:
            await events.aclose()
    run(body, sqlite_backend(tmp_path).store(history=5))


def test_sqlite_revision_grows_across_reopen_and_deletes(tmp_path):
    backend = sqlite_backend(tmp_path)

    async def first(s):
        a = await s.create("/pods/ns/a", b"1")
        await s.delete("/pods/ns/a", a)
        return await s.revision()

    async def second(s, before):
        assert await s.revision() == before
        again = await s.create("/pods/ns/a", b"2")  # the same key again: a new revision
        assert again == before + 1
        events = s.watch("/pods/", 0)               # the history written before the restart
        try:
            got = await take(events, 3)
        finally:
            await events.aclose()
        assert [(e.type, e.value) for e in got] == [("PUT", b"1"), ("DELETE", b"1"), ("PUT", b"2")]
    before = run(first, backend.store())
    run(lambda s: second(s, before), backend.store())
    assert oct(os.stat(tmp_path / "state" / "objects.db").st_mode & 0o777) == "0o600"


def test_sqlite_unusable_file_is_store_unavailable(tmp_path):
    path = tmp_path / "objects.db"
    path.write_bytes(b"this is not a database" * 100)

    async def body():
        with pytest.raises(StoreUnavailable, match=str(path)):
            await SqliteStore(str(path)).start()
    asyncio.run(body())


def test_closed_store_ends_its_watches(backend):
    async def body():
        s = backend.store()
        await s.start()
        events = s.watch("/pods/", await s.revision())
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)
        await s.close()
        with pytest.raises(StoreUnavailable, match="closed"):
            await asyncio.wait_for(pending, WAIT)
        await events.aclose()
        with pytest.raises(StoreUnavailable):
            await s.get("/pods/ns/a")
    asyncio.run(body())


def test_bad_keys_and_values_are_refused_the_same_way(backend):
    async def body(s):
        for key in ("pods/ns/a", "", "/pods/a\x00b", "/pods/a\nb", "/" + "k" * 2000,
                    "/pods/\ud800"):
            with pytest.raises(InvalidKey):
                await s.create(key, b"x")
        with pytest.raises(InvalidKey):
            await s.list("pods")
        with pytest.raises(TypeError):
            await s.create("/pods/ns/a", "not bytes")
        with pytest.raises(ValueTooLarge):
            await s.create("/pods/ns/a", b"x" * (MAX_VALUE_BYTES + 1))
        with pytest.raises(ValueError):
            await s.update("/pods/ns/a", b"x", 0)
        assert isinstance(InvalidKey("x"), StoreError)
        assert (await s.list("/"))[0] == []
        # a non-ASCII key is a key, sorted byte-wise (as etcd does) by both stores
        await s.create("/pods/ns/é", b"1")
        await s.create("/pods/ns/z", b"2")
        assert [kv.key for kv in (await s.list("/pods/"))[0]] == ["/pods/ns/z", "/pods/ns/é"]
        # a value of 3 MiB (the API's request limit) is stored as it is
        big = os.urandom(3 * 1024 * 1024)
        await s.create("/pods/ns/big", big)
        assert (await s.get("/pods/ns/big")).value == big
    run(body, backend.store())


# -- etcd only -------------------------------------------------------------------------------

def test_etcd_hostile_keys_and_values(shared_etcd):
    backend = etcd_backend(shared_etcd)
    raw = backend.raw_client()
    prefix = backend.prefix.encode()
    outside = [prefix + b"x/pods/ns/a",            # a sibling tree that shares the prefix's text
               prefix[:-1] + b"/pods/ns/a",        # a shorter prefix
               b"/podnet/nodes/10-98-1-0-24"]
    inside_bad = [prefix + b"/pods/ns/\xff\xfe",   # not UTF-8
                  prefix + b"pods"]                # no "/" after the prefix

    async def body(s):
        start = await s.revision()
        events = s.watch("/", start)
        try:
            for key in outside + inside_bad:
                await asyncio.to_thread(raw.put, key, b"hostile")
            junk = b"\x00\xff{not json" + os.urandom(1024 * 1024)
            await asyncio.to_thread(raw.put, prefix + b"/pods/ns/junk", junk)
            kv = await s.get("/pods/ns/junk")
            assert kv.value == junk
            items, _ = await s.list("/")
            assert [item.key for item in items] == ["/pods/ns/junk"]
            event = await asyncio.wait_for(anext(events), WAIT)
            assert (event.key, event.value) == ("/pods/ns/junk", junk)
            await next_is_sentinel(s, events, "/pods/")
        finally:
            await events.aclose()
    try:
        run(body, backend.store())
    finally:
        for key in outside:
            raw.delete(key)


def test_etcd_stopped_mid_watch_then_resumed_after_restart(own_etcd):
    backend = etcd_backend(own_etcd)

    async def body(s):
        start = await s.revision()
        first = await s.create("/pods/ns/a", b"1")
        events = s.watch("/pods/", start)
        seen = await take(events, 1)
        await asyncio.to_thread(own_etcd.stop)
        with pytest.raises(StoreUnavailable, match="watch /pods/"):
            await asyncio.wait_for(anext(events), WAIT)
        await events.aclose()
        with pytest.raises(StoreUnavailable, match="create /pods/ns/b"):
            await s.create("/pods/ns/b", b"2")
        await asyncio.to_thread(own_etcd.start)
        second = await s.create("/pods/ns/b", b"2")
        events = s.watch("/pods/", seen[-1].revision)
        try:
            got = await take(events, 1)
            assert [(e.key, e.revision) for e in seen + got] == [("/pods/ns/a", first),
                                                                  ("/pods/ns/b", second)]
            await next_is_sentinel(s, events, "/pods/")
        finally:
            await events.aclose()
    run(body, backend.store(timeout=2.0))


def test_etcd_frozen_mid_watch_is_unavailable(own_etcd):
    """A stopped process keeps its sockets open and says nothing: the watch's probe notices."""
    backend = etcd_backend(own_etcd)

    async def body(s):
        events = s.watch("/pods/", await s.revision())
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.5)  # the stream is open
        own_etcd.signal(signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable, match="does not answer"):
                await asyncio.wait_for(pending, WAIT)
        finally:
            own_etcd.signal(signal.SIGCONT)
            await events.aclose()
    run(body, backend.store(timeout=1.0, watch_probe=1.0))


def test_etcd_watcher_far_behind_ends_and_resumes(shared_etcd):
    backend = etcd_backend(shared_etcd)

    async def body(s):
        start = await s.revision()
        events = s.watch("/pods/", start)
        written = [await s.create("/pods/ns/first", b"x")]
        seen = await take(events, 1)
        # the watcher reads nothing while 40 changes arrive; it may hold 5
        written += [await s.create(f"/pods/ns/p{i:02d}", b"x") for i in range(40)]
        with pytest.raises(StoreUnavailable, match="behind"):
            while True:
                seen.append(await asyncio.wait_for(anext(events), WAIT))
        await events.aclose()
        assert len(seen) <= 1 + 5
        s.watch_backlog = 1000  # a watcher that keeps up (catching up comes in large batches)
        events = s.watch("/pods/", seen[-1].revision)
        try:
            while len(seen) < len(written):
                seen += await take(events, min(5, len(written) - len(seen)))
            assert [e.revision for e in seen] == written
        finally:
            await events.aclose()
    run(body, backend.store(watch_backlog=5))


def test_etcd_unreachable_at_start_is_store_unavailable(tmp_path):
    from etcd_local import free_port

    async def body():
        store = EtcdObjectStore([f"http://127.0.0.1:{free_port()}"], timeout=1.0)
        with pytest.raises(StoreUnavailable, match="revision"):
            await store.start()
        await store.close()
    asyncio.run(body())


def test_etcd_endpoint_failover(shared_etcd):
    """A dead first endpoint: reads and (never-sent) writes go to the next one."""
    from etcd_local import free_port
    dead = f"https://127.0.0.1:{free_port()}"
    prefix = f"/podnet-test/{unique()}/registry"
    store = EtcdObjectStore([dead, shared_etcd.url], prefix=prefix, tls=shared_etcd.tls,
                            timeout=2.0)

    async def body(s):
        revision = await s.create("/pods/ns/a", b"1")
        assert (await s.get("/pods/ns/a")).mod_revision == revision
    run(body, store)


def test_etcd_tls_parts_may_be_missing(shared_etcd, tmp_path):
    """(CA, None, None): etcd asks for a client certificate and refuses the connection; (None,
    cert, key): the server's certificate is not signed by a system CA and is refused. Neither
    turns verification off."""
    async def body(store):
        with pytest.raises(StoreUnavailable):
            await store.start()
        await store.close()
    no_cert = EtcdObjectStore([shared_etcd.url], tls=(shared_etcd.ca, None, None), timeout=2.0)
    asyncio.run(body(no_cert))
    no_ca = EtcdObjectStore([shared_etcd.url], tls=(None, shared_etcd.client_cert,
                                                    shared_etcd.client_key), timeout=2.0)
    assert no_ca._session().verify is True
    asyncio.run(body(no_ca))
    with pytest.raises(ValueError, match="key"):
        EtcdObjectStore([shared_etcd.url], tls=(shared_etcd.ca, shared_etcd.client_cert, None))
