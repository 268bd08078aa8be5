"""Pod start latency: podnet's runtime vs podman, same rootfs, same run (not a test).

    sudo .venv/bin/python bench/pod_start.py [--pods 20]

podnet: from the RunPod call to its answer (every container running, the pod IP assigned),
through a podnetd in a private node netns with the podnet+portmap conflist and runc.
podman: `podman pod create` + `podman run -d --pod` with the rootfs of the same image
(--rootfs), CNI backend, runc, cgroupfs, private --root/--runroot. Also stop+rm per pod."""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

from testlib import Netns, unique  # noqa: E402
from runtime_lib import RuntimeNode, busybox_archive  # noqa: E402

from podnetd.api.podnet.v1 import pods_pb2, pods_pb2_grpc  # noqa: E402
from podnetd.ctl.client import channel  # noqa: E402

CONTAINERS_CONF = """[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni"]
network_config_dir = "{netdir}"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
"""


def manifest(name: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"terminationGracePeriodSeconds": 0, "containers": [
                           {"name": "app", "image": "busybox",
                            "command": ["sleep", "3600"]}]}})


def bench_podnet(n: int) -> tuple[list[float], list[float], str]:
    spaces = Netns()
    node = None
    try:
        node = RuntimeNode(spaces.add("bn"), "10.79.0.0/24").start()
        node.ctl("image", "import", "busybox", busybox_archive())
        stub = pods_pb2_grpc.PodServiceStub(channel(node.socket))
        stub.ListPods(pods_pb2.ListPodsRequest(), timeout=10)  # warm the channel
        starts, stops = [], []
        for i in range(n):
            name = f"bench{i}"
            t0 = time.perf_counter()
            resp = stub.RunPod(pods_pb2.RunPodRequest(manifest=manifest(name)), timeout=120)
            starts.append(time.perf_counter() - t0)
            status = json.loads(resp.pod_json)["status"]
            assert status["podIP"] and status["containerStatuses"][0]["state"].get("running"), status
        for i in range(n):
            t0 = time.perf_counter()
            stub.RemovePod(pods_pb2.RemovePodRequest(name=f"bench{i}"), timeout=120)
            stops.append(time.perf_counter() - t0)
        rootfs = node.ctl("image", "list", "-o", "json").stdout
        return starts, stops, rootfs
    finally:
        if node:
            node.cleanup()
        spaces.cleanup()


def bench_podman(n: int, rootfs: str) -> tuple[list[float], list[float]]:
    work = tempfile.mkdtemp(prefix=f"{unique('pm')}-")
    netdir = os.path.join(work, "net.d")
    os.makedirs(netdir)
    bridge = unique("pb")
    with open(os.path.join(netdir, "90-bench.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "podman", "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.99.0/24"}]],
                      "dataDir": os.path.join(work, "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}, f)
    conf = os.path.join(work, "containers.conf")
    with open(conf, "w") as f:
        f.write(CONTAINERS_CONF.format(netdir=netdir))
    env = {**os.environ, "CONTAINERS_CONF": conf}
    base = ["podman", "--root", os.path.join(work, "root"), "--runroot",
            os.path.join(work, "runroot"), "--cgroup-manager", "cgroupfs"]

    def pm(*args):
        return subprocess.run([*base, *args], capture_output=True, text=True, env=env,
                              check=True).stdout.strip()
    starts, stops = [], []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            pm("pod", "create", "--name", f"pmb{i}", "--network", "podman")
            pm("run", "-d", "--pod", f"pmb{i}", "--name", f"pmb{i}-app", "--rootfs", rootfs,
               "sleep", "3600")
            starts.append(time.perf_counter() - t0)
        for i in range(n):
            t0 = time.perf_counter()
            pm("pod", "rm", "-f", "-t", "0", f"pmb{i}")
            stops.append(time.perf_counter() - t0)
    finally:
        subprocess.run([*base, "pod", "rm", "-a", "-f", "-t", "0"], capture_output=True, env=env)
        subprocess.run([*base, "system", "reset", "-f"], capture_output=True, env=env)
        subprocess.run(["umount", "-R", os.path.join(work, "root")], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return starts, stops


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=20)
    args = ap.parse_args()
    # the same rootfs for podman: the busybox image unpacked by our image store, copied out
    rootfs_dir = tempfile.mkdtemp(prefix=f"{unique('rf')}-")
    try:
        from podnetd.runtime.images import ImageStore
        store = ImageStore(os.path.join(rootfs_dir, "store"))
        rootfs = store.import_archive("busybox", busybox_archive())["rootfs"]
        ours, our_stop, _ = bench_podnet(args.pods)
        theirs, their_stop = bench_podman(args.pods, rootfs)
    finally:
        shutil.rmtree(rootfs_dir, ignore_errors=True)
    print(f"pods: {args.pods}")
    print(f"podnet pod start p50 {p50(ours):.3f}s (min {min(ours):.3f} max {max(ours):.3f})")
    print(f"podman pod create+run p50 {p50(theirs):.3f}s (min {min(theirs):.3f} "
          f"max {max(theirs):.3f})")
    print(f"ratio podnet/podman: {p50(ours) / p50(theirs):.2f} (goal <= 0.5)")
    print(f"podnet stop+rm p50 {p50(our_stop):.3f}s; podman pod rm -f -t 0 p50 "
          f"{p50(their_stop):.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
