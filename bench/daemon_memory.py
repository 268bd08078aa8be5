"""Daemon memory: RSS of podnetd on a node with --peers peers (a lab of peers + 1 nodes) and
--pods pods attached to it, next to the RSS of its peers (no pods) and of itself before the pods.

Usage: python bench/daemon_memory.py [--peers 20] [--pods 100] [--store static] [--json out.json]
"""
import argparse
import json
import os
import statistics
import sys
import time

from podnetd.lab import Lab, pods, procs


def rss_mib(lab: Lab, node: str) -> float:
    return procs.rss_kib(lab.daemon(node)) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=20)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--store", default="static", choices=["static", "etcd"])
    ap.add_argument("--settle", type=float, default=5, help="seconds of steady state before reading")
    ap.add_argument("--json")
    args = ap.parse_args()
    lab = Lab.up(args.peers + 1, "l2", args.store, name=f"pnmem{os.getpid() % 10000}", wait=120)
    try:
        if lab.wait_routes(120):
            raise SystemExit("lab did not converge")
        time.sleep(args.settle)  # a few heartbeats and reconcile passes, not start-up only
        before = rss_mib(lab, "n1")
        t0 = time.monotonic()
        for _ in range(args.pods):
            pods.add_pod(lab, "n1")
        attach_s = time.monotonic() - t0
        time.sleep(args.settle)
        after = rss_mib(lab, "n1")
        listing, _ = lab.cluster_view("n1")
        peers = [rss_mib(lab, n) for n in lab.node_names() if n != "n1"]
    finally:
        lab.down()
    result = {"store": args.store, "peers": args.peers, "pods": args.pods,
              "known_nodes": len(listing.nodes) if listing else None,
              "rss_mib_with_peers_and_pods": round(after, 1),
              "rss_mib_with_peers_before_pods": round(before, 1),
              "rss_kib_per_pod": round((after - before) * 1024 / args.pods, 1),
              "peer_rss_mib_median": round(statistics.median(peers), 1),
              "peer_rss_mib_max": round(max(peers), 1),
              "attach_seconds_total": round(attach_s, 1)}
    print(f"podnetd RSS, {args.store} store, node n1 with {args.peers} peers:")
    print(f"  before pods            {before:7.1f} MiB")
    print(f"  with {args.pods} pods         {after:7.1f} MiB  "
          f"({result['rss_kib_per_pod']} KiB per pod; {args.pods} attaches took {attach_s:.1f}s)")
    print(f"  peers (no pods)        median {result['peer_rss_mib_median']} MiB, "
          f"max {result['peer_rss_mib_max']} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
