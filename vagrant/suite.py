#!/usr/bin/env python3
"""The Vagrant lab's cross-node suite (run by vagrant/lab inside the lab's namespaces; stdlib only).

First the cluster, from node 1 only, with its client config (vagrant/pki.py made it, provisioning
put it in the vagrant user's ~/.config/podnet): examples/cluster/web.yaml applied through the
cluster API (three web pods, never two on one VM, and a db on the VM labelled disk=ssd); every
pod Running where it must be; a web pod on node2 answers HTTP from the one on node3 (podnetctl
exec, forwarded by node 1 to node 3); the plain user alice is refused by RBAC (and audited).
Then pods on every node (through `podnetctl pod run` when the daemon has the pod runtime, else the CNI
plugin on a netns per pod: vagrant/labpod.py), all-pairs ping and TCP by pod IP, the
connectivity matrix; then one node is rebooted, its pods are started again, and the matrix must
heal. Exit status 0 only when the cluster part passes and every pair works before and after
the reboot.
"""
import argparse
import concurrent.futures
import json
import shlex
import subprocess
import sys
import time

LABPOD = "/vagrant/vagrant/labpod.py"
MANIFEST = "/vagrant/examples/cluster/web.yaml"
WEBS = ("web-0", "web-1", "web-2")
DB = "db"
CLUSTER = "podnet-vagrant"          # vagrant/pki.py's cluster and context names
PLAIN_USER = "alice"
AUDIT_LOG = "/var/log/podnet/audit.log"
HTTP_GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 8080"


class Lab:
    def __init__(self, ssh_config: str, nodes: list[str], mode: str | None):
        self.ssh_config = ssh_config
        self.nodes = nodes
        self.mode = mode

    def ssh(self, node: str, command: str, check: bool = True, timeout: float = 300):
        argv = ["ssh", "-F", self.ssh_config, "-o", "ConnectTimeout=10", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", node, command]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{node}: {command}: exit {proc.returncode}: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def labpod(self, node: str, *args: str, timeout: float = 300) -> str:
        mode = f" --mode {self.mode}" if self.mode else ""
        return self.ssh(node, f"sudo python3 {LABPOD} {' '.join(args)}{mode}", timeout=timeout).stdout

    def boot_id(self, node: str) -> str:
        return self.ssh(node, "cat /proc/sys/kernel/random/boot_id").stdout.strip()


def start_pods(lab: Lab, node: str, per_node: int) -> dict[str, tuple[str, str]]:
    names = [f"{node}-p{k}" for k in range(1, per_node + 1)]
    return {p["name"]: (node, p["ip"]) for p in json.loads(lab.labpod(node, "up", *names))}


def start_all(lab: Lab, nodes: list[str], per_node: int) -> dict[str, tuple[str, str]]:
    pods = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        for started in pool.map(lambda n: start_pods(lab, n, per_node), nodes):
            pods.update(started)
    return pods


def matrix(lab: Lab, pods: dict[str, tuple[str, str]], wait: float) -> tuple[dict, float]:
    """Every pod checks every other pod: one call per node (its pods check in parallel), the
    nodes in parallel."""
    start = time.monotonic()
    ips = [ip for _, ip in pods.values()]

    def from_node(node):
        names = sorted(n for n, (where, _) in pods.items() if where == node)
        out = lab.labpod(node, "check", "--from", ",".join(names), *ips, "--wait", str(wait))
        return json.loads(out)

    results = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(lab.nodes)) as pool:
        for res in pool.map(from_node, lab.nodes):
            for name, r in res.items():
                if "error" in r:
                    raise RuntimeError(f"check from {name}: {r['error']}")
                results[name] = r
    return results, time.monotonic() - start


def show(pods: dict, results: dict, title: str) -> bool:
    names = sorted(pods)
    width = max(len(n) for n in names) + 2
    print(f"\n{title} (rows: from, columns: to; ok = ping and TCP by pod IP)")
    print(" " * width + "".join(n.ljust(width) for n in names))
    all_ok = True
    for src in names:
        cells = []
        for dst in names:
            if src == dst:
                cells.append("-")
                continue
            r = results[src][pods[dst][1]]
            cell = "ok" if r["ping"] and r["tcp"] else \
                "+".join(k for k in ("ping", "tcp") if not r[k]) + " FAIL"
            all_ok &= cell == "ok"
            cells.append(cell)
        print(src.ljust(width) + "".join(c.ljust(width) for c in cells))
    for name in names:
        print(f"  {name}: {pods[name][1]} on {pods[name][0]}")
    return all_ok


