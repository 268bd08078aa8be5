"""The whole scheduler's throughput through the cluster API: pods bound per second (not a test).

    sudo .venv/bin/python bench/scheduler_cluster_throughput.py [--nodes 100] [--pods 1000]
        [--store sqlite|etcd|both] [--workers 32] [--json out.json]

One podnetd in a private netns (--no-pod-runtime: nothing runs the pods; its own Node tainted
NoSchedule, so every pod goes to a fake node), holding the scheduler's lease. --nodes fake Node
objects are created by the admin through the API (Ready=True, 8 cpu, 32Gi, 110 pods, 5 zones;
no Lease, so --node-monitor-grace-period is long enough that they stay Ready). Then --pods pods
(100m cpu, 64Mi requested) are created by --workers concurrent clients over the daemon's socket,
and a watch opened before the first create tells when each gets spec.nodeName.

Printed: the create rate, the scheduling throughput (pods bound per second, from the first
create's call to the last binding seen; and over the middle 80% of bindings, when creates and
binds overlap in steady state), and the binding latency (create returned -> bound seen by the
watch) p50/p90/p99/max. Target: >= 100 pods/s with 100 nodes (issue 11). --store sqlite is the
one-node store (--store static); etcd runs a local etcd in the daemon's netns."""
import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from clusterlib import Api, cpu_seconds, pct  # sets sys.path

from testlib import Daemon, Netns, unique  # noqa: E402

ZONES = ["zone-a", "zone-b", "zone-c", "zone-d", "zone-e"]


def fake_node(i: int) -> dict:
    name = f"fake-{i:03d}"
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": ZONES[i % 5]}},
            "spec": {"podCIDR": f"10.200.{i}.0/24", "podCIDRs": [f"10.200.{i}.0/24"]}}


def fake_status(node: dict) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    node = dict(node)
    node["status"] = {
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "fake node (bench)", "lastHeartbeatTime": now,
                        "lastTransitionTime": now}]}
    return node


def bench_pod(i: int, phase: str = "sched") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{phase}-{i:05d}", "namespace": "default",
                         "labels": {"bench": phase, "app": f"app-{i % 20}"}},
            "spec": {"containers": [{"name": "app", "image": "busybox",
                                     "command": ["sleep", "3600"],
                                     "resources": {"requests": {"cpu": "100m",
                                                                "memory": "64Mi"}}}]}}


