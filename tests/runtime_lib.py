"""Helpers for the pod runtime tests: CNI dirs, a podnetd with the runtime in a node netns,
the busybox image, podnetctl, manifests, waiting for conditions, and leftover checks."""
import atexit
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

from podnetd.install import install
from testlib import PY, REFERENCE_CNI_DIR, REPO, Daemon, Netns, sh, unique



def cni_dirs(root: str, socket: str, kind: str = "podnet", version: str = "1.0.0") -> tuple[str, str]:
    """A conf dir with one conflist (podnet's plugin on the relay socket `socket`) and a bin dir
    holding the podnet plugin (installed as `make install` does) and the reference plugins."""
    conf_dir, bin_dir = os.path.join(root, "net.d"), os.path.join(root, "bin")
    os.makedirs(conf_dir, exist_ok=True)
    os.makedirs(bin_dir, exist_ok=True)
    install(bin_dir)
    for name in os.listdir(REFERENCE_CNI_DIR):
        os.symlink(os.path.join(REFERENCE_CNI_DIR, name), os.path.join(bin_dir, name))
    if kind == "podnet":
        conf = {"cniVersion": version, "name": "podnet", "plugins": [
            {"type": "podnet", "socket": socket},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}
    else:
        conf = {"cniVersion": "1.0.0", "name": "refbridge", "plugins": [
            {"type": "bridge", "bridge": unique("rb"), "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.77.0/24"}]],
                      "dataDir": os.path.join(root, "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}
    with open(os.path.join(conf_dir, "10-test.conflist"), "w") as f:
        json.dump(conf, f)
    return conf_dir, bin_dir


_IMAGE = None


def busybox_archive() -> str:
    global _IMAGE
    if _IMAGE is None or not os.path.exists(_IMAGE):
        out = os.path.join(tempfile.gettempdir(), f"{unique('img')}-busybox.tar")
        sh(PY, "-m", "podnetd.runtime.busybox_image", out, cwd=REPO)
        atexit.register(lambda: os.path.exists(out) and os.unlink(out))
        _IMAGE = out
    return _IMAGE


class RuntimeNode:
    """A podnetd with the pod runtime inside a node netns, its own CNI dirs and state."""

    def __init__(self, netns: str, pod_cidr: str = "10.78.0.0/24", kind: str = "podnet",
                 extra: list[str] | None = None, oci: str = "runc"):
        self.workdir = tempfile.mkdtemp(prefix=f"{unique('rt')}-")
        # the relay socket podnetd serves next to its API socket (testlib.Daemon.cni_socket)
        cni_socket = os.path.join(self.workdir, "cni.sock")
        self.conf_dir, self.bin_dir = cni_dirs(self.workdir, cni_socket, kind)
        self.daemon = Daemon(netns, pod_cidr, workdir=self.workdir, extra=[
            "--cni-conf-dir", self.conf_dir, "--cni-bin-dir", self.bin_dir,
            "--oci-runtime", oci, "--restart-backoff", "0.5", "--restart-backoff-max", "2",
            *(extra or [])])
        self.netns = netns

    @property
    def socket(self) -> str:
        return self.daemon.socket

    def start(self) -> "RuntimeNode":
        self.daemon.start(timeout=30)
        return self

    def ctl(self, *args, check: bool = True, input: str | None = None, timeout: float = 120):
        proc = subprocess.run([PY, "-m", "podnetd.ctl.main", *_with_socket(args, self.socket)],
                              capture_output=True, text=True, cwd=REPO, input=input,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podnetctl {' '.join(map(str, args))}: exit "
                                 f"{proc.returncode}\n{proc.stdout}{proc.stderr}\n"
                                 f"--- podnetd log ---\n{self.daemon.log()[-3000:]}")
        return proc

    def run(self, doc: dict) -> dict:
        """`pod run`; the pod as `pod get -o json` shows it once started (run answers with it)."""
        path = os.path.join(self.workdir, f"{doc['metadata']['name']}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        return json.loads(self.ctl("pod", "run", "-f", path, "-o", "json").stdout)

    @contextlib.contextmanager
    def running(self, doc: dict):
        """The pod for the with-block (as run() returns it), removed afterwards even on failure."""
        try:
            yield self.run(doc)
        finally:
            self.rm(doc["metadata"]["name"])

    def get(self, name: str) -> dict:
        return json.loads(self.ctl("pod", "get", name, "-o", "json").stdout)

    def wait(self, name: str, pred, timeout: float = 60, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        pod = None
        while time.monotonic() < deadline:
            pod = self.get(name)
            if pred(pod):
                return pod
            time.sleep(0.1)
        raise AssertionError(f"pod {name}: {what} not reached in {timeout}s; last:\n"
                             f"{json.dumps(pod and pod['status'], indent=1)}\n"
                             f"{self.ctl('pod', 'describe', name, check=False).stdout}\n"
                             f"--- podnetd log ---\n{self.daemon.log()[-4000:]}")

    def logs(self, name: str, *args) -> str:
        return self.ctl("pod", "logs", name, *args).stdout

    def exec(self, name: str, *cmd, container: str | None = None, check: bool = True):
        args = ["pod", "exec", name] + (["-c", container] if container else []) + ["--", *cmd]
        return self.ctl(*args, check=check)

    def rm(self, name: str) -> None:
        self.ctl("pod", "rm", name, check=False)

    def cleanup(self) -> None:
        """Remove every pod (through the daemon), stop it, then remove whatever is left."""
        try:
            if self.daemon.proc and self.daemon.proc.poll() is None:
                out = self.ctl("pod", "ls", "-o", "json", check=False).stdout
                for p in json.loads(out or "[]"):
                    self.rm(p["name"])
        finally:
            self.daemon.stop()
            force_cleanup(self.workdir)
            self.daemon.cleanup()


@contextlib.contextmanager
def runtime_node(tag: str, pod_cidr: str, extra: list[str] | None = None):
    """One RuntimeNode in a fresh netns with the busybox image imported; afterwards its pods,
    daemon and netns are removed and no mount may be left."""
    spaces = Netns()
    node = None
    try:
        node = RuntimeNode(spaces.add(tag), pod_cidr, extra=extra).start()
        node.ctl("image", "import", "busybox", busybox_archive())
        yield node
    finally:
        if node:
            node.cleanup()
            assert not leftovers(node.workdir), "mounts left behind"
        spaces.cleanup()


def _with_socket(args, socket):
    args = [str(a) for a in args]
    # the socket flag belongs to the leaf parser: insert it after the sub-command words
    head = 2 if args[0] in ("pod", "image") else 1
    return args[:head] + ["--socket", socket] + args[head:]


def container(name: str, script: str, **extra) -> dict:
    return {"name": name, "image": "busybox", "command": ["sh", "-c", script], **extra}


def pod(name: str, containers: list[dict], **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1, **spec, "containers": containers}}


def runc_ids(prefix: str = "pn-", runtime: str = "runc") -> list[str]:
    out = sh(runtime, "list", "-q", check=False).stdout.split()
    return [i for i in out if i.startswith(prefix)]


def force_cleanup(workdir: str) -> None:
    """Last resort (after a failed test): containers whose bundles live under workdir, their
    overlay and tmpfs mounts, their netns."""
    for runtime in ("runc", "crun"):
        for cid in runc_ids(runtime=runtime):
            state = sh(runtime, "state", cid, check=False).stdout
            try:
                bundle = json.loads(state).get("bundle", "")
            except ValueError:
                bundle = ""
            if bundle.startswith(workdir):
                sh(runtime, "delete", "-f", cid, check=False)
                sh("ip", "netns", "del", f"podnet-{cid[3:15]}", check=False)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    for m in sorted((m for m in mounts if m.startswith(workdir)), key=len, reverse=True):
        sh("umount", "-l", m, check=False)


def leftovers(workdir: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if line.split()[4].startswith(workdir)]
    return mounts


def busybox_variant(out: str, top, user: str = "", tag: str = "variant:latest") -> str:
    """A docker archive of the busybox image with one more layer (top(tar) adds its entries,
    e.g. a FIFO or a link at etc/passwd) and the config's User; digests are right."""
    import hashlib
    import io
    import tarfile
    from podnetd.runtime import busybox_image as bb

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    blobs = bb.layers("/bin/busybox") + [bb.layer_blob(top)]
    cfg = json.loads(bb.config([f"sha256:{sha(b)}" for b in blobs]))
    if user:
        cfg["config"]["User"] = user
    cfg = json.dumps(cfg, sort_keys=True).encode()
    with tarfile.open(out, "w") as tar:
        names = []
        for blob in blobs:
            bb.add_entry(tar, f"{sha(blob)}.tar", data=blob)
            names.append(f"{sha(blob)}.tar")
        bb.add_entry(tar, f"{sha(cfg)}.json", data=cfg)
        bb.add_entry(tar, "manifest.json", data=json.dumps([{
            "Config": f"{sha(cfg)}.json", "RepoTags": [tag], "Layers": names}]).encode())
    return out


def state_of(p: dict, name: str) -> dict:
    """The status of container `name` (init or app) of pod document p."""
    for c in p["status"].get("initContainerStatuses", []) + p["status"]["containerStatuses"]:
        if c["name"] == name:
            return c
    raise KeyError(name)


@contextlib.contextmanager
def shared_host_dir(tag: str):
    """A 0777 host directory for a hostPath volume pods write to; removed afterwards."""
    d = tempfile.mkdtemp(prefix=f"{unique(tag)}-")
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
