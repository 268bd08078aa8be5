"""Cluster pod startup latency and mutating API call latency in the netns lab (not a test).

    sudo .venv/bin/python bench/cluster_pod_startup.py [--nodes 3] [--pods 60] [--json out.json]

A lab of --nodes nodes on etcd (podnetd/lab), the busybox image imported on every node. After a
warm-up (one pod per node started and deleted, so the scheduler holds its lease and every node's
runtime has unpacked the image, as the SLO excludes image pulls), --pods pods (busybox sleep) are
created at once, concurrently, through n1's socket, and a watch on them (WatchObjects, opened
before the first create) tells when each has phase Running and every container running.

Pod startup latency (Kubernetes' SLI, from the client side): the create call's return -> the
first watch event showing the pod running; also from the call's start. Targets: p99 <= 2.5 s
(issue 11), Kubernetes' SLO 5 s.

Mutating API call latency: every create, plus a parallel stream of label updates on a separate
object (a Lease in default) sent one after the other while the pods start. Target p99 <= 100 ms
(Kubernetes' SLO: 1 s).

PODNETD_EXTRA="--oci-runtime crun" gives every podnetd more flags (A/B runs).

Everything made (lab namespaces, daemons, etcd, pods, their mounts) is removed afterwards, also
after a failure or ^C."""
import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

from clusterlib import (Api, all_running, cpu_seconds, force_cleanup, machine_busy, pct, pod,
                        runc_bundles_under)

from podnetd.lab import Lab  # noqa: E402
from runtime_lib import busybox_archive  # noqa: E402

PY = sys.executable


def import_image(lab: Lab, archive: str) -> None:
    for node in lab.node_names():
        subprocess.run([PY, "-m", "podnetd.ctl.main", "--socket", lab.socket(node), "image",
                        "import", "busybox", archive], check=True, capture_output=True,
                       timeout=120)


async def wait_cluster_ready(api: Api, nodes: int, timeout: float = 90) -> None:
    """Every node registered and Ready, the scheduler's lease held."""
    deadline = time.monotonic() + timeout
    while True:
        listing = await api.list("nodes")
        ready = [n for n in listing["items"] if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (n.get("status") or {}).get("conditions") or [])]
        try:
            lease = await api.get("leases", "kube-system", "kube-scheduler")
            holder = (lease.get("spec") or {}).get("holderIdentity")
        except Exception:  # noqa: BLE001 - not there yet
            holder = None
        if len(ready) >= nodes and holder:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"cluster not ready after {timeout}s: {len(ready)}/{nodes} nodes "
                             f"Ready, scheduler lease holder {holder!r}")
        await asyncio.sleep(0.5)


async def run_pods(apis: list[Api], side: Api, names: list[str], label: str, timeout: float,
                   updates: bool):
    """Create the pods at once (spread over the clients in apis); the watch and the update stream
    on their own client (side). Per-pod (call start, call return, running seen, node), the create
    latencies and the update latencies."""
    selector = f"bench={label}"
    listing = await side.list("pods", "default", selector)
    rv = listing["metadata"]["resourceVersion"]
    started: dict[str, float] = {}
    returned: dict[str, float] = {}
    running: dict[str, float] = {}
    bound: dict[str, float] = {}
    nodes: dict[str, str] = {}
    done = asyncio.Event()
    changes = [0]

    async def watcher():
        async for kind, obj, t in side.watch("pods", "default", selector, rv):
            changes[0] += 1
            name = obj["metadata"]["name"]
            if os.environ.get("BENCH_TRACE") == name:
                st = obj.get("status") or {}
                print("TRACE", kind, obj["metadata"]["resourceVersion"], st.get("phase"),
                      st.get("podIP"), [(c["type"], c["status"]) for c in st.get("conditions") or []],
                      [(list((c.get("state") or {}).keys()), (c.get("state") or {}).get("waiting"),
                        c.get("ready"), c.get("started")) for c in st.get("containerStatuses") or []],
                      file=sys.stderr)
            if obj["spec"].get("nodeName") and name not in bound:
                bound[name] = t
            if kind in ("ADDED", "MODIFIED") and name not in running and all_running(obj):
                running[name] = t
                nodes[name] = obj["spec"].get("nodeName", "?")
                if len(running) == len(names):
                    done.set()
                    return

    update_lat: list[float] = []
    stop_updates = asyncio.Event()

    async def updater():
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": f"bench-{label}", "namespace": "default"},
                 "spec": {"holderIdentity": "bench"}}
        await side.create("leases", "default", lease)
        i = 0
        while not stop_updates.is_set():
            i += 1
            lease["metadata"]["labels"] = {"bench-seq": str(i)}
            t0 = time.perf_counter()
            await side.update("leases", "default", lease)
            update_lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)   # a steady stream, not a second flood
        await side.delete("leases", "default", f"bench-{label}")

    async def create(api: Api, name: str):
        started[name] = time.perf_counter()
        await api.create("pods", "default", pod(name, {"bench": label}))
        returned[name] = time.perf_counter()

    watch_task = asyncio.create_task(watcher())
    update_task = asyncio.create_task(updater()) if updates else None
    await asyncio.sleep(0.3)    # the watch is open and the update stream going
    try:
        await asyncio.gather(*(create(apis[i % len(apis)], n) for i, n in enumerate(names)))
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except asyncio.TimeoutError:
            missing = sorted(set(names) - set(running))
            raise SystemExit(f"{len(missing)} of {len(names)} pods not running after "
                             f"{timeout}s: {', '.join(missing[:10])}") from None
    finally:
        stop_updates.set()
        if update_task is not None:
            await update_task
        watch_task.cancel()
    create_lat = [returned[n] - started[n] for n in names]
    after = await side.list("pods", "default", selector)
    writes = int(after["metadata"]["resourceVersion"]) - int(rv)
    return (writes, changes[0]), ({n: (started[n], returned[n], running[n], nodes[n], bound[n]) for n in names},
            create_lat, update_lat)


