"""Shared by the cluster benches (cluster_pod_startup.py, scheduler_cluster_throughput.py,
podnetd_memory_100pods.py): an asyncio client of the cluster API (podnet.api.v1 ObjectService on
a node's unix socket, root = cluster admin), percentiles, pod documents, and the last-resort
cleanup of runc containers whose bundles live under a directory. Not a test."""
import asyncio
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

import grpc  # noqa: E402

from podnetd.api.podnet.api.v1 import api_pb2, api_pb2_grpc  # noqa: E402

EVENT = {api_pb2.WATCH_EVENT_TYPE_ADDED: "ADDED", api_pb2.WATCH_EVENT_TYPE_MODIFIED: "MODIFIED",
         api_pb2.WATCH_EVENT_TYPE_DELETED: "DELETED",
         api_pb2.WATCH_EVENT_TYPE_BOOKMARK: "BOOKMARK"}


RETRIES = 20


class Api:
    """ObjectService over grpc.aio; objects in and out as dicts. Make it inside the event loop.
    A call refused with UNAVAILABLE (e.g. REFUSED_STREAM when a connection has more calls open
    than the server's grpc.max_concurrent_streams) is tried again, as client-go retries; the
    refusals are counted in .refused."""

    def __init__(self, socket: str):
        # its own connection: grpc would otherwise share one between channels to one target
        self.channel = grpc.aio.insecure_channel(
            f"unix://{socket}", options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = api_pb2_grpc.ObjectServiceStub(self.channel)
        self.refused = 0
        self.refusals: list[str] = []

    async def _call(self, method, request):
        for attempt in range(RETRIES):
            try:
                return await method(request, timeout=60)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == RETRIES - 1:
                    raise
                self.refused += 1
                if len(self.refusals) < 3:
                    self.refusals.append(e.details() or "")
                await asyncio.sleep(min(0.5, 0.05 * (attempt + 1)))

    async def close(self) -> None:
        await self.channel.close()

    async def create(self, resource: str, namespace: str, obj: dict, subresource: str = "",
                     name: str = "") -> dict:
        r = await self._call(self.stub.CreateObject, api_pb2.CreateObjectRequest(
            resource=resource, namespace=namespace, object=json.dumps(obj).encode(),
            subresource=subresource, name=name))
        return json.loads(r.object)

    async def get(self, resource: str, namespace: str, name: str) -> dict:
        r = await self._call(self.stub.GetObject, api_pb2.GetObjectRequest(
            resource=resource, namespace=namespace, name=name))
        return json.loads(r.object)

    async def update(self, resource: str, namespace: str, obj: dict, subresource: str = "") -> dict:
        r = await self._call(self.stub.UpdateObject, api_pb2.UpdateObjectRequest(
            resource=resource, namespace=namespace, object=json.dumps(obj).encode(),
            subresource=subresource))
        return json.loads(r.object)

    async def delete(self, resource: str, namespace: str, name: str,
                     grace: int | None = None) -> None:
        req = api_pb2.DeleteObjectRequest(resource=resource, namespace=namespace, name=name)
        if grace is not None:
            req.grace_period.seconds = grace
        try:
            await self._call(self.stub.DeleteObject, req)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise

    async def list(self, resource: str, namespace: str = "", label_selector: str = "",
                   field_selector: str = "") -> dict:
        r = await self._call(self.stub.ListObjects, api_pb2.ListObjectsRequest(
            resource=resource, namespace=namespace, label_selector=label_selector,
            field_selector=field_selector))
        return json.loads(r.list)

    async def watch(self, resource: str, namespace: str = "", label_selector: str = "",
                    resource_version: str = ""):
        """(type, object, monotonic receive time) for each event."""
        call = self.stub.WatchObjects(api_pb2.WatchObjectsRequest(
            resource=resource, namespace=namespace, label_selector=label_selector,
            resource_version=resource_version))
        try:
            async for ev in call:
                yield EVENT.get(ev.type, "?"), json.loads(ev.object), time.perf_counter()
        finally:
            call.cancel()


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    values = sorted(values)
    rank = max(1, -(-len(values) * p // 100))   # ceil, at least the first
    return values[int(rank) - 1]


def pod(name: str, labels: dict, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"terminationGracePeriodSeconds": 0, **spec, "containers": [
                {"name": "app", "image": "busybox", "command": ["sleep", "3600"]}]}}


def all_running(obj: dict) -> bool:
    """Phase Running and every container's state running (the SLO's "all containers running")."""
    status = obj.get("status") or {}
    statuses = status.get("containerStatuses") or []
    want = len(obj["spec"]["containers"])
    return status.get("phase") == "Running" and len(statuses) == want and \
        all("running" in (c.get("state") or {}) for c in statuses)


def runc_bundles_under(directory: str) -> list[str]:
    """Ids of runc containers whose bundle lives under directory. `runc list` fails now and
    then while containers come and go (a state dir vanishes under it): asked again."""
    for _ in range(20):
        proc = subprocess.run(["runc", "list", "-f", "json"], capture_output=True, text=True)
        try:
            items = json.loads(proc.stdout or "null") if proc.returncode == 0 else None
        except ValueError:
            items = None
        if proc.returncode == 0 and (items is not None or proc.stdout.strip() == "null"):
            return [c["id"] for c in items or [] if (c.get("bundle") or "").startswith(directory)]
        time.sleep(0.1)
    raise RuntimeError(f"runc list: {proc.stderr.strip() or proc.stdout[:200]}")


def force_cleanup(directory: str) -> int:
    """Last resort after a failed run (the daemons already stopped): delete runc containers whose
    bundles live under directory, their pod netns, and unmount what is mounted below it."""
    ids = runc_bundles_under(directory)
    for cid in ids:
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True)
        if cid.startswith("pn-"):
            subprocess.run(["ip", "netns", "del", f"podnet-{cid[3:15]}"], capture_output=True)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    for m in sorted((m for m in mounts if m.startswith(directory)), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)
    return len(ids)


def rss_pss_kib(pid: int) -> tuple[int, int | None]:
    """(VmRSS, Pss from smaps_rollup or None) of a process, in KiB."""
    rss, pss = 0, None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own user+system CPU seconds, its reaped children's)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def machine_busy() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / tick, sum(v[:8]) / tick
