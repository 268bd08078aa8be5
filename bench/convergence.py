"""Convergence: from a node joining to every other node routing to it, over a lab of --nodes
nodes, for each store.

The lab starts with nodes - joins nodes; then `joins` nodes join one by one. Every node runs
`ip -ts monitor route` in its namespace, so the moment each kernel got the route to the newcomer's
pod CIDR is the kernel's own timestamp, not a polling guess. Each join gives one sample per
existing node, measured from the newcomer's podnetd being spawned ("from spawn": includes the
Python start-up) and from its API serving ("from ready"; negative when the others already route
to it before it serves, as with etcd, where the lease precedes the node's own setup).

Usage: python bench/convergence.py [--nodes 20] [--joins 5] [--stores static,etcd]
       [--topology l2] [--json out.json]
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading

from podnetd.lab import Lab, netops, probe


class RouteMonitor:
    """`ip -ts monitor route` in one namespace; keeps (timestamp, line) of every event."""

    def __init__(self, ns: str):
        self.events: list[tuple[float, str]] = []
        self.proc = subprocess.Popen([*netops.nsenter(ns), "ip", "-ts", "monitor", "route"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("["):
                stamp, _, rest = line[1:].partition("] ")
                ts = datetime.datetime.fromisoformat(stamp).timestamp()
                self.events.append((ts, rest.strip()))

    def first_add(self, cidr: str, after: float) -> float | None:
        for ts, line in list(self.events):
            if ts >= after and line.startswith(cidr + " "):
                return ts
        return None

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


def run_store(store: str, nodes: int, joins: int, topology: str) -> dict:
    name = f"pnconv{os.getpid() % 10000}{store[0]}"
    lab = Lab.up(nodes - joins, topology, store, name=name, wait=120)
    monitors = {}
    try:
        missing = lab.wait_routes(120)
        if missing:
            raise SystemExit(f"{store}: initial lab did not converge: {missing}")
        for node in lab.node_names():
            monitors[node] = RouteMonitor(lab.netns(node))
        from_spawn, from_ready = [], []
        for _ in range(joins):
            others = lab.node_names()
            new = lab.add_node(wait=60)
            spawned = lab.daemon(new)["spawned"]
            ready = lab.st.nodes[new]["ready_at"]
            cidr = lab.st.nodes[new]["pod_cidr"]
            probe.until(lambda: all(monitors[o].first_add(cidr, spawned) for o in others), 60,
                        f"{store}: every node routes to {new}", 0.05)
            for o in others:
                ts = monitors[o].first_add(cidr, spawned)
                from_spawn.append(ts - spawned)
                from_ready.append(ts - ready)
            print(f"  {store}: {new} joined ({len(others)} peers): max from spawn "
                  f"{max(from_spawn[-len(others):]):.3f}s, from ready {max(from_ready[-len(others):]):.3f}s",
                  file=sys.stderr)
            monitors[new] = RouteMonitor(lab.netns(new))
    finally:
        for m in monitors.values():
            m.stop()
        lab.down()
    return {"store": store, "nodes": nodes, "joins": joins, "samples": len(from_spawn),
            "from_spawn_p50": pct(from_spawn, 50), "from_spawn_p99": pct(from_spawn, 99),
            "from_ready_p50": pct(from_ready, 50), "from_ready_p99": pct(from_ready, 99)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--joins", type=int, default=5)
    p.add_argument("--stores", default="static,etcd")
    p.add_argument("--topology", default="l2", choices=["l2", "routed"])
    p.add_argument("--json")
    args = p.parse_args()
    results = [run_store(s, args.nodes, args.joins, args.topology) for s in args.stores.split(",")]
    print(f"convergence over a {args.nodes}-node {args.topology} lab "
          f"(node join -> every other node routes to it)")
    print(f"{'store':<8}{'samples':>8}{'spawn p50':>11}{'spawn p99':>11}{'ready p50':>11}{'ready p99':>11}")
    for r in results:
        print(f"{r['store']:<8}{r['samples']:>8}{r['from_spawn_p50']:>10.3f}s{r['from_spawn_p99']:>10.3f}s"
              f"{r['from_ready_p50']:>10.3f}s{r['from_ready_p99']:>10.3f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
