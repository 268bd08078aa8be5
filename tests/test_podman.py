"""podman 4.3 (Debian) as a real CNI client of podnet.

podman runs with its CNI backend and a private containers.conf, root, runroot and tmpdir, inside
a node netns (`nsenter --net`, so cgroups and mounts are the host's and runc works, while
nothing touches the host's network). podnetd runs in the same node netns; podman creates each
container's netns itself and calls the podnet plugin from a private CNI_PATH dir.
"""
import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from cni_chain import fetch, make_bin_dir, nat_rules
from cni_chain import podnet_endpoints as endpoints
from testlib import unique, wait_for

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "sleep", "ping", "ip", "cat", "ls", "true", "hostname", "httpd")
HOST_PORT, CTR_PORT = 18081, 8080


def busybox_rootfs(path: str) -> str:
    """A container root made of Debian's busybox-static: /bin/busybox and applet symlinks."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "run"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(path, "bin", "busybox"))
    os.makedirs(os.path.join(path, "www"))
    with open(os.path.join(path, "www", "token"), "w") as f:
        f.write(os.path.basename(path))
    for applet in APPLETS:
        os.symlink("busybox", os.path.join(path, "bin", applet))
    return path


def containers_conf(workdir: str, bin_dir: str, net_dir: str) -> str:
    path = os.path.join(workdir, "containers.conf")
    with open(path, "w") as f:
        f.write(f"""[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}"]
