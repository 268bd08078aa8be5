"""`make demo`: a 3-node lab (two underlay subnets joined by a router, so peers on the same subnet
use host-gw and the others vxlan), two pods per node, an all-pairs ping matrix, then teardown of
everything it made."""
import argparse
import os
import sys
import time

from .lab import pods, probe, status
from .lab.lab import Lab, LabError


def _say(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:5.1f}s] {msg}", flush=True)


def run(topology: str, store: str, nodes: int) -> int:
    t0 = time.monotonic()
    name = f"pndemo{os.getpid() % 100000}"
    trust = "peers talk mutual TLS" if store == "static" else "etcd on a lab address"
    _say(f"lab {name}: {nodes} nodes, {topology} underlay, {store} store ({trust})", t0)
    lab = Lab.up(nodes, topology, store, name=name, wait=20)
    try:
        missing = lab.missing_routes()
        _say("nodes up" + (f"; NOT converged, missing routes: {missing}" if missing else
                           ", every node routes to every other"), t0)
        data = status.collect(lab)
        print()
        for n in data["nodes"]:
            modes = ", ".join(f"{k} {v}" for k, v in sorted(n["peers"].items())) or "no cluster view"
            print(f"  {n['node']}  underlay {n['underlay_ip']:<12} (subnet {n['segment']})  "
                  f"pods {n['pod_cidr']:<14}  peers: {modes}")
        print()
        for node in lab.node_names():
            for _ in range(2):
                pods.add_pod(lab, node)
        ps = pods.pods(lab)
        _say(f"{len(ps)} pods attached through the podnet CNI plugin; pinging all "
             f"{len(ps) * (len(ps) - 1)} pairs", t0)
        results = probe.ping_matrix(ps)
        print()
        sys.stdout.write(probe.render_matrix(ps, results))
        print()
        failed = [f"{a}->{b}" for (a, b), ok in results.items() if not ok]
        _say(f"{len(results) - len(failed)}/{len(results)} pairs answered"
             + (f"; failed: {', '.join(failed[:6])}{' ...' if len(failed) > 6 else ''}"
                if failed else ""), t0)
        return 1 if failed else 0
    finally:
        lab.down()
        _say(f"lab {name} removed (namespaces, daemons, state dir)", t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="podnetd.demo", description=__doc__.split("\n")[0])
    p.add_argument("--topology", default="routed", choices=["l2", "routed"])
    p.add_argument("--store", default="static", choices=["static", "etcd"])
    p.add_argument("--nodes", type=int, default=3)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces)", file=sys.stderr)
        return 1
    try:
        return run(args.topology, args.store, args.nodes)
    except LabError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