class NetnsEtcd:
    """etcd on the loopback of a netns (plain HTTP: nothing else can reach it), temp data dir,
    stopped by PID."""

    def __init__(self, netns: str, workdir: str):
        self.netns, self.dir = netns, workdir
        self.url = "http://127.0.0.1:23790"
        self.proc = None

    def start(self) -> "NetnsEtcd":
        log = open(os.path.join(self.dir, "etcd.log"), "ab")
        peer = "http://127.0.0.1:23800"
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "etcd", "--name", "bench",
             "--data-dir", os.path.join(self.dir, "etcd"), "--listen-client-urls", self.url,
             "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"bench={peer}",
             "--logger", "zap", "--log-outputs", "stderr"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}", "etcdctl",
                              f"--endpoints={self.url}", "endpoint", "health"],
                             capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}
                             ).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("etcd did not start: see " + os.path.join(self.dir, "etcd.log"))
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_scheduler(api: Api, node: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            lease = await api.get("leases", "kube-system", "kube-scheduler")
            if (lease.get("spec") or {}).get("holderIdentity"):
                await api.get("nodes", "", node)
                return
        except Exception:  # noqa: BLE001 - not there yet
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the scheduler did not take its lease in {timeout}s")
        await asyncio.sleep(0.3)


async def create_all(channels: list[Api], docs: list[dict], workers: int,
                     returned: dict | None = None, latencies: list | None = None) -> None:
    queue = list(reversed(docs))

    async def worker(api: Api):
        while queue:
            doc = queue.pop()
            t0 = time.perf_counter()
            await api.create("pods", "default", doc)
            t1 = time.perf_counter()
            if returned is not None:
                returned[doc["metadata"]["name"]] = t1
            if latencies is not None:
                latencies.append(t1 - t0)
    await asyncio.gather(*(worker(channels[w % len(channels)]) for w in range(workers)))


async def prepare_backlog(socket: str, args) -> tuple[float, str]:
    """With no scheduler running (--no-leader-elect): the fake nodes, and --pods pending pods.
    The pods list's resourceVersion, for a watch from before the scheduler starts."""
    side = Api(socket)
    channels = [Api(socket) for _ in range(max(1, args.workers // 8))]
    try:
        t = time.perf_counter()
        for i in range(0, args.nodes, 10):
            made = await asyncio.gather(*(side.create("nodes", "", fake_node(j))
                                          for j in range(i, min(i + 10, args.nodes))))
            await asyncio.gather(*(side.update("nodes", "", fake_status(n), "status")
                                   for n in made))
        nodes_s = time.perf_counter() - t
        await create_all(channels, [bench_pod(i, "backlog") for i in range(args.pods)],
                         args.workers)
        listing = await side.list("pods", "default", "bench=backlog")
        if any(p["spec"].get("nodeName") for p in listing["items"]):
            raise SystemExit("a backlog pod was bound with no scheduler running")
        return nodes_s, listing["metadata"]["resourceVersion"]
    finally:
        for api in [side, *channels]:
            await api.close()


async def drain_backlog(socket: str, rv: str, ready_at: float, args) -> dict:
    """The scheduler starts with --pods pending: bindings seen from the watch (opened from
    before the restart, so none is missed)."""
    side = Api(socket)
    bound: list[float] = []
    try:
        async for kind, obj, t in side.watch("pods", "default", "bench=backlog", rv):
            if kind == "MODIFIED" and obj["spec"].get("nodeName"):
                bound.append(t)
                if len(bound) == args.pods:
                    break
    finally:
        await side.close()
    first, last = bound[0], bound[-1]
    return {"backlog_ready_to_first_s": first - ready_at,
            "backlog_first_to_last_s": last - first,
            "backlog_rate": (len(bound) - 1) / (last - first) if last > first else float("nan"),
            "backlog_ready_to_last_rate": len(bound) / (last - ready_at)}


async def run(socket: str, node: str, args, nodes_s: float, pid: int) -> dict:
    side = Api(socket)
    channels = [Api(socket) for _ in range(max(1, args.workers // 8))]
    try:
        await wait_scheduler(side, node)
        listing = await side.list("pods", "default", "bench=sched")
        rv = listing["metadata"]["resourceVersion"]
        returned: dict[str, float] = {}
        bound: dict[str, tuple[float, str]] = {}
        done = asyncio.Event()

        async def watcher():
            async for kind, obj, t in side.watch("pods", "default", "bench=sched", rv):
                name = obj["metadata"]["name"]
                node_name = obj["spec"].get("nodeName")
                if kind in ("ADDED", "MODIFIED") and node_name and name not in bound:
                    bound[name] = (t, node_name)
                    if len(bound) == args.pods:
                        done.set()
                        return

        create_lat: list[float] = []
        watch_task = asyncio.create_task(watcher())
        await asyncio.sleep(0.3)
        cpu0 = cpu_seconds(pid)[0]
        t0 = time.perf_counter()
        try:
            await create_all(channels, [bench_pod(i) for i in range(args.pods)], args.workers,
                             returned, create_lat)
            created = time.perf_counter()
            try:
                await asyncio.wait_for(done.wait(), args.timeout)
            except asyncio.TimeoutError:
                raise SystemExit(f"{args.pods - len(bound)} of {args.pods} pods not bound after "
                                 f"{args.timeout}s") from None
        finally:
            watch_task.cancel()
        cpu = cpu_seconds(pid)[0] - cpu0
        refused = side.refused + sum(c.refused for c in channels)
    finally:
        for api in [side, *channels]:
            await api.close()
    times = sorted(t for t, _ in bound.values())
    last = times[-1]
    lo, hi = times[len(times) // 10], times[len(times) * 9 // 10]
    per_node: dict[str, int] = {}
    for _, n in bound.values():
        per_node[n] = per_node.get(n, 0) + 1
    return {"nodes": args.nodes, "pods": args.pods, "workers": args.workers,
            "nodes_created_s": nodes_s,
            "create_rate": args.pods / (created - t0), "create_s": create_lat,
            "throughput": args.pods / (last - t0),
            "steady_throughput": (len(times) * 8 // 10) / (hi - lo) if hi > lo else float("nan"),
            "first_to_last_bound_s": last - t0,
            "bind_latency_s": [bound[n][0] - returned[n] for n in bound],
            "nodes_used": len(per_node), "max_per_node": max(per_node.values()),
            "on_real_node": per_node.get(node, 0), "refused_retried": refused,
            "podnetd_cpu_s": cpu}


def one(store: str, args) -> dict:
    spaces = Netns()
    daemon = etcd = None
    workdir = tempfile.mkdtemp(prefix=f"{unique('sct')}-")
    try:
        ns = spaces.add("sct")
        extra = ["--no-pod-runtime", "--register-with-taints", "bench/real=node:NoSchedule",
                 "--node-monitor-grace-period", "3600", "--metrics-listen", "",
                 "--no-leader-elect"]
        if store == "etcd":
            etcd = NetnsEtcd(ns, workdir).start()
            extra += ["--store", "etcd", "--etcd-endpoints", etcd.url,
                      "--cluster-cidr", "10.79.0.0/16", "--node-ip", "127.0.0.1"]
        daemon = Daemon(ns, "10.79.7.0/24", workdir=os.path.join(workdir, "d"), extra=extra)
        os.makedirs(daemon.workdir, mode=0o700)
        daemon.start(timeout=60)
        nodes_s, rv = asyncio.run(prepare_backlog(daemon.socket, args))
        daemon.stop()
        daemon.extra.remove("--no-leader-elect")   # now the scheduler runs (its lease is free)
        if store == "etcd":
            # the first run's pod CIDR lease outlives it for a while, and a restart refuses a
            # block leased in etcd (even to its own node name): another block
            daemon.pod_cidr = "10.79.8.0/24"
        daemon.start(timeout=60)
        cpu0 = cpu_seconds(daemon.proc.pid)[0]
        backlog = asyncio.run(drain_backlog(daemon.socket, rv, time.perf_counter(), args))
        backlog["backlog_cpu_s"] = cpu_seconds(daemon.proc.pid)[0] - cpu0
        res = asyncio.run(run(daemon.socket, daemon.node_name, args, nodes_s, daemon.proc.pid))
        res.update(backlog)
        res["store"] = store
        try:
            res["podnetd_rss_mib"] = int(open(f"/proc/{daemon.proc.pid}/status").read()
                                         .split("VmRSS:")[1].split()[0]) / 1024
        except (OSError, IndexError):
            pass
        return res
    finally:
        if daemon is not None:
            daemon.stop()
        if etcd is not None:
            etcd.stop()
        spaces.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def print_results(results: list[dict]) -> None:
    try:
        load = open("/proc/loadavg").read().split()[:3]
        print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(load)}")
    except OSError:
        pass
    for r in results:
        bl = r["bind_latency_s"]
        print(f"store {r['store']}: {r['pods']} pods onto {r['nodes']} fake nodes "
              f"({r['workers']} concurrent creators; {r['nodes_used']} nodes used, at most "
              f"{r['max_per_node']} pods on one, {r['on_real_node']} on the tainted real node)")
        print(f"  backlog of {r['pods']} pending pods when the scheduler starts: "
              f"{r['backlog_rate']:.0f} pods/s from the first binding to the last "
              f"({r['backlog_first_to_last_s']:.2f} s; the first {r['backlog_ready_to_first_s']:.2f}"
              f" s after the restarted daemon served; podnetd CPU "
              f"{r['backlog_cpu_s'] * 1000 / r['pods']:.1f} ms per pod incl. start-up)")
        print(f"  then {r['pods']} more created while it runs:")
        print(f"  creates:                 {r['create_rate']:7.0f} pods/s  "
              f"(create call p50 {pct(r['create_s'], 50) * 1000:.1f} ms, "
              f"p99 {pct(r['create_s'], 99) * 1000:.1f} ms)")
        print(f"  scheduling throughput:   {r['throughput']:7.0f} pods/s  "
              f"(first create -> last bound {r['first_to_last_bound_s']:.2f} s; target >= 100)")
        print(f"  steady (10%..90% bound): {r['steady_throughput']:7.0f} pods/s")
        print(f"  podnetd CPU: {r['podnetd_cpu_s']:.1f} s = {r['podnetd_cpu_s'] * 1000 / r['pods']:.1f}"
              f" ms per pod (create + schedule + bind + events, API and store)")
        print(f"  binding latency (create returned -> nodeName seen): "
              f"p50 {pct(bl, 50):.2f} s, p90 {pct(bl, 90):.2f} s, p99 {pct(bl, 99):.2f} s, "
              f"max {max(bl):.2f} s")
        if r.get("refused_retried"):
            print(f"  calls refused (UNAVAILABLE) and retried: {r['refused_retried']}")
        if r.get("podnetd_rss_mib"):
            print(f"  podnetd RSS after: {r['podnetd_rss_mib']:.0f} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--store", choices=["sqlite", "etcd", "both"], default="sqlite")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (a netns per run)")
    stores = ["sqlite", "etcd"] if args.store == "both" else [args.store]
    results = []
    for s in stores:
        results.append(one(s, args))
        print_results(results[-1:])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
