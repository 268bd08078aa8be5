"""Dataplane: iperf3 TCP throughput pod-to-pod across nodes divided by node-to-node over the
underlay, measured in the same lab and the same run (goals: >= 0.95 host-gw, >= 0.8 vxlan).

Configurations: l2 + host-gw (n1 -> n2), l2 + forced vxlan (n1 -> n2, same path as host-gw
plus encapsulation), routed + auto (n1 -> n3 across the router, so vxlan). Each is measured in
--pairs pairs (underlay, then pods) with the iperf3 client pinned to CPU 0 and the server to
CPU 1; the figure is the median of the per-pair ratios.

Underlays (--underlays):
- veth: the nodes' uplinks are plain veths (64 KiB GSO), so the underlay itself runs at whatever
  one CPU can push through the kernel (15-25 Gbit/s here, +-20% run to run). Every extra hop of
  the pod path (pod veth, bridge, forwarding, encapsulation) then costs throughput 1:1: this
  measures the CPU cost of the pod path per packet, not what a link would carry.
- bigtcp: the same veths with BIG TCP (192 KiB IPv4 GSO/GRO, `podnetctl lab up --big-tcp`), as
  a NIC with BIG TCP enabled; podnetd gives pods the same limit under host-gw (VXLAN takes no
  more than 64 KiB, so pods behind a vxlan/auto backend keep it). Fewer, larger packets make
  the per-packet hops cheaper.
- 5gbit: the first node's uplink shaped with tbf to 5 Gbit/s, as a NIC would be: what a cluster
  sees when the wire, not the CPU, is the limit.

Usage: python bench/dataplane.py [--seconds 2] [--pairs 8] [--underlays veth,bigtcp,5gbit]
                                 [--configs host-gw,vxlan,routed] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from podnetd.api.podnet.v1 import cluster_pb2
from podnetd.apiconv import enum_word
from podnetd.lab import Lab, netops, pods

PORT = 5201


def iperf(server_ns: str, client_ns: str, address: str, seconds: int) -> float:
    """One TCP run, client on CPU 0 and server on CPU 1; Gbit/s received."""
    server = subprocess.Popen(["taskset", "-c", "1", *netops.nsenter(server_ns), "iperf3", "-s",
                               "-1", "-p", str(PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run(["taskset", "-c", "0", *netops.nsenter(client_ns), "iperf3", "-c",
                                  address, "-p", str(PORT), "-t", str(seconds), "-J"],
                                 capture_output=True, text=True)
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


def run_config(label: str, topology: str, backend: str | None, src: str, dst: str, seconds: int,
               pairs: int, underlays: list[str]) -> list[dict]:
    """Measure one configuration on the given underlays: veth and tbf-shaped ones share a lab,
    bigtcp needs its own (podnetd sizes pods' GSO from the uplink when it starts)."""
    results = []
    shaped = [u for u in underlays if u != "bigtcp"]
    if shaped:
        results += measure_lab(label, topology, backend, src, dst, seconds, pairs, shaped, False)
    if "bigtcp" in underlays:
        results += measure_lab(label, topology, backend, src, dst, seconds, pairs, ["bigtcp"],
                               True)
    return results


def measure_lab(label, topology, backend, src, dst, seconds, pairs, underlays, big_tcp):
    lab = Lab.up(3, topology, "static", name=f"pndp{os.getpid() % 10000}{label[:2]}",
                 backend=backend, big_tcp=big_tcp, wait=30)
    try:
        if lab.wait_routes(30):
            raise SystemExit(f"{label}: lab did not converge")
        a, b = pods.add_pod(lab, src), pods.add_pod(lab, dst)
        ps = pods.pods(lab)
        mode = {n.name: enum_word(cluster_pb2.PeerMode, n.mode) for n in lab.cluster_view(src)[0].nodes}[dst]
        # `ip`, not /sys: nsenter --net keeps the caller's /sys mount
        mtu = json.loads(subprocess.run([*netops.nsenter(ps[a]["netns"]), "ip", "-j", "link", "show",
                                         "eth0"], capture_output=True, text=True).stdout)[0]["mtu"]
        results = []
        for underlay in underlays:
            shape_uplink(lab.netns(src), underlay if underlay not in ("veth", "bigtcp") else None)
            under, pod = [], []
            for _ in range(pairs):
                under.append(iperf(lab.netns(dst), lab.netns(src), lab.st.nodes[dst]["ip"],
                                   seconds))
                pod.append(iperf(ps[b]["netns"], ps[a]["netns"], ps[b]["address"], seconds))
            ratios = [p / u for u, p in zip(under, pod)]
            results.append({"config": label, "underlay": underlay, "mode": mode, "pod_mtu": mtu,
                            "underlay_gbps": round(statistics.median(under), 2),
                            "pod_gbps": round(statistics.median(pod), 2),
                            "ratio": round(statistics.median(ratios), 3),
                            "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
                            "underlay_runs": [round(x, 2) for x in under],
                            "pod_runs": [round(x, 2) for x in pod]})
    finally:
        lab.down()
    return results


CONFIGS = {"host-gw": ("l2 host-gw", "l2", "host-gw", "n1", "n2"),
           "vxlan": ("l2 vxlan", "l2", "vxlan", "n1", "n2"),
           "routed": ("routed auto", "routed", None, "n1", "n3")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--underlays", default="veth,bigtcp,5gbit",
                    help="veth (plain), bigtcp (veth with BIG TCP) and/or tc rates such as 5gbit")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    ap.add_argument("--json")
    args = ap.parse_args()
    underlays = args.underlays.split(",")
    results = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"--configs: unknown {name!r} (of {', '.join(CONFIGS)})")
        label, topology, backend, src, dst = CONFIGS[name]
        for r in run_config(label, topology, backend, src, dst, args.seconds, args.pairs, underlays):
            results.append(r)
            print(f"  {label} ({r['underlay']}): underlay {r['underlay_runs']} pods {r['pod_runs']} "
                  f"Gbit/s", file=sys.stderr)
    print("iperf3 TCP, pod-to-pod across nodes / node-to-node underlay (median of paired ratios)")
    print(f"{'config':<13}{'underlay':<10}{'mode':<9}{'pod mtu':>8}{'underlay':>11}{'pods':>11}"
          f"{'ratio':>8}  range")
    for r in results:
        lo, hi = r["ratio_range"]
        print(f"{r['config']:<13}{r['underlay']:<10}{r['mode']:<9}{r['pod_mtu']:>8}"
              f"{r['underlay_gbps']:>8.2f}Gb/s{r['pod_gbps']:>7.2f}Gb/s{r['ratio']:>8.3f}  "
              f"{lo:.2f}-{hi:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
