"""How long `podnetctl doctor` takes on a lab of --nodes nodes (opt-in, root).

Brings up a routed lab (half the peers host-gw, half VXLAN), runs the doctor on the first node
--runs times as a user would (a fresh `podnetctl` process: Python and scapy start-up included)
and prints the wall time of each run, its exit code and the doctor's own figure.

--faulty measures the slow path too: the last node's podnetd stopped and its underlay down,
and an MTU black hole (its neighbour's bridge port at MTU 1400), so rounds run to their timeout.

Usage: python bench/doctor.py [--nodes 20] [--runs 3] [--topology routed] [--store static] [--faulty]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from podnetd.lab import Lab, netops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--topology", default="routed", choices=["l2", "routed"])
    ap.add_argument("--store", default="static", choices=["static", "etcd"])
    ap.add_argument("--faulty", action="store_true", help="break a peer and a link first")
    args = ap.parse_args()
    name = f"bdoc{os.getpid() % 10000}"
    t0 = time.monotonic()
    lab = Lab.up(args.nodes, args.topology, args.store, name=name, wait=120)
    try:
        missing = lab.wait_routes(120)
        print(f"lab of {args.nodes} nodes up in {time.monotonic() - t0:.1f} s"
              + (f" (still missing routes: {missing})" if missing else ""))
        if args.faulty:
            names = lab.node_names()
            dead, narrow = names[-1], names[-2]
            lab.stop_daemon(dead)
            subprocess.run([*netops.nsenter(lab.netns(dead)), "ip", "link", "set", "eth0", "down"], check=True)
            seg = f"{lab.st.name}-{'ulb' if args.topology == 'routed' else 'ul'}"
            subprocess.run([*netops.nsenter(seg), "ip", "link", "set", narrow, "mtu", "1400"], check=True)
            print(f"broken: {dead} stopped with its underlay down, {narrow}'s bridge port at MTU 1400")
        walls = []
        for i in range(args.runs):
            start = time.monotonic()
            proc = subprocess.run([*netops.nsenter(lab.netns("n1")), sys.executable, "-m",
                                   "podnetd.ctl.main", "doctor", "--socket", lab.socket("n1"), "-o", "json"],
                                  capture_output=True, text=True)
            wall = time.monotonic() - start
            walls.append(wall)
            report = json.loads(proc.stdout) if proc.stdout.strip() else {}
            fails = [f"{c['family']}:{c['name']}:{c['target']}" for c in report.get("checks", [])
                     if c["status"] == "FAIL"]
            print(f"run {i + 1}: {wall:.2f} s wall (doctor's own {report.get('seconds', 0):.2f} s), "
                  f"exit {proc.returncode}, {report.get('summary')}" + (f", failed: {fails}" if fails else ""))
        print(f"median {statistics.median(walls):.2f} s, max {max(walls):.2f} s over {args.runs} runs")
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
