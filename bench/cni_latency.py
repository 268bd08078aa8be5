"""CNI latency: podnet (native and portable builds) vs the reference bridge + host-local,
side by side in one run.

Each plugin gets its own node netns (podnet: a podnetd inside it; reference: the bridge plugin's
bridge inside it, entered with nsenter). For each: ADD and DEL over N fresh pod netns
(p50/p95), VERSION (p50/p95), and K concurrent ADDs (wall time and per-call p50). Prints a table
and the podnet/reference ratios; --json writes them for notes.

Also the start of the venv's `podnet` (VERSION p50, the launcher `make venv` writes) against the
portable build's, which it must not be slower than.

Usage: python bench/cni_latency.py [--pods 40] [--concurrent 16] [--json out.json]
PODNETD_EXTRA="--no-leader-elect --no-pod-runtime" gives podnetd more flags (an A/B of what the
other components cost the CNI path: nothing measurable, 5.8-6.1 ms ADD p50 either way).
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

EXTRA = os.environ.get("PODNETD_EXTRA", "").split()  # more podnetd flags (A/B runs)


def install_podnet(bin_dir: str, native: bool) -> str:
    """The plugin exactly as `make install` lays it out (native), or its portable build."""
    from podnetd.install import install
    return install(os.path.join(bin_dir, "native" if native else "python"), native=native)


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


def wait_gone(pod_ns: str, ifname: str = "eth0", timeout: float = 5) -> None:
    from podnetd.kernel import ip_lib, netns

    def poll():
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if ip_lib.link_get(ifname) is None:
                return
            time.sleep(0.0005)
        raise TimeoutError(f"{ifname} still in {pod_ns} after {timeout}s")
    netns.run_in_netns(f"/run/netns/{pod_ns}", poll)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] * 1000


def measure(name, binary, node_ns, config, spaces: Netns, pods: int, concurrent: int) -> dict:
    pod_ns = [spaces.add("b") for _ in range(pods)]
    adds, dels, versions = [], [], []
    for i, ns in enumerate(pod_ns):
        adds.append(invoke(binary, node_ns, "ADD", config, f"{name}-{i}", f"/run/netns/{ns}"))
    settled = []
    for i, ns in enumerate(pod_ns):
        start = time.perf_counter()
        dels.append(invoke(binary, node_ns, "DEL", config, f"{name}-{i}", f"/run/netns/{ns}"))
        # podnetd answers DEL before the kernel finishes deleting the veth (it reaps in the
        # background); "settled" is until the pod's interface is really gone.
        wait_gone(ns)
        settled.append(time.perf_counter() - start)
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
            "del_p95": pct(dels, .95), "del_settled_p50": pct(settled, .5),
            "version_p50": pct(versions, .5),
            "version_p95": pct(versions, .95), "concurrent_wall": wall * 1000,
            "concurrent_p50": pct(conc, .5)}


def version_p50(binary: str, n: int) -> float:
    return pct([invoke(binary, None, "VERSION", {"cniVersion": "1.0.0"}) for _ in range(n)], .5)


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
        ref_node, pn_node = spaces.add("r"), spaces.add("p")
        daemon = Daemon(pn_node, "10.123.0.0/16", extra=EXTRA).start()
        ref_cfg = {"cniVersion": "1.0.0", "name": "benchref", "type": "bridge", "bridge": "cni-bench",
                   "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.124.0.0/16",
                                               "dataDir": os.path.join(bin_dir, "host-local")}}
        pn_cfg = daemon.config(name="benchpn", version="1.0.0")
        portable = install_podnet(bin_dir, False)
        results = {
            "reference": measure("ref", os.path.join(REFERENCE_DIR, "bridge"), ref_node, ref_cfg,
                                 spaces, args.pods, args.concurrent),
            "podnet": measure("pn", install_podnet(bin_dir, True), pn_node, pn_cfg, spaces,
                              args.pods, args.concurrent),
            "podnet-python": measure("pp", portable, pn_node, pn_cfg, spaces,
                                     args.pods, args.concurrent),
        }
        venv_podnet = pathlib.Path(sys.executable).parent / "podnet"
        if venv_podnet.exists():
            results["launchers"] = {"venv_podnet_version_p50": version_p50(str(venv_podnet), args.pods),
                                    "portable_version_p50": version_p50(portable, args.pods)}
    finally:
        if daemon:
            daemon.cleanup()
        spaces.cleanup()
        shutil.rmtree(bin_dir, ignore_errors=True)
    ref, pn, pp = results["reference"], results["podnet"], results["podnet-python"]
    print(f"{'metric (ms)':<18}{'reference':>10}{'podnet':>9}{'ratio':>7}{'podnet-py':>11}{'ratio':>7}")
    for key in ref:
        print(f"{key:<18}{ref[key]:>10.1f}{pn[key]:>9.1f}{pn[key] / ref[key]:>7.2f}"
              f"{pp[key]:>11.1f}{pp[key] / ref[key]:>7.2f}")
    if "launchers" in results:
        print("start (VERSION p50, ms): venv podnet %.1f, portable build %.1f" % (
            results["launchers"]["venv_podnet_version_p50"], results["launchers"]["portable_version_p50"]))
    results["ratios"] = {k: pn[k] / ref[k] for k in ref}
    results["ratios_python"] = {k: pp[k] / ref[k] for k in ref}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
