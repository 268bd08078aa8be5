"""The object store's latency: SqliteStore (a temp file) and EtcdObjectStore (a real etcd on
loopback, TLS with client certificates, as tests/etcd_local.py starts it), side by side.

For each store: N sequential creates and N updates of ~1 KiB objects (p50/p99 per call), the
delivery of a watch event (from the write's start to the watcher holding the event; p50/p99),
K concurrent creates (wall time), and a listing of the N objects. Prints a table; --json writes
the numbers for notes.

Usage: python bench/object_store.py [--objects 300] [--concurrent 32] [--json out.json]
"""
import argparse
import asyncio
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from etcd_local import LocalEtcd  # noqa: E402

from podnetd.apiserver.storage.etcd import EtcdObjectStore  # noqa: E402
from podnetd.apiserver.storage.sqlite import SqliteStore  # noqa: E402

VALUE = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x" * 40},
                    "spec": {"containers": [{"name": "c", "image": "busybox" + "y" * 800}]}}).encode()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def measure(store, objects: int, concurrent: int) -> dict:
    await store.start()
    try:
        creates, updates, deliveries = [], [], []
        revisions = {}
        for i in range(objects):
            t = time.perf_counter()
            revisions[i] = await store.create(f"/pods/bench/p{i:05d}", VALUE)
            creates.append(time.perf_counter() - t)
        for i in range(objects):
            t = time.perf_counter()
            revisions[i] = await store.update(f"/pods/bench/p{i:05d}", VALUE, revisions[i])
            updates.append(time.perf_counter() - t)

        # watch delivery: one write at a time, timed until the watcher holds its event
        events = store.watch("/watched/", await store.revision())
        try:
            first = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.3)  # the watch is established before timing starts
            pending = first
            for i in range(objects):
                t = time.perf_counter()
                await store.create(f"/watched/w{i:05d}", VALUE)
                await asyncio.wait_for(pending, 30)
                deliveries.append(time.perf_counter() - t)
                pending = asyncio.ensure_future(anext(events))
            pending.cancel()
        finally:
            await events.aclose()

        t = time.perf_counter()
        results = await asyncio.gather(*(store.create(f"/burst/b{i:05d}", VALUE)
                                         for i in range(concurrent)))
        burst = time.perf_counter() - t
        assert len(set(results)) == concurrent

        t = time.perf_counter()
        listed, _ = await store.list("/pods/bench/")
        listing = time.perf_counter() - t
        assert len(listed) == objects
        ms = 1000
        return {"create_p50_ms": percentile(creates, 50) * ms, "create_p99_ms": percentile(creates, 99) * ms,
                "update_p50_ms": percentile(updates, 50) * ms, "update_p99_ms": percentile(updates, 99) * ms,
                "watch_p50_ms": percentile(deliveries, 50) * ms, "watch_p99_ms": percentile(deliveries, 99) * ms,
                f"burst_{concurrent}_ms": burst * ms, f"list_{objects}_ms": listing * ms}
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {}
    tmp = tempfile.mkdtemp(prefix="podnet-bench-store-")
    etcd = LocalEtcd()
    try:
        results["sqlite"] = asyncio.run(measure(SqliteStore(os.path.join(tmp, "objects.db")),
                                                args.objects, args.concurrent))
        etcd.start()
        results["etcd"] = asyncio.run(measure(EtcdObjectStore([etcd.url], tls=etcd.tls),
                                              args.objects, args.concurrent))
    finally:
        etcd.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    names = list(results["sqlite"])
    print(f"{'':22}" + "".join(f"{store:>12}" for store in results))
    for name in names:
        print(f"{name:22}" + "".join(f"{results[store][name]:12.2f}" for store in results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
