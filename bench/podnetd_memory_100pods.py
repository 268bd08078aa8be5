"""podnetd's own memory on a node running 100 cluster pods, against a k3s agent (not a test).

    sudo .venv/bin/python bench/podnetd_memory_100pods.py [--pods 100] [--settle 10]
        [--json out.json]

One podnetd (single node, SQLite store, the pod runtime with runc and conmon, pod CIDR /24) in
a private netns, the busybox image imported. --pods pods (busybox sleep) are created through the
cluster API, scheduled onto the node by its own scheduler and run by its node agent. Read
before the pods (node Ready, scheduler leading, image imported) and after all run plus --settle
seconds: podnetd's VmRSS and Pss (/proc/PID/smaps_rollup; Pss shares the interpreter's pages
fairly with the other podnetd processes on the machine), and the total VmRSS/Pss of the
conmon processes that supervise the containers (one per container, pause included, named by
the runtime's pn-* ids).

Anchor: k3s publishes about 275 MB for an agent node (kubelet, containerd and flannel in one
process tree, https://docs.k3s.io/reference/resource-profiling). podnetd + conmons is the
comparable set (the containers' own processes are not counted on either side)."""
import argparse
import asyncio
import json
import os
import sys
import time

from clusterlib import Api, all_running, force_cleanup, pod, rss_pss_kib, runc_bundles_under

from runtime_lib import RuntimeNode, busybox_archive  # noqa: E402
from testlib import Netns  # noqa: E402

K3S_AGENT_MB = 275


def conmons(workdir: str) -> list[int]:
    """PIDs of the conmon processes whose command line names a path under workdir."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm") as f:
                if f.read().strip() != "conmon":
                    continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if workdir in cmd:
            found.append(int(name))
    return found


def children(pid: int) -> list[int]:
    """Processes whose parent is pid (helpers podnetd keeps, if any)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def sample(daemon_pid: int, workdir: str) -> dict:
    rss, pss = rss_pss_kib(daemon_pid)
    cm = conmons(workdir)
    cm_mem = [rss_pss_kib(p) for p in cm]
    kids = [p for p in children(daemon_pid) if p not in cm]
    kid_mem = [rss_pss_kib(p) for p in kids]
    return {"podnetd_rss_kib": rss, "podnetd_pss_kib": pss, "conmons": len(cm),
            "conmon_rss_kib": sum(r for r, _ in cm_mem),
            "conmon_pss_kib": sum(p or 0 for _, p in cm_mem),
            "other_children": len(kids), "children_rss_kib": sum(r for r, _ in kid_mem),
            "children_pss_kib": sum(p or 0 for _, p in kid_mem)}


async def wait_node(api: Api, node: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            n = await api.get("nodes", "", node)
            lease = await api.get("leases", "kube-system", "kube-scheduler")
            if any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (n.get("status") or {}).get("conditions") or []) \
                    and (lease.get("spec") or {}).get("holderIdentity"):
                return
        except Exception:  # noqa: BLE001 - not there yet
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"node {node} not Ready with a scheduler in {timeout}s")
        await asyncio.sleep(0.3)


async def run(node: RuntimeNode, args) -> dict:
    pid = node.daemon.proc.pid
    api = Api(node.socket)
    creators = [Api(node.socket) for _ in range(4)]
    names = [f"mem-{i:03d}" for i in range(args.pods)]
    created = False
    try:
        await wait_node(api, node.daemon.node_name)
        await asyncio.sleep(args.settle)
        before = sample(pid, node.workdir)
        listing = await api.list("pods", "default", "bench=mem")
        running: set[str] = set()
        done = asyncio.Event()

        async def watcher():
            async for kind, obj, _ in api.watch("pods", "default", "bench=mem",
                                                listing["metadata"]["resourceVersion"]):
                if kind != "DELETED" and all_running(obj):
                    running.add(obj["metadata"]["name"])
                    if len(running) == len(names):
                        done.set()
                        return
        watch = asyncio.create_task(watcher())
        t0 = time.perf_counter()
        created = True
        # 4 connections x 8 in flight: under podnetd's 16 streams per connection
        queue = list(reversed(names))

        async def creator(c: Api):
            while queue:
                await c.create("pods", "default", pod(queue.pop(), {"bench": "mem"}))
        await asyncio.gather(*(creator(creators[w % 4]) for w in range(32)))
        try:
            await asyncio.wait_for(done.wait(), args.timeout)
        except asyncio.TimeoutError:
            raise SystemExit(f"{len(names) - len(running)} pods not running after "
                             f"{args.timeout}s") from None
        finally:
            watch.cancel()
        all_up = time.perf_counter() - t0
        await asyncio.sleep(args.settle)
        after = sample(pid, node.workdir)
        return {"pods": args.pods, "all_running_s": all_up, "before": before, "after": after,
                "refused_retried": api.refused + sum(c.refused for c in creators)}
    finally:
        if created:
            await asyncio.gather(*(api.delete("pods", "default", n) for n in names),
                                 return_exceptions=True)
            deadline = time.monotonic() + 120
            while runc_bundles_under(node.workdir) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
        for c in [api, *creators]:
            await c.close()


