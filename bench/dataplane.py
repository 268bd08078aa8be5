"""Dataplane: iperf3 TCP throughput pod-to-pod across nodes divided by node-to-node over the
underlay, measured in the same lab and the same run (goals: >= 0.95 host-gw, >= 0.8 vxlan).

Configurations: l2 + host-gw (n1 -> n2), l2 + forced vxlan (n1 -> n2, same path as host-gw
plus encapsulation), routed + auto (n1 -> n3 across the router, so vxlan). Each pair is measured
--repeat times alternately (underlay, pods, underlay, pods, ...) and the medians compared.

Two underlays, both in the same lab:
- unshaped: the nodes' uplinks are veths, so the underlay itself runs at whatever one CPU can
  push through the kernel (15-25 Gbit/s here, varying +-20% run to run). Every extra hop of the
  pod path (pod veth, bridge, forwarding, encapsulation) then costs throughput 1:1: this measures
  the CPU cost of the pod path, not what a link would carry.
- --link-rate (default 5gbit): the first node's uplink shaped with tbf, as a NIC would be. This is
  what a cluster sees when the wire, not the CPU, is the limit.

Usage: python bench/dataplane.py [--seconds 4] [--repeat 3] [--link-rates none,5gbit] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from podnetd.lab import Lab, netops, pods

PORT = 5201


def iperf(server_ns: str, client_ns: str, address: str, seconds: int) -> float:
    """One TCP run; Gbit/s received."""
    server = subprocess.Popen([*netops.nsenter(server_ns), "iperf3", "-s", "-1", "-p", str(PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run([*netops.nsenter(client_ns), "iperf3", "-c", address, "-p", str(PORT),
                                  "-t", str(seconds), "-J"], capture_output=True, text=True)
            data = json.loads(out.stdout or "{}")
            if "error" not in data and out.returncode == 0:
                return data["end"]["sum_received"]["bits_per_second"] / 1e9
            if time.monotonic() > deadline:
                raise SystemExit(f"iperf3 to {address}: {data.get('error', out.stderr.strip())}")
            time.sleep(0.1)  # the server is not listening yet
    finally:
        server.kill()
        server.wait()


def shape_uplink(ns: str, rate: str | None) -> None:
    """tbf on the node's uplink (eth0), or no qdisc at all for None."""
    cmd = (["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "1mb",
            "latency", "10ms"] if rate else ["tc", "qdisc", "del", "dev", "eth0", "root"])
    out = subprocess.run([*netops.nsenter(ns), *cmd], capture_output=True, text=True)
    if out.returncode and rate:
        raise SystemExit(f"shape eth0 in {ns} to {rate}: {out.stderr.strip()}")


def run_config(label: str, topology: str, backend: str, src: str, dst: str, seconds: int,
               repeat: int, rates: list[str | None]) -> list[dict]:
    lab = Lab.up(3, topology, "static", name=f"pndp{os.getpid() % 10000}{label[:2]}",
                 backend=backend, wait=30)
    try:
        if lab.wait_routes(30):
            raise SystemExit(f"{label}: lab did not converge")
        a, b = pods.add_pod(lab, src), pods.add_pod(lab, dst)
        ps = pods.pods(lab)
        mode = {n.name: n.mode for n in lab.cluster_view(src)[0].nodes}[dst]
        runs = {}
        for rate in rates:
            shape_uplink(lab.netns(src), rate)
            under, pod = runs.setdefault(rate, ([], []))
            for _ in range(repeat):
                under.append(iperf(lab.netns(dst), lab.netns(src), lab.st.nodes[dst]["ip"], seconds))
                pod.append(iperf(ps[b]["netns"], ps[a]["netns"], ps[b]["address"], seconds))
        # `ip`, not /sys: nsenter --net keeps the caller's /sys mount
        mtu = json.loads(subprocess.run([*netops.nsenter(ps[a]["netns"]), "ip", "-j", "link", "show",
                                         "eth0"], capture_output=True, text=True).stdout)[0]["mtu"]
    finally:
        lab.down()
    results = []
    for rate, (under, pod) in runs.items():
        u, p = statistics.median(under), statistics.median(pod)
        results.append({"config": label, "link": rate or "unshaped", "mode": mode, "pod_mtu": mtu,
                        "underlay_gbps": round(u, 2), "pod_gbps": round(p, 2), "ratio": round(p / u, 3),
                        "underlay_runs": [round(x, 2) for x in under],
                        "pod_runs": [round(x, 2) for x in pod]})
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--link-rates", default="none,5gbit",
                    help="underlays to measure: none (unshaped veth) and/or tc rates such as 5gbit")
    ap.add_argument("--json")
    args = ap.parse_args()
    rates = [None if r == "none" else r for r in args.link_rates.split(",")]
    configs = [("l2 host-gw", "l2", "host-gw", "n1", "n2"),
               ("l2 vxlan", "l2", "vxlan", "n1", "n2"),
               ("routed auto", "routed", None, "n1", "n3")]
    results = []
    for label, topology, backend, src, dst in configs:
        for r in run_config(label, topology, backend, src, dst, args.seconds, args.repeat, rates):
            results.append(r)
            print(f"  {label} ({r['link']}): underlay {r['underlay_runs']} pods {r['pod_runs']} Gbit/s",
                  file=sys.stderr)
    print("iperf3 TCP, pod-to-pod across nodes / node-to-node underlay (medians)")
    print(f"{'config':<13}{'underlay link':<15}{'mode':<9}{'pod mtu':>8}{'underlay':>11}{'pods':>11}{'ratio':>8}")
    for r in results:
        print(f"{r['config']:<13}{r['link']:<15}{r['mode']:<9}{r['pod_mtu']:>8}{r['underlay_gbps']:>8.2f}Gb/s"
              f"{r['pod_gbps']:>7.2f}Gb/s{r['ratio']:>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
