"""The memory a running 2-container pod costs its node: podnet's runtime vs podman (not a test).

    sudo .venv/bin/python bench/pod_memory.py

Counted: the resident set (VmRSS) of the pod's supervisors, not of the containers' own
processes: podnet: every process whose command line names one of the pod's containers
(conmon, or with an older podnetd the shim.py and its resident `runc run`) and the pause
container (catatonit); podman: the conmon of each container and of the infra container, and
the infra container's catatonit. Same rootfs (busybox), same two `sleep` containers, runc,
cgroupfs; podman with the CNI backend and private --root/--runroot (as bench/pod_start.py)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

from testlib import Netns, unique  # noqa: E402
from runtime_lib import RuntimeNode, busybox_archive  # noqa: E402
from pod_start import CONTAINERS_CONF  # noqa: E402

APPS = ["app", "sidecar"]


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def processes_naming(needle: str) -> dict[int, str]:
    """pid -> command line of the processes whose command line contains needle."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if needle in cmd:
            found[int(name)] = cmd
    found.pop(os.getpid(), None)
    return found


def with_shim_parents(procs: dict[int, str]) -> dict[int, str]:
    """An older podnetd's shims get their job on stdin (their command line names no container):
    add each that is the parent of a counted process (its `runc run`)."""
    for pid in list(procs):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{ppid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        if "shim.py" in cmd:
            procs[ppid] = cmd
    return procs


def report(title: str, procs: dict[int, str]) -> int:
    total = 0
    print(title)
    for pid, cmd in sorted(procs.items()):
        kib = rss_kib(pid)
        total += kib
        print(f"  {kib / 1024:6.1f} MiB  {pid:>7}  {cmd[:90]}")
    print(f"  {total / 1024:6.1f} MiB  total ({len(procs)} processes)")
    return total


def settle() -> None:
    time.sleep(1.0)   # a figure, not a test: let start-up allocations settle


def podnet() -> int:
    spaces = Netns()
    node = None
    try:
        node = RuntimeNode(spaces.add("pm"), "10.79.1.0/24").start()
        node.ctl("image", "import", "busybox", busybox_archive())
        doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mem"},
               "spec": {"terminationGracePeriodSeconds": 0, "containers": [
                   {"name": n, "image": "busybox", "command": ["sleep", "3600"]}
                   for n in APPS]}}
        p = node.run(doc)
        uid12 = p["metadata"]["uid"][:12]
        node.wait("mem", lambda p: all("running" in c["state"]
                                       for c in p["status"]["containerStatuses"]))
        settle()
        procs = with_shim_parents(processes_naming(f"pn-{uid12}-"))
        pause = json.loads(subprocess.run(["runc", "state", f"pn-{uid12}"], capture_output=True,
                                          text=True, check=True).stdout)["pid"]
        procs[pause] = "pause (catatonit)"
        return report("podnet: supervisors of a running 2-container pod", procs)
    finally:
        if node:
            node.cleanup()
        spaces.cleanup()


def podman(rootfs: str) -> int:
    work = tempfile.mkdtemp(prefix=f"{unique('pmm')}-")
    netdir = os.path.join(work, "net.d")
    os.makedirs(netdir)
    bridge = unique("pb")
    with open(os.path.join(netdir, "90-bench.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "podman", "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.98.0/24"}]],
                      "dataDir": os.path.join(work, "ipam")}}]}, f)
    conf = os.path.join(work, "containers.conf")
    with open(conf, "w") as f:
        f.write(CONTAINERS_CONF.format(netdir=netdir))
    env = {**os.environ, "CONTAINERS_CONF": conf}
    base = ["podman", "--root", os.path.join(work, "root"), "--runroot",
            os.path.join(work, "runroot"), "--cgroup-manager", "cgroupfs"]

    def pm(*args):
        return subprocess.run([*base, *args], capture_output=True, text=True, env=env,
                              check=True).stdout.strip()
    try:
        pm("pod", "create", "--name", "pmmem", "--network", "podman")
        for n in APPS:
            pm("run", "-d", "--pod", "pmmem", "--name", f"pmmem-{n}", "--rootfs", rootfs,
               "sleep", "3600")
        settle()
        ids = pm("ps", "-a", "--pod", "--filter", "pod=pmmem", "--no-trunc",
                 "--format", "{{.ID}}").split()
        procs = {}
        for cid in ids:
            procs.update({pid: cmd for pid, cmd in processes_naming(cid).items()
                          if cmd.startswith(("conmon", "/usr/bin/conmon"))})
        infra = pm("pod", "inspect", "pmmem", "--format", "{{.InfraContainerID}}")
        pid = int(pm("inspect", infra, "--format", "{{.State.Pid}}"))
        procs[pid] = "infra (catatonit)"
        return report("podman: supervisors of a running 2-container pod", procs)
    finally:
        subprocess.run([*base, "pod", "rm", "-a", "-f", "-t", "0"], capture_output=True, env=env)
        subprocess.run([*base, "system", "reset", "-f"], capture_output=True, env=env)
        subprocess.run(["umount", "-R", os.path.join(work, "root")], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    rootfs_dir = tempfile.mkdtemp(prefix=f"{unique('rf')}-")
    try:
        from podnetd.runtime.images import ImageStore
        store = ImageStore(os.path.join(rootfs_dir, "store"))
        rootfs = store.import_archive("busybox", busybox_archive())["rootfs"]
        ours = podnet()
        theirs = podman(rootfs)
    finally:
        shutil.rmtree(rootfs_dir, ignore_errors=True)
    print(f"podnet {ours / 1024:.1f} MiB, podman {theirs / 1024:.1f} MiB, "
          f"ratio {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