def mib(kib: int | None) -> str:
    return "   n/a" if kib is None else f"{kib / 1024:6.1f}"


def print_table(res: dict) -> None:
    b, a = res["before"], res["after"]
    try:
        load = open("/proc/loadavg").read().split()[:3]
        print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(load)}")
    except OSError:
        pass
    print(f"one node, SQLite store, {res['pods']} cluster pods (busybox sleep) all running "
          f"{res['all_running_s']:.1f} s after the first create")
    print(f"{'MiB':<36}{'RSS before':>11}{'PSS before':>11}{'RSS after':>11}{'PSS after':>11}")
    print(f"{'podnetd':<36}{mib(b['podnetd_rss_kib']):>11}{mib(b['podnetd_pss_kib']):>11}"
          f"{mib(a['podnetd_rss_kib']):>11}{mib(a['podnetd_pss_kib']):>11}")
    if a["other_children"] or b["other_children"]:
        print(f"{'podnetd other children':<36}{mib(b['children_rss_kib']):>11}"
              f"{mib(b['children_pss_kib']):>11}{mib(a['children_rss_kib']):>11}"
              f"{mib(a['children_pss_kib']):>11}")
    print(f"{'conmon (%d before, %d after)' % (b['conmons'], a['conmons']):<36}"
          f"{mib(b['conmon_rss_kib']):>11}{mib(b['conmon_pss_kib']):>11}"
          f"{mib(a['conmon_rss_kib']):>11}{mib(a['conmon_pss_kib']):>11}")
    tot_rss = a["podnetd_rss_kib"] + a["conmon_rss_kib"] + a["children_rss_kib"]
    tot_pss = (a["podnetd_pss_kib"] or 0) + a["conmon_pss_kib"] + a["children_pss_kib"]
    print(f"{'podnetd + conmons with the pods':<36}{'':>22}{mib(tot_rss):>11}{mib(tot_pss):>11}")
    per_pod = (a["podnetd_rss_kib"] - b["podnetd_rss_kib"]) / res["pods"]
    print(f"podnetd grew {per_pod:.0f} KiB RSS per pod; conmon "
          f"{a['conmon_rss_kib'] / max(1, a['conmons']):.0f} KiB RSS each")
    print(f"k3s agent (kubelet + containerd + flannel), published: ~{K3S_AGENT_MB} MB = "
          f"{K3S_AGENT_MB * 1e6 / 2**20:.0f} MiB; podnetd alone {a['podnetd_rss_kib'] / 1024:.0f}"
          f" MiB RSS = {a['podnetd_rss_kib'] * 1024 / (K3S_AGENT_MB * 1e6):.2f}x, "
          f"with conmons {tot_rss * 1024 / (K3S_AGENT_MB * 1e6):.2f}x")
    if res["refused_retried"]:
        print(f"calls refused (UNAVAILABLE) and retried: {res['refused_retried']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--settle", type=float, default=10,
                    help="seconds of steady state before each reading")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (a netns, runc pods)")
    if args.pods > 250:
        raise SystemExit("--pods: at most 250 (a /24 pod CIDR; --max-pods is raised to fit)")
    spaces = Netns()
    node = None
    try:
        node = RuntimeNode(spaces.add("pm100"), "10.79.5.0/24", extra=[
            "--max-pods", str(max(110, args.pods + 5)), "--metrics-listen", ""]).start()
        node.ctl("image", "import", "busybox", busybox_archive())
        res = asyncio.run(run(node, args))
    finally:
        if node is not None:
            try:
                node.cleanup()
            finally:
                force_cleanup(node.workdir)
        spaces.cleanup()
    print_table(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
