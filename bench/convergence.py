"""Convergence: from a node joining to every other node routing to it, over a lab of --nodes
nodes, for each store.

The lab starts with nodes - joins nodes; then `joins` nodes join one by one. Every node runs
`ip -ts monitor route` in its namespace, so the moment each kernel got the route to the newcomer's
pod CIDR is the kernel's own timestamp, not a polling guess. Each join gives one sample per
existing node, measured from three moments of the newcomer:
- "join": its record entered the cluster (static: the first peer took its record; etcd: its
  key was leased), read from the newcomer's log. This is the convergence of the store + routing.
- "spawn": its podnetd process was spawned (adds the Python start-up and node setup).
- "ready": its API serves (negative when the others already route to it before it serves, as
  the node joins before its own components finish starting).

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
import time

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


JOIN_MARKS = ("static store: joined the cluster", "etcd store: leased ")


def joined_at(log_path: str) -> float | None:
    """Wall-clock time of the newcomer's first join line (logging's asctime, local time, ms)."""
    with open(log_path) as f:
        for line in f:
            if any(mark in line for mark in JOIN_MARKS):
                stamp, _, millis = line[:23].partition(",")
                return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    return None


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
        from_join, from_spawn, from_ready = [], [], []
        for _ in range(joins):
            others = lab.node_names()
            new = lab.add_node(wait=60)
            spawned = lab.daemon(new)["spawned"]
            ready = lab.st.nodes[new]["ready_at"]
            cidr = lab.st.nodes[new]["pod_cidr"]
            probe.until(lambda: all(monitors[o].first_add(cidr, spawned) for o in others), 60,
                        f"{store}: every node routes to {new}", 0.05)
            joined = probe.until(lambda: joined_at(os.path.join(lab.st.nodes[new]["dir"], "podnetd.log")),
                                 10, f"{new} logs its join", 0.05)
            for o in others:
                ts = monitors[o].first_add(cidr, spawned)
                from_join.append(ts - joined)
                from_spawn.append(ts - spawned)
                from_ready.append(ts - ready)
            n = len(others)
            print(f"  {store}: {new} joined ({n} peers): max from join {max(from_join[-n:]):.3f}s, "
                  f"from spawn {max(from_spawn[-n:]):.3f}s, from ready {max(from_ready[-n:]):.3f}s "
                  f"(join {joined - spawned:.3f}s after spawn)", file=sys.stderr)
            monitors[new] = RouteMonitor(lab.netns(new))
    finally:
        for m in monitors.values():
            m.stop()
        lab.down()
    return {"store": store, "nodes": nodes, "joins": joins, "samples": len(from_spawn),
            "from_join_p50": pct(from_join, 50), "from_join_p99": pct(from_join, 99),
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
    cols = ("join", "spawn", "ready")
    print(f"{'store':<8}{'samples':>8}" + "".join(f"{c + ' p50':>12}{c + ' p99':>12}" for c in cols))
    for r in results:
        print(f"{r['store']:<8}{r['samples']:>8}" + "".join(
            f"{r[f'from_{c}_p50']:>11.3f}s{r[f'from_{c}_p99']:>11.3f}s" for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