def reboot(lab: Lab, node: str, timeout: float = 900) -> float:
    """Reboot NODE and wait until it is back (a new boot id) with podnetd answering. The poll is
    cheap (systemctl and a socket test); podnetctl, a Python start, runs once it should work."""
    before = lab.boot_id(node)
    start = time.monotonic()
    lab.ssh(node, "sudo systemctl reboot", check=False, timeout=60)
    deadline = start + timeout
    probe = ("cat /proc/sys/kernel/random/boot_id && systemctl is-active -q podnetd "
             "&& test -S /run/podnet/podnetd.sock")
    while time.monotonic() < deadline:
        try:
            proc = lab.ssh(node, probe, check=False, timeout=60)
        except subprocess.TimeoutExpired:
            continue
        lines = proc.stdout.split()
        if proc.returncode == 0 and lines and lines[0] != before:
            if lab.ssh(node, "sudo podnetctl status", check=False, timeout=120).returncode == 0:
                return time.monotonic() - start
        time.sleep(2)
    raise RuntimeError(f"{node} not back with podnetd ready after {timeout:.0f} s")


# -- the cluster, through its API from node 1 -----------------------------------------------------


class ClusterCheckFailed(Exception):
    pass


def podnetctl(lab: Lab, args: str, check: bool = True, timeout: float = 120):
    """podnetctl on node 1 as the vagrant user, whose client config speaks to the cluster API
    (root has none: its podnetctl stays on the local socket)."""
    return lab.ssh(lab.nodes[0], f"podnetctl {args}", check=check, timeout=timeout)


def get_json(lab: Lab, what: str) -> list[dict]:
    return json.loads(podnetctl(lab, f"get {what} -o json").stdout).get("items") or []


def _condition(obj: dict, kind: str) -> str:
    return next((c.get("status", "") for c in obj.get("status", {}).get("conditions") or []
                 if c.get("type") == kind), "")


