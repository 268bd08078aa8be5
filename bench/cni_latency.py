"""CNI latency: podnet vs the reference bridge + host-local, side by side in one run.

Each plugin gets its own node netns (podnet: a podnetd inside it; reference: the bridge plugin's
bridge inside it, entered with nsenter). For each: ADD and DEL over N fresh pod netns
(p50/p95), VERSION (p50/p95), and K concurrent ADDs (wall time and per-call p50). Prints a table
and the podnet/reference ratios; --json writes them for notes.

Usage: python bench/cni_latency.py [--pods 40] [--concurrent 16] [--json out.json]
"""
import argparse
import concurrent.futures
import contextlib
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from testlib import Daemon, Netns, sh  # noqa: E402

REFERENCE_DIR = "/usr/lib/cni"


def install_podnet(bin_dir: str) -> str:
    """The plugin exactly as `make install` lays it out."""
    from podnetd.install import install_plugin
    return install_plugin(bin_dir)


def invoke(binary: str, node_ns: str | None, command: str, config: dict, cid: str = "",
           netns: str = "", ifname: str = "eth0") -> float:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_PATH": REFERENCE_DIR, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    # The reference plugin must run in the node netns (its bridge lives there); podnet's binary
    # only talks to its daemon's socket, but is run the same way so both pay the same exec cost.
    argv = ["nsenter", f"--net=/run/netns/{node_ns}", binary] if node_ns else [binary]
    start = time.perf_counter()
    proc = subprocess.run(argv, input=json.dumps(config).encode(), env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} {command} {cid}: {proc.stdout!r} {proc.stderr!r}")
    return elapsed


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] * 1000


def measure(name, binary, node_ns, config, spaces: Netns, pods: int, concurrent: int) -> dict:
    pod_ns = [spaces.add("b") for _ in range(pods)]
    adds, dels, versions = [], [], []
    for i, ns in enumerate(pod_ns):
        adds.append(invoke(binary, node_ns, "ADD", config, f"{name}-{i}", f"/run/netns/{ns}"))
    for i, ns in enumerate(pod_ns):
        dels.append(invoke(binary, node_ns, "DEL", config, f"{name}-{i}", f"/run/netns/{ns}"))
    for _ in range(pods):
        versions.append(invoke(binary, node_ns, "VERSION", {"cniVersion": config["cniVersion"]}))
    conc_ns = pod_ns[:concurrent]
    start = time.perf_counter()
    with concurrent_pool(concurrent) as pool:
        conc = list(pool.map(lambda a: invoke(binary, node_ns, "ADD", config, f"{name}-c{a[0]}",
                                              f"/run/netns/{a[1]}"), enumerate(conc_ns)))
    wall = time.perf_counter() - start
    for i, ns in enumerate(conc_ns):
        invoke(binary, node_ns, "DEL", config, f"{name}-c{i}", f"/run/netns/{ns}")
    for ns in pod_ns:
        spaces.remove(ns)
    return {"add_p50": pct(adds, .5), "add_p95": pct(adds, .95), "del_p50": pct(dels, .5),
            "del_p95": pct(dels, .95), "version_p50": pct(versions, .5),
            "version_p95": pct(versions, .95), "concurrent_wall": wall * 1000,
            "concurrent_p50": pct(conc, .5)}


@contextlib.contextmanager
def concurrent_pool(n):
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        yield pool


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=40)
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--json")
    args = ap.parse_args()
    spaces = Netns()
    bin_dir = tempfile.mkdtemp(prefix="pnbench-")
    daemon = None
    try:
        podnet_bin = install_podnet(bin_dir)
        ref_node, pn_node = spaces.add("r"), spaces.add("p")
        daemon = Daemon(pn_node, "10.123.0.0/16").start()
        ref_cfg = {"cniVersion": "1.0.0", "name": "benchref", "type": "bridge", "bridge": "cni-bench",
                   "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.124.0.0/16",
                                               "dataDir": os.path.join(bin_dir, "host-local")}}
        pn_cfg = daemon.config(name="benchpn", version="1.0.0")
        results = {
            "reference": measure("ref", os.path.join(REFERENCE_DIR, "bridge"), ref_node, ref_cfg,
                                 spaces, args.pods, args.concurrent),
            "podnet": measure("pn", podnet_bin, pn_node, pn_cfg, spaces, args.pods, args.concurrent),
        }
    finally:
        if daemon:
            daemon.cleanup()
        spaces.cleanup()
        shutil.rmtree(bin_dir, ignore_errors=True)
    ref, pn = results["reference"], results["podnet"]
    print(f"{'metric (ms)':<18}{'reference':>12}{'podnet':>10}{'ratio':>8}")
    for key in ref:
        print(f"{key:<18}{ref[key]:>12.1f}{pn[key]:>10.1f}{pn[key] / ref[key]:>8.2f}")
    results["ratios"] = {k: pn[k] / ref[k] for k in ref}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