async def delete_and_wait(api: Api, names: list[str], label: str, timeout: float = 120) -> None:
    await asyncio.gather(*(api.delete("pods", "default", n) for n in names))
    deadline = time.monotonic() + timeout
    while (await api.list("pods", "default", f"bench={label}"))["items"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"pods bench={label} still there after {timeout}s")
        await asyncio.sleep(0.2)


def start_profiles(lab: Lab, directory: str | None) -> list[subprocess.Popen]:
    """--profile: py-spy records every node's podnetd while the pods start (measurement only:
    py-spy is not a dependency of podnet)."""
    if not directory:
        return []
    os.makedirs(directory, exist_ok=True)
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return [subprocess.Popen([spy, "record", "--pid", str(lab.daemon(n)["pid"]), "--duration",
                              "10", "--rate", "200", "--gil", "--format", "raw", "--nonblocking",
                              "-o", os.path.join(directory, f"{n}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n in lab.node_names()]


def start_perf(path: str | None) -> subprocess.Popen | None:
    """--perf FILE: a system-wide `perf record -g` of just the window the pods start in, so the
    CPU of runc, etcd, the kernel's threads and podnetd can be told apart (measurement only)."""
    if not path:
        return None
    proc = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "499", "-o", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)     # perf has opened its events before the first create
    return proc


def stop_perf(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.send_signal(2)
        proc.wait(timeout=60)


async def wait_runtime_empty(lab: Lab, timeout: float = 60) -> None:
    """Until the node agents have removed every deleted pod's containers; a pod they keep
    running after its object is gone is reported (and its node's log kept) as a finding."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    while runc_bundles_under(lab.st.dir) and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
    left = runc_bundles_under(lab.st.dir)
    if left:
        keep = f"/tmp/{lab.st.name}-logs"
        os.makedirs(keep, exist_ok=True)
        for n in lab.node_names():
            shutil.copy(os.path.join(lab.st.nodes[n]["dir"], "podnetd.log"),
                        os.path.join(keep, f"{n}.log"))
        print(f"FINDING: {len(left)} containers still run {time.monotonic() - t0:.0f} s after "
              f"their pods were deleted: {', '.join(left)} (logs kept in {keep})",
              file=sys.stderr)


async def bench(lab: Lab, args) -> dict:
    sock = lab.socket("n1")
    side = Api(sock)
    apis = [Api(sock) for _ in range(args.clients)]
    names: list[str] = []
    try:
        await wait_cluster_ready(side, args.nodes)
        warm = [f"warm-{i}" for i in range(args.nodes)]
        try:
            _ = await run_pods(apis, side, warm, "warm", 120, updates=False)
        finally:
            await delete_and_wait(side, warm, "warm")
        for api in apis:
            api.refused = 0
        names = [f"start-{i:03d}" for i in range(args.pods)]
        spies = start_profiles(lab, args.profile)
        perf = start_perf(args.perf)
        pids = {n: lab.daemon(n)["pid"] for n in lab.node_names()}
        cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
        busy0 = machine_busy()
        t0 = time.perf_counter()
        writes, (pods, create_lat, update_lat) = await run_pods(apis, side, names, "run", args.timeout,
                                                      True)
        wall = time.perf_counter() - t0
        busy1 = machine_busy()
        stop_perf(perf)
        cpu = {n: [a - b for a, b in zip(cpu_seconds(p), cpu0[n])] for n, p in pids.items()}
        refused = sum(a.refused for a in apis) + side.refused
        refusals = [r for a in [*apis, side] for r in a.refusals]
        for spy in spies:
            spy.wait()
    finally:
        try:
            if names:
                await delete_and_wait(side, names, "run")
                await wait_runtime_empty(lab)
        finally:
            for api in [*apis, side]:
                await api.close()
    startup = [r - ret for _, ret, r, _, _ in pods.values()]
    from_start = [r - s for s, _, r, _, _ in pods.values()]
    to_bound = [b - ret for _, ret, _, _, b in pods.values()]
    bound_to_running = [r - b for _, _, r, _, b in pods.values()]
    per_node: dict[str, int] = {}
    for *_, node, _ in pods.values():
        per_node[node] = per_node.get(node, 0) + 1
    return {"pods": len(pods), "nodes": args.nodes, "clients": args.clients, "wall_s": wall,
            "per_node": per_node, "cpu": cpu, "store_writes": writes[0], "pod_changes": writes[1],
            "machine_busy": (busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1]),
            "refused_retried": refused, "refusals": refusals[:3],
            "startup_s": startup, "startup_from_call_start_s": from_start,
            "to_bound_s": to_bound, "bound_to_running_s": bound_to_running,
            "create_s": create_lat, "update_s": update_lat}


def summary(values: list[float]) -> dict:
    return {"count": len(values), "p50": pct(values, 50), "p90": pct(values, 90),
            "p99": pct(values, 99), "max": max(values)}


def print_table(res: dict) -> None:
    print(f"{res['pods']} pods created at once through n1's socket over {res['clients']} "
          f"connection(s), {res['nodes']}-node etcd lab; "
          f"all running {res['wall_s']:.2f} s after the first create; "
          f"per node: {', '.join(f'{k} {v}' for k, v in sorted(res['per_node'].items()))}")
    try:
        load = open("/proc/loadavg").read().split()[:3]
        print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(load)}")
    except OSError:
        pass
    print(f"CPU while they started: machine {res['machine_busy'] * 100:.0f}% busy; "
          + "; ".join(f"{n} podnetd {c[0]:.1f} s + its reaped children (runc, CNI, ip) "
                      f"{c[1]:.1f} s" for n, c in sorted(res["cpu"].items())))
    print(f"store writes (revisions) from the first create until all ran: {res['store_writes']} "
          f"({res['store_writes'] / max(1, res['pods']):.1f} per pod, the update stream included); "
          f"of them pod changes: {res['pod_changes']} "
          f"({res['pod_changes'] / max(1, res['pods']):.1f} per pod)")
    if res["refused_retried"]:
        print(f"calls refused by the server and retried: {res['refused_retried']} "
              f"({'; '.join(res['refusals'])})")
    print(f"{'':<44}{'count':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  target p99")
    rows = [("pod startup (create returned -> running)", res["startup_s"], "<= 2.5 s (SLO 5 s)"),
            ("pod startup (create called -> running)", res["startup_from_call_start_s"], ""),
            ("  of which: create returned -> bound", res["to_bound_s"], "(scheduler)"),
            ("  of which: bound -> running", res["bound_to_running_s"], "(node agent, runtime)"),
            ("mutating: pod create", res["create_s"], "<= 100 ms (SLO 1 s)"),
            ("mutating: lease label update (parallel)", res["update_s"], "<= 100 ms"),
            ("mutating: all", res["create_s"] + res["update_s"], "<= 100 ms")]
    for title, values, target in rows:
        if not values:
            continue
        s = summary(values)
        unit, scale = ("ms", 1000) if title.startswith("mutating") else ("s", 1)
        cells = "".join(f"{s[k] * scale:>{9 - len(unit)}.{2 if unit == 's' else 1}f}{unit}"
                        for k in ("p50", "p90", "p99", "max"))
        print(f"{title:<44}{s['count']:>6}{cells}  {target}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--pods", type=int, default=60)
    ap.add_argument("--clients", type=int, default=4,
                    help="connections the creates are spread over (default 4: 15 calls each, "
                         "under podnetd's 16 streams per connection; the watch and the update "
                         "stream have their own)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds for all pods to run")
    ap.add_argument("--name", default=f"cps{os.getpid() % 100000}", help="lab name")
    ap.add_argument("--profile", metavar="DIR",
                    help="py-spy raw profiles (threads holding the GIL) of each podnetd during the start (10 s)")
    ap.add_argument("--perf", metavar="FILE",
                    help="perf record -a -g the machine while the pods start (needs perf)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the lab makes namespaces and runs runc)")
    lab = None
    try:
        lab = Lab.up(args.nodes, "l2", "etcd", name=args.name, wait=120,
                     extra_args=os.environ.get("PODNETD_EXTRA", "").split())
        import_image(lab, busybox_archive())
        res = asyncio.run(bench(lab, args))
    finally:
        if lab is not None:
            for node in lab.node_names():
                lab.stop_daemon(node)
            left = force_cleanup(lab.st.dir)
            if left:
                print(f"cleanup: {left} runc containers were left by the lab's daemons",
                      file=sys.stderr)
            lab.down()
    print_table(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in res.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
