"""The scheduler's decision logic alone: pods/s of schedule() + snapshot.assume() (not a test).

    .venv/bin/python bench/scheduler_throughput.py [--nodes 100] [--pods 3000] [--seed 1]

A 100-node cluster of varied nodes (5 zones, ssd/hdd disks, a few GPU nodes, some tainted
dedicated NoSchedule or PreferNoSchedule, one cordoned, one NotReady, cpu 8-64, memory
32-256Gi, 110 pods each) takes pods in creation order, one at a time, each assumed on its node
before the next is decided, as the scheduling loop does. The pods come from ReplicaSet-like
groups (one owner uid, one app label) of a mix of kinds:

    plain      requests only
    selector   nodeSelector disk=ssd, and required node affinity on the zone (In/NotIn)
    anti       required pod anti-affinity on the hostname against its own app
    spread     topologySpreadConstraints zone maxSkew 1 DoNotSchedule
    soft       ScheduleAnyway spread on the hostname + preferred anti-affinity by zone
    tolerant   tolerates the dedicated taint, prefers the GPU nodes
    ports      a hostPort

Printed: the rate over all pods (wall clock, and per CPU second: the machine may be shared),
the latency percentiles of one decision, how many pods found
no node (and kube-scheduler's message for the first of them), and the snapshot build time. The
whole scheduler's figure (>= 100 pods/s incl. the binding call) is measured by the loop's own
bench; this is the logic's share of it.
"""
import argparse
import cProfile
import os
import pstats
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from podnetd.scheduler import Snapshot, schedule  # noqa: E402

ZONES = ["zone-a", "zone-b", "zone-c", "zone-d", "zone-e"]
KINDS = ["plain"] * 8 + ["selector"] * 3 + ["anti"] * 3 + ["spread"] * 3 + ["soft"] * 2 + \
    ["tolerant", "ports"]


def make_nodes(n: int, rng: random.Random) -> list[dict]:
    nodes = []
    for i in range(n):
        name = f"node-{i:03d}"
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": ZONES[i % 5],
                  "disk": "ssd" if rng.random() < 0.5 else "hdd"}
        taints = []
        if i % 10 == 7:
            labels["gpu"] = "true"
            taints.append({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})
        elif i % 10 == 3:
            taints.append({"key": "spot", "effect": "PreferNoSchedule"})
        ready = "Unknown" if i == n - 1 else "True"
        nodes.append({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints, "unschedulable": i == n - 2},
            "status": {"allocatable": {"cpu": str(rng.choice([8, 16, 32, 64])),
                                       "memory": f"{rng.choice([32, 64, 128, 256])}Gi",
                                       "pods": "110", "ephemeral-storage": "100Gi"},
                       "conditions": [{"type": "Ready", "status": ready}]}})
    return nodes


def make_pods(count: int, rng: random.Random) -> list[dict]:
    pods = []
    group = 0
    while len(pods) < count:
        kind = rng.choice(KINDS)
        replicas = min(rng.randint(5, 60), count - len(pods))
        app = f"{kind}-{group}"
        owner = f"rs-uid-{group}"
        cpu = rng.choice(["50m", "100m", "250m", "500m", "1"])
        memory = rng.choice(["64Mi", "128Mi", "256Mi", "1Gi", "2Gi"])
        spec: dict = {}
        if kind == "selector":
            spec["nodeSelector"] = {"disk": "ssd"}
            spec["affinity"] = {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "topology.kubernetes.io/zone",
                                           "operator": "NotIn", "values": ["zone-e"]}]}]}}}
        elif kind == "anti":
            spec["affinity"] = {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": {"matchLabels": {"app": app}},
                    "topologyKey": "kubernetes.io/hostname"}]}}
        elif kind == "spread":
            spec["topologySpreadConstraints"] = [{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": app}}}]
        elif kind == "soft":
            spec["topologySpreadConstraints"] = [{
                "maxSkew": 2, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app": app}}}]
            spec["affinity"] = {"podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 50, "podAffinityTerm": {
                        "labelSelector": {"matchExpressions": [
                            {"key": "app", "operator": "In", "values": [app]}]},
                        "topologyKey": "topology.kubernetes.io/zone"}}]}}
        elif kind == "tolerant":
            spec["tolerations"] = [{"key": "dedicated", "operator": "Equal", "value": "gpu",
                                    "effect": "NoSchedule"}]
            spec["affinity"] = {"nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 80, "preference": {"matchExpressions": [
                        {"key": "gpu", "operator": "Exists"}]}}]}}
        ports = [{"containerPort": 8080, "hostPort": 30000 + group}] if kind == "ports" else []
        for r in range(replicas):
            name = f"{app}-{r}"
            pods.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                             "labels": {"app": app, "kind": kind},
                             "ownerReferences": [{"apiVersion": "apps/v1",
                                                  "kind": "ReplicaSet", "name": app,
                                                  "uid": owner, "controller": True}]},
                "spec": {"containers": [{"name": "app", "image": "registry.local/app:1",
                                         "resources": {"requests": {"cpu": cpu,
                                                                    "memory": memory}},
                                         "ports": ports}], **spec},
                "status": {"phase": "Pending"}})
        group += 1
    return pods


def run(nodes: list[dict], pods: list[dict]) -> dict:
    t0 = time.perf_counter()
    snap = Snapshot(nodes)
    build = time.perf_counter() - t0
    latencies, failed, first_failure = [], 0, None
    start, cpu_start = time.perf_counter(), time.process_time()
    for p in pods:
        t = time.perf_counter()
        r = schedule(p, snap)
        if r.node_name:
            snap.assume(r.pod, r.node_name)
        else:
            failed += 1
            first_failure = first_failure or f"{r.message}"
        latencies.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {"pods": len(pods), "nodes": len(nodes), "seconds": total,
            "rate": len(pods) / total, "cpu_rate": len(pods) / cpu,
            "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "max_ms": latencies[-1] * 1000, "unschedulable": failed,
            "first_failure": first_failure, "build_ms": build * 1000,
            "bound": len(snap.pods)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--pods", type=int, action="append",
                    help="pods to place (repeatable; default 1000 and 5000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="print the 25 costliest functions")
    args = ap.parse_args(argv)
    for count in args.pods or [1000, 5000]:
        rng = random.Random(args.seed)
        nodes, pods = make_nodes(args.nodes, rng), make_pods(count, rng)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
        res = run(nodes, pods)
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        print(f"{res['pods']} pods on {res['nodes']} nodes: {res['rate']:.0f} pods/s "
              f"({res['seconds']:.2f} s; {res['cpu_rate']:.0f} pods per CPU second); "
              f"one decision p50 {res['p50_ms']:.2f} ms, "
              f"p99 {res['p99_ms']:.2f} ms, max {res['max_ms']:.2f} ms; "
              f"{res['bound']} bound, {res['unschedulable']} unschedulable; "
              f"snapshot built in {res['build_ms']:.1f} ms")
        if res["first_failure"]:
            print(f"  first unschedulable: {res['first_failure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