def until(what: str, timeout: float, fn, interval: float = 3):
    """fn() until it returns something true; ClusterCheckFailed with the last answer if not."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        try:
            got = fn()
        except RuntimeError as e:   # a command that failed: worth another try until the end
            got, last = None, str(e)
        if got:
            return got
        if time.monotonic() >= deadline:
            raise ClusterCheckFailed(f"{what}: not after {timeout:.0f} s" +
                                     (f" (last: {last})" if last else ""))
        time.sleep(interval)


def cluster_part(lab: Lab, timeout: float, *, manifest: str = MANIFEST,
                 plain_context: str = f"{CLUSTER}-{PLAIN_USER}",
                 audit_log: str = AUDIT_LOG) -> list[str]:
    """The cluster checks; returns the failures (empty: all passed). Needs three VMs. (The
    keywords let tests/test_vagrant_suite_cluster.py run it against the netns lab.)"""
    if len(lab.nodes) < 3:
        return [f"the cluster part needs 3 nodes (three web pods, never two on one node); "
                f"this lab has {len(lab.nodes)}"]
    failures = []

    def nodes_ready():
        nodes = {n["metadata"]["name"]: n for n in get_json(lab, "nodes")}
        return nodes if all(_condition(nodes.get(name, {}), "Ready") == "True"
                            for name in lab.nodes) else None

    nodes = until(f"nodes {', '.join(lab.nodes)} registered and Ready", timeout, nodes_ready)
    print(podnetctl(lab, "get nodes --show-labels").stdout.rstrip())
    ssd = sorted(name for name, n in nodes.items()
                 if (n["metadata"].get("labels") or {}).get("disk") == "ssd")
    if len(ssd) != 1:
        raise ClusterCheckFailed(f"one node labelled disk=ssd wanted, got {ssd or 'none'}")
    for name in lab.nodes:
        labels = nodes[name]["metadata"].get("labels") or {}
        if labels.get("lab.podnet.io/vm") != name or labels.get("kubernetes.io/hostname") != name:
            failures.append(f"node {name}: labels {labels}")

    # Anything a previous run left (KEEP=1, then `vagrant/lab test` again) goes first.
    podnetctl(lab, f"delete pods {' '.join((*WEBS, DB))} --now --ignore-not-found --timeout 120",
              timeout=180)
    print(podnetctl(lab, f"apply -f {manifest}").stdout.rstrip())

    def running():
        pods = {p["metadata"]["name"]: p for p in get_json(lab, "pods")}
        return pods if all(pods.get(n, {}).get("status", {}).get("phase") == "Running" and
                           _condition(pods[n], "Ready") == "True" for n in (*WEBS, DB)) else None

    t = time.monotonic()
    pods = until(f"pods {', '.join((*WEBS, DB))} Running and Ready", timeout, running)
    print(f"suite: cluster pods Running in {time.monotonic() - t:.1f} s")
    print(podnetctl(lab, "get pods -o wide").stdout.rstrip())

    where = {n: pods[n]["spec"].get("nodeName", "") for n in (*WEBS, DB)}
    web_nodes = sorted(where[n] for n in WEBS)
    if len(set(web_nodes)) != 3 or not set(web_nodes) <= set(lab.nodes):
        failures.append(f"web pods must be on three different VMs (podAntiAffinity): {where}")
    if where[DB] != ssd[0]:
        failures.append(f"db must be on {ssd[0]} (nodeSelector disk=ssd), is on {where[DB]!r}")
    for name in (*WEBS, DB):
        host_ip = pods[name]["status"].get("hostIP")
        node_ips = {a.get("address") for a in
                    nodes.get(where[name], {}).get("status", {}).get("addresses") or []
                    if a.get("type") == "InternalIP"}
        if host_ip not in node_ips:
            failures.append(f"pod {name}: hostIP {host_ip} is not {where[name]}'s InternalIP "
                            f"{sorted(node_ips)}")

    # HTTP across VMs: the web pod on node2 from the web pod on node3.
    by_node = {where[n]: n for n in WEBS}
    server, client = by_node.get(lab.nodes[1]), by_node.get(lab.nodes[2])
    if server and client:
        ip = pods[server]["status"].get("podIP", "")
        command = f"exec {client} -- sh -c {shlex.quote(HTTP_GET.format(ip=ip))}"

        def answered():
            out = podnetctl(lab, command, check=False, timeout=120).stdout
            return out if out.startswith("HTTP/1.") else None

        try:
            reply = until(f"{server} ({ip}, {lab.nodes[1]}) answering HTTP to {client} "
                          f"({lab.nodes[2]})", 60, answered)
            print(f"suite: {client} on {lab.nodes[2]} -> {server} {ip}:8080 on "
                  f"{lab.nodes[1]}: {reply.splitlines()[0]}")
        except ClusterCheckFailed as e:
            failures.append(str(e))
    else:
        failures.append(f"no web pod on {lab.nodes[1]} or {lab.nodes[2]}: {where}")

    # RBAC: alice is authenticated (a certificate of the lab CA) but no rule names her.
    # `create -f`, not apply: apply reads the live object first, refused as "get"
    for verb, args in (("list", "get pods"), ("create", f"create -f {manifest}")):
        proc = podnetctl(lab, f"{args} --context {plain_context}", check=False)
        text = (proc.stderr + proc.stdout).strip()
        wanted = f'pods is forbidden: User "{PLAIN_USER}" cannot {verb} resource "pods"'
        if proc.returncode == 0 or wanted not in text:
            failures.append(f"{PLAIN_USER} {args}: wanted a refusal ({wanted}), got exit "
                            f"{proc.returncode}: {text[:300]}")
        else:
            print(f"suite: {PLAIN_USER} {args}: refused: {text.splitlines()[-1]}")
    can = podnetctl(lab, f"auth can-i create pods --context {plain_context}", check=False)
    if can.returncode != 1 or can.stdout.strip() != "no":
        failures.append(f"{PLAIN_USER} auth can-i create pods: exit {can.returncode}: "
                        f"{can.stdout.strip()} {can.stderr.strip()}")
    audit = lab.ssh(lab.nodes[0], f"sudo cat {audit_log}", check=False).stdout
    denials = [r for r in (json.loads(line) for line in audit.splitlines() if line.strip())
               if r.get("user") == PLAIN_USER]
    if not denials:
        failures.append(f"no audit record of {PLAIN_USER}'s refusals in {lab.nodes[0]}:{audit_log}")

    # --now: db's `sleep` (PID 1) ignores SIGTERM and would hold the default 30 s grace period
    proc = podnetctl(lab, f"delete pods {' '.join((*WEBS, DB))} --now --ignore-not-found "
                     "--timeout 120", check=False, timeout=180)
    if proc.returncode != 0:
        failures.append(f"delete the suite's pods: exit {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[:300]}")
    return failures


def run_cluster_part(lab: Lab, timeout: float) -> list[str]:
    print("\nsuite: the cluster, through its API from " + lab.nodes[0])
    t = time.monotonic()
    try:
        failures = cluster_part(lab, timeout)
    except (ClusterCheckFailed, RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        failures = [str(e)]
    for f in failures:
        print(f"suite: cluster: FAIL: {f}")
    print(f"suite: cluster part {'passed' if not failures else 'FAILED'} "
          f"({time.monotonic() - t:.1f} s)")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ssh-config", required=True)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--pods-per-node", type=int, default=2)
    ap.add_argument("--reboot", default=None, help="node to reboot (default: the last one)")
    ap.add_argument("--wait", type=float, default=60, help="seconds a pair may take to work")
    ap.add_argument("--mode", choices=["cni", "runtime"], default=None)
    ap.add_argument("--cluster-timeout", type=float, default=600,
                    help="seconds for the nodes to be Ready and the cluster's pods Running")
    ap.add_argument("--skip-cluster", action="store_true", help="no cluster part")
    args = ap.parse_args()
    nodes = [f"node{i}" for i in range(1, args.nodes + 1)]
    lab = Lab(args.ssh_config, nodes, args.mode)
    if not lab.mode:
        lab.mode = lab.ssh(nodes[0], f"sudo python3 {LABPOD} mode").stdout.strip()
    print(f"suite: pods through {'podnetctl pod run' if lab.mode == 'runtime' else 'the CNI plugin (no pod runtime yet)'}")
    for node in nodes:
        unit = lab.ssh(node, "systemctl show -p ExecStart --value podnetd").stdout
        argv = unit.split("argv[]=", 1)[-1].split(";", 1)[0].strip()
        print(f"suite: {node}: {argv}")

    cluster_failures = [] if args.skip_cluster else run_cluster_part(lab, args.cluster_timeout)

    t = time.monotonic()
    fallback = ""
    try:
        pods = start_all(lab, nodes, args.pods_per_node)
    except RuntimeError as e:
        if lab.mode != "runtime":
            raise
        # Say so loudly, then still prove the network with the CNI plugin directly.
        # the whole error (a traceback from the VM ends with its cause), a short form for the verdict
        lines = str(e).strip().splitlines()
        fallback = f"{lines[0][:200]} ... {lines[-1][:200]}" if len(lines) > 1 else lines[0][:300]
        print(f"suite: WARNING: podnetctl pod run failed:\n{e}\n"
              "suite: WARNING: falling back to the CNI plugin on a netns per pod")
        for node in nodes:
            lab.ssh(node, f"sudo podnetctl pod rm {' '.join(f'{node}-p{k}' for k in range(1, args.pods_per_node + 1))}",
                    check=False)
        lab.mode = "cni"
        pods = start_all(lab, nodes, args.pods_per_node)
    print(f"suite: {len(pods)} pods started in {time.monotonic() - t:.1f} s")

    results, took = matrix(lab, pods, args.wait)
    ok_before = show(pods, results, f"connectivity ({took:.1f} s)")

    victim = args.reboot or nodes[-1]
    print(f"\nsuite: rebooting {victim}")
    took = reboot(lab, victim)
    print(f"suite: {victim} back with podnetd ready in {took:.1f} s")
    t = time.monotonic()
    for name in [n for n, (node, _) in pods.items() if node == victim]:
        del pods[name]
    pods.update(start_pods(lab, victim, args.pods_per_node))
    print(f"suite: pods on {victim} started again in {time.monotonic() - t:.1f} s")
    results, took = matrix(lab, pods, args.wait)
    ok_after = show(pods, results, f"connectivity after rebooting {victim} ({took:.1f} s)")

    verdict = "PASS" if ok_before and ok_after and not cluster_failures else "FAIL"
    how = "podnetctl pod run" if lab.mode == "runtime" else "the CNI plugin" + (
        f" (fallback: pod run failed: {fallback})" if fallback else "")
    cluster = "skipped" if args.skip_cluster else (
        "passed" if not cluster_failures else f"{len(cluster_failures)} failures")
    print(f"\nsuite: {verdict}: cluster part {cluster}; all pairs before the reboot: "
          f"{ok_before}, after: {ok_after}; pods through {how}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