network_config_dir = "{net_dir}"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{workdir}/events.log"
volume_path = "{workdir}/volumes"
""")
    return path


class Podman:
    """`podman` with private config and storage, run inside node netns `node_ns`."""

    def __init__(self, workdir: str, node_ns: str, conf: str):
        self.workdir, self.node_ns = workdir, node_ns
        self.env = {**os.environ, "CONTAINERS_CONF": conf,
                    "CONTAINERS_STORAGE_CONF": os.path.join(workdir, "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": os.path.join(workdir, "registries.conf")}
        root, runroot = os.path.join(workdir, "root"), os.path.join(workdir, "runroot")
        with open(self.env["CONTAINERS_STORAGE_CONF"], "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\nrunroot = "{runroot}"\ngraphroot = "{root}"\n')
        with open(self.env["CONTAINERS_REGISTRIES_CONF"], "w") as f:
            f.write("unqualified-search-registries = []\n")  # --rootfs only: never pull
        self.base = ["nsenter", f"--net=/run/netns/{node_ns}", "podman",
                     "--root", root, "--runroot", runroot,
                     "--tmpdir", os.path.join(workdir, "tmp"),
                     "--storage-driver", "vfs"]
        self.sandboxes: set[str] = set()   # container netns paths podman made

    def __call__(self, *args, check=True, timeout=90) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: exit {proc.returncode}\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def inspect(self, name: str) -> dict:
        info = json.loads(self("inspect", name).stdout)[0]
        key = info["NetworkSettings"].get("SandboxKey")
        if key:
            self.sandboxes.add(key)
        return info

    def cleanup(self) -> None:
        """Remove every container, then whatever a failure could have left: netns files,
        mounts under the workdir, the workdir."""
        with contextlib.suppress(Exception):
            self("rm", "-af", "-t", "0", check=False, timeout=60)
        mounts = [line.split()[1] for line in open("/proc/mounts")]
        for key in self.sandboxes:
            if key in mounts:
                subprocess.run(["umount", "-l", key], check=False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(key)
        for mnt in sorted((m for m in mounts if m.startswith(self.workdir)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def podman_env(daemon):
    workdir = tempfile.mkdtemp(prefix=f"{unique('pm')}-")
    bin_dir = make_bin_dir(os.path.join(workdir, "bin"), reference=("portmap",))
    net_dir = os.path.join(workdir, "net.d")
    os.makedirs(net_dir)
    network = unique("net")
    with open(os.path.join(net_dir, f"{network}.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": network,
                   "plugins": [{"type": "podnet", "socket": daemon.cni_socket},
                               {"type": "portmap", "capabilities": {"portMappings": True}}]}, f)
    podman = Podman(workdir, daemon.netns, containers_conf(workdir, bin_dir, net_dir))
    try:
        yield podman, network, busybox_rootfs(os.path.join(workdir, unique("rootfs")))
    finally:
        podman.cleanup()
        # libcni caches each attachment's result; the DEL removes it, a failure may not
        for cached in glob.glob(f"/var/lib/cni/results/{network}-*"):
            os.unlink(cached)


def test_podman_containers_get_addresses_ping_and_release(daemon, podman_env):
    podman, network, rootfs = podman_env
    names = [unique("ctr"), unique("ctr")]
    ids, addresses = [], []
    # the first container publishes a port (podman -> portmap on podnet's result) and serves
    # a file with busybox httpd; the second just sleeps
    commands = [("-p", f"{HOST_PORT}:{CTR_PORT}", "--rootfs", rootfs,
                 "/bin/httpd", "-f", "-p", str(CTR_PORT), "-h", "/www"),
                ("--rootfs", rootfs, "/bin/sleep", "600")]
    for name, command in zip(names, commands):
        podman("run", "-d", "--name", name, "--network", network, *command)
        info = podman.inspect(name)
        net = info["NetworkSettings"]["Networks"][network]
        ids.append(info["Id"])
        addresses.append(net["IPAddress"])
        assert net["Gateway"] == "10.77.0.1" and net["IPPrefixLen"] == 24
    assert addresses[0] != addresses[1] and all(a.startswith("10.77.0.") for a in addresses)

    # podnetd holds both attachments, keyed by podman's container ids
    held = {json.dumps(e) for e in endpoints(daemon)}
    for cid, address in zip(ids, addresses):
        assert any(cid in e and f'{address}/24' in e for e in held), held

    # the container sees its address on eth0, and the two ping each other by address
    shown = podman("exec", names[0], "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"{addresses[0]}/24" in shown
    for name, peer in ((names[0], addresses[1]), (names[1], addresses[0])):
        res = podman("exec", name, "ping", "-c", "2", "-W", "2", peer, check=False)
        assert res.returncode == 0, res.stdout + res.stderr

    # the published port reaches the first container: from the node (DNAT by portmap) and
    # directly by its pod address
    token = os.path.basename(rootfs)
    assert fetch(daemon.netns, f"http://10.77.0.1:{HOST_PORT}/token") == token
    assert fetch(daemon.netns, f"http://{addresses[0]}:{CTR_PORT}/token") == token
    assert f"{addresses[0]}:{CTR_PORT}" in nat_rules(daemon.netns)

    # podman stop tears the network down (DEL with libcni's cached result); start attaches anew
    podman("stop", "-t", "0", names[1])
    wait_for(lambda: ids[1] not in json.dumps(endpoints(daemon)),
             what="stop to release the address")
    podman("start", names[1])
    restarted = podman.inspect(names[1])["NetworkSettings"]["Networks"][network]["IPAddress"]
    assert any(ids[1] in json.dumps(e) and f"{restarted}/24" in json.dumps(e)
               for e in endpoints(daemon))
    res = podman("exec", names[0], "ping", "-c", "1", "-W", "2", restarted, check=False)
    assert res.returncode == 0, res.stdout + res.stderr

    # podman rm releases the address through the plugin's DEL
    podman("rm", "-f", "-t", "0", names[0])
    wait_for(lambda: ids[0] not in json.dumps(endpoints(daemon)), what="rm to release the address")
    assert ids[1] in json.dumps(endpoints(daemon))
    podman("rm", "-f", "-t", "0", names[1])
    wait_for(lambda: endpoints(daemon) == [], what="rm to release the last address")
    rules = nat_rules(daemon.netns)
    assert "CNI-DN-" not in rules and str(HOST_PORT) not in rules, rules
    for key in podman.sandboxes:
        assert not os.path.exists(key), f"podman left its netns {key}"
    assert not [m for m in open("/proc/mounts") if podman.workdir in m]
