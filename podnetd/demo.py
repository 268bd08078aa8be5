"""`make demo`: a 3-node lab (two underlay subnets joined by a router, so peers on the same subnet
use host-gw and the others vxlan), a pod per node and an all-pairs ping matrix; then, with the
etcd store, the cluster: pods applied once at one node's API over TLS as the admin land where
their anti-affinity and node selector ask, pull their image from the lab's registry, run and
ping across nodes, and RBAC refuses a user with no rights. Everything it made is torn down at the end."""
import argparse
import os
import sys
import tempfile
import time

import grpc

from .lab import cluster_api, pods, probe, status
from .runtime import busybox_image
from .lab.lab import SEGMENT_LABEL, Lab, LabError

WEB_ANTI_AFFINITY = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}


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
        ok = not failed
        if lab.serves_api:
            ok = cluster(lab, t0) and ok
        return 0 if ok else 1
    finally:
        lab.down()
        _say(f"lab {name} removed (namespaces, daemons, state dir)", t0)


def _pod(name: str, labels: dict, image: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"terminationGracePeriodSeconds": 1, **spec, "containers": [
                {"name": "main", "image": image, "command": ["sleep", "3600"]}]}}


def _running(p: dict) -> bool:
    ready = [c for c in p["status"].get("conditions") or [] if c["type"] == "Ready"]
    return p["status"].get("phase") == "Running" and bool(ready) and ready[0]["status"] == "True"


def cluster(lab: Lab, t0: float) -> bool:
    """The cluster API part of the demo; True when every step did what it should."""
    print()
    _say(f"cluster API on every node ({', '.join(f'https://{lab.api_server(n)}' for n in lab.node_names())}); "
         f"client config {cluster_api.config_path(lab)}", t0)
    if lab.registry:
        image = lab.registry_image
        _say(f"image registry on the underlay: {lab.registry} (plain HTTP; every node's kubelet "
             f"pulls {image} from it)", t0)
    else:   # docker-registry is not installed (`make demo` installs it)
        image = "busybox"
        with tempfile.TemporaryDirectory(prefix="pndemo-") as tmp:
            archive = os.path.join(tmp, "busybox.tar")
            busybox_image.write(archive)
            cluster_api.import_image(lab, image, archive)
        _say("no image registry (docker-registry is not installed): busybox imported into "
             "every node's runtime", t0)
    last_segment = lab.st.nodes[lab.node_names()[-1]]["segment"]
    manifests = [_pod(f"web-{i}", {"app": "web"}, image, affinity=WEB_ANTI_AFFINITY)
                 for i in range(3)]
    manifests.append(_pod("db", {"app": "db"}, image, nodeSelector={SEGMENT_LABEL: last_segment}))
    with cluster_api.client(lab, lab.node_names()[0]) as admin:
        for m in manifests:
            admin.create("pods", m, "default")
            print(f"  pod/{m['metadata']['name']} created")
        _say(f"applied at {lab.node_names()[0]} as admin: 3 pods with podAntiAffinity on "
             f"kubernetes.io/hostname, 1 with nodeSelector {SEGMENT_LABEL}={last_segment}", t0)
        names = [m["metadata"]["name"] for m in manifests]

        def all_running():
            got = {p["metadata"]["name"]: p for p in admin.list("pods", "default")}
            return got if all(n in got and _running(got[n]) for n in names) else None
        try:
            got = probe.until(all_running, 60, "the pods Running")
        except TimeoutError as e:
            _say(str(e), t0)
            return False
        _say("all Running; where the scheduler put them:", t0)
        rows = [("NAME", "NODE", "IP")] + [(n, got[n]["spec"]["nodeName"], got[n]["status"]["podIP"])
                                           for n in names]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        print()
        for r in rows:
            print("  " + "   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        print()
        pulled = _pulled_event(admin, "web-0")
        if pulled:
            src = pulled.get("source") or {}
            _say(f"web-0's Pulled event (kubelet on {src.get('host', '?')}): {pulled['message']}", t0)
        else:
            _say("web-0 has no Pulled event", t0)
        webs = [got[f"web-{i}"] for i in range(3)]
        spread = len({p["spec"]["nodeName"] for p in webs}) == 3
        segment_ok = lab.st.nodes[got["db"]["spec"]["nodeName"]]["segment"] == last_segment
        pairs = [(a, b) for a in webs for b in webs if a is not b]
        answered = sum(probe.ping(cluster_api.pod_netns(a), b["status"]["podIP"]).returncode == 0
                       for a, b in pairs)
        _say(f"web pods on {'3 different nodes' if spread else 'SHARED nodes'}; db on segment "
             f"{last_segment}: {'yes' if segment_ok else 'NO'}; web-to-web ping across nodes "
             f"{answered}/{len(pairs)}", t0)
    with cluster_api.client(lab, lab.node_names()[-1], cluster_api.USER[0]) as alice:
        try:
            alice.create("pods", _pod("alice-pod", {}, image), "default")
            refused = False
            _say("RBAC: alice created a pod — she should NOT have been allowed", t0)
        except grpc.RpcError as e:
            refused = e.code() == grpc.StatusCode.PERMISSION_DENIED
            _say(f"RBAC: alice (no bindings) creating a pod: {e.code().name}: {e.details()}", t0)
    return spread and segment_ok and answered == len(pairs) and refused and bool(pulled)


def _pulled_event(admin, pod: str) -> dict | None:
    """The kubelet's Pulled event of a pod from the API's events (the node agent records them
    asynchronously: a moment after the pod runs at most)."""
    def find():
        return next((e for e in admin.list("events", "default")
                     if e["involvedObject"].get("name") == pod and e["reason"] == "Pulled"), None)
    try:
        return probe.until(find, 10, f"{pod}'s Pulled event", 0.2)
    except TimeoutError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="podnetd.demo", description=__doc__.split("\n")[0])
    p.add_argument("--topology", default="routed", choices=["l2", "routed"])
    p.add_argument("--store", default="etcd", choices=["static", "etcd"],
                   help="etcd (default): the fabric and the cluster API; static: the fabric only")
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
