"""Metrics scrape cost: what one Prometheus scrape of podnetd's /metrics costs the daemon on a
node with --peers peers and --pods pods (issue 12's figure: under 5 ms per scrape).

Measured on node n1 of a static lab: the scrape's wall time from inside the node's namespace
(HTTP GET to the underlay address, as Prometheus does), and the daemon's own CPU time per scrape
(utime + stime of the podnetd process over --scrapes scrapes, less the same idle interval).

Usage: python bench/metrics_scrape.py [--peers 20] [--pods 100] [--scrapes 200] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from podnetd.lab import Lab, netops, pods

CLIENT = r"""
import http.client, json, sys, time
host, n = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection(host, 9633, timeout=10)
times, size = [], 0
for _ in range(n):
    t0 = time.perf_counter()
    conn.request("GET", "/metrics")
    body = conn.getresponse().read()
    times.append(time.perf_counter() - t0)
    size = len(body)
print(json.dumps({"times": times, "bytes": size, "series": body.count(b"\n") - body.count(b"\n#")}))
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=20)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    lab = Lab.up(args.peers + 1, "l2", "static", name=f"pnms{os.getpid() % 10000}", wait=120)
    try:
        if lab.wait_routes(120):
            raise SystemExit("lab did not converge")
        for _ in range(args.pods):
            pods.add_pod(lab, "n1")
        pid = lab.daemon("n1")["pid"]
        host = lab.st.nodes["n1"]["ip"]
        argv = [*netops.nsenter(lab.netns("n1")), sys.executable, "-c", CLIENT, host]
        subprocess.run([*argv, "5"], check=True, capture_output=True)          # warm up
        idle0 = cpu_seconds(pid)
        t0 = time.monotonic()
        out = subprocess.run([*argv, str(args.scrapes)], check=True, capture_output=True,
                             text=True)
        busy = cpu_seconds(pid) - idle0
        elapsed = time.monotonic() - t0
        idle1 = cpu_seconds(pid)
        time.sleep(elapsed)                      # the same interval with no scrapes
        idle = cpu_seconds(pid) - idle1
    finally:
        lab.down()
    data = json.loads(out.stdout)
    times = sorted(data["times"])
    result = {"peers": args.peers, "pods": args.pods, "scrapes": args.scrapes,
              "bytes": data["bytes"], "series": data["series"],
              "wall_ms_p50": round(statistics.median(times) * 1000, 2),
              "wall_ms_p99": round(times[int(len(times) * 0.99) - 1] * 1000, 2),
              "daemon_cpu_ms_per_scrape": round(max(0.0, busy - idle) * 1000 / args.scrapes, 2)}
    print(f"/metrics of n1 ({args.peers} peers, {args.pods} pods): {data['bytes']} bytes, "
          f"{data['series']} series")
    print(f"  scrape wall time p50 {result['wall_ms_p50']} ms, p99 {result['wall_ms_p99']} ms")
    print(f"  podnetd CPU per scrape {result['daemon_cpu_ms_per_scrape']} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
