"""Shared helpers for tests: unique names, namespaces, a podnetd per node netns, the plugin.

Everything created here carries a per-run unique prefix and is removed even when a test fails.
"""
import contextlib
import itertools
import json
import os
import pathlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
PY = sys.executable
PLUGIN = REPO / "cni-plugin" / "plugin.py"
REFERENCE_CNI_DIR = "/usr/lib/cni"

_counter = itertools.count()
RUN_ID = f"{os.getpid() % 100000:05d}"


def unique(tag: str = "") -> str:
    """A short unique name (fits a 15-char interface name): 'pt' + run id + tag + counter."""
    return f"pt{RUN_ID}{tag}{next(_counter)}"


def sh(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=True, text=True, **kw)


def in_ns(ns: str, *cmd, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a command inside a named netns (nsenter keeps /sys, unlike `ip netns exec`)."""
    return sh("nsenter", f"--net=/run/netns/{ns}", *cmd, check=check, **kw)


class Netns:
    """Named network namespaces that are all deleted on cleanup()."""

    def __init__(self):
        self.names: list[str] = []

    def add(self, tag: str = "n") -> str:
        name = unique(tag)
        sh("ip", "netns", "add", name)
        self.names.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    def remove(self, name: str) -> None:
        sh("ip", "netns", "del", name, check=False)
        if name in self.names:
            self.names.remove(name)

    def cleanup(self) -> None:
        for name in reversed(list(self.names)):
            self.remove(name)


class Daemon:
    """A podnetd running inside a node netns, with its own socket and state dir."""

    def __init__(self, netns: str, pod_cidr: str = "10.77.0.0/24", *, node_name: str | None = None,
                 extra: list[str] | None = None, workdir: str | None = None):
        self.netns = netns
        self.pod_cidr = pod_cidr
        self.node_name = node_name or netns
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"{unique('d')}-")
        self.socket = os.path.join(self.workdir, "podnetd.sock")
        self._cni_socket: str | None = None
        self.state_dir = os.path.join(self.workdir, "state")
        self.log_path = os.path.join(self.workdir, "podnetd.log")
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", PY, "-m", "podnetd.main",
                "--node-name", self.node_name, "--pod-cidr", self.pod_cidr,
                "--socket", self.socket, "--state-dir", self.state_dir, *self.extra]

    def start(self, timeout: float = 15) -> "Daemon":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"podnetd exited {self.proc.returncode}:\n{self.log()}")
            rc, _, _ = plugin("STATUS", config=self.config())
            if rc == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"podnetd not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return pathlib.Path(self.log_path).read_text()
        except OSError:
            return ""

    @property
    def cni_socket(self) -> str:
        """The CNI relay's socket: podnetd's default, cni.sock next to --socket, unless a test
        started it with --cni-socket and set this."""
        return self._cni_socket or os.path.join(os.path.dirname(self.socket), "cni.sock")

    @cni_socket.setter
    def cni_socket(self, path: str) -> None:
        self._cni_socket = path

    def config(self, name: str = "podnet-test", version: str = "1.1.0", **extra) -> dict:
        return {"cniVersion": version, "name": name, "type": "podnet", "socket": self.cni_socket,
                **extra}

    def stop(self, sig=signal.SIGTERM, timeout: float = 10) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> "Daemon":
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# Which build of the plugin plugin() runs: conftest points it at the native build (what
# `make install` lays out); tests that cover both builds switch it per parameter.
PLUGIN_ARGV = {"python": [PY, "-I", "-S", str(PLUGIN)]}
PLUGIN_BUILD = {"current": "python"}


def plugin(command: str, *, config: dict | bytes | None = None, container_id: str = "",
           netns: str = "", ifname: str = "", args: str = "", path: str = REFERENCE_CNI_DIR,
           timeout: float = 30, argv: list[str] | None = None) -> tuple[int, dict | str, str]:
    """Run the podnet plugin as a runtime does (env + stdin, `python -I -S` like the installed
    binary). Returns (exit code, parsed stdout or raw text, stderr)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command}
    for key, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns),
                       ("CNI_IFNAME", ifname), ("CNI_ARGS", args), ("CNI_PATH", path)):
        if value:
            env[key] = value
    data = config if isinstance(config, bytes) else json.dumps(config or {}).encode()
    proc = subprocess.run(argv or PLUGIN_ARGV[PLUGIN_BUILD["current"]], input=data, env=env,
                          capture_output=True, timeout=timeout)
    out = proc.stdout.decode()
    try:
        parsed = json.loads(out) if out.strip() else ""
    except ValueError:
        parsed = out
    return proc.returncode, parsed, proc.stderr.decode()


def ns_path(name: str) -> str:
    return f"/run/netns/{name}"


def cni_add(daemon: "Daemon", pod_ns: str, container_id: str, ifname: str = "eth0",
            **config) -> tuple[int, dict | str, str]:
    """CNI ADD of a pod's named netns through the plugin, as a runtime calls it; extra keyword
    arguments go into the network config (e.g. version="1.0.0")."""
    return plugin("ADD", config=daemon.config(**config), container_id=container_id,
                  netns=ns_path(pod_ns), ifname=ifname)


def cni_del(daemon: "Daemon", pod_ns: str, container_id: str, ifname: str = "eth0",
            **config) -> tuple[int, dict | str, str]:
    """CNI DEL, the counterpart of cni_add()."""
    return plugin("DEL", config=daemon.config(**config), container_id=container_id,
                  netns=ns_path(pod_ns), ifname=ifname)


def assert_one_clear_line(stderr: str, needle: str = "", prefix: str = "") -> str:
    """A refused input is reported as exactly one line holding needle (and starting with prefix),
    never a traceback; returns that line."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert needle in lines[0] and lines[0].startswith(prefix), stderr
    return lines[0]


def ping(ns: str, address: str, count: int = 1, timeout: int = 2, size: int | None = None,
         dont_fragment: bool = False) -> bool:
    cmd = ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout)]
    if count > 1:
        cmd += ["-i", "0.2"]
    if size is not None:
        cmd += ["-s", str(size)]
    if dont_fragment:
        cmd += ["-M", "do"]
    return in_ns(ns, *cmd, address, check=False).returncode == 0


def links_in(ns: str | None = None) -> list[dict]:
    cmd = ["ip", "-j", "link", "show"]
    out = in_ns(ns, *cmd).stdout if ns else sh(*cmd).stdout
    return json.loads(out)


def wait_for(condition, timeout: float = 10, interval: float = 0.05, what: str = "condition"):
    """Poll condition() until it returns something truthy; return it, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def ipam_allocations(daemon: "Daemon") -> set[tuple[str, str]]:
    """(container id, ifname) of every address podnetd's IPAM holds, read from its database
    directly (read-only), not through podnetd: a leak check must not go through code that
    would clean the leak up."""
    db = sqlite3.connect(f"file:{daemon.state_dir}/ipam.db?mode=ro", uri=True, timeout=10)
    try:
        return set(db.execute("SELECT container_id, ifname FROM endpoints").fetchall())
    finally:
        db.close()


def veths_on_bridge(daemon: "Daemon", bridge: str = "podnet0") -> set[str]:
    """The host ends of pod veths, as the node's kernel lists them."""
    return {link["ifname"] for link in links_in(daemon.netns) if link.get("master") == bridge}


def podnetctl(*args: str, socket: str, netns: str | None = None, timeout: float = 60,
              check: bool = False) -> subprocess.CompletedProcess:
    """podnetctl ARGS --socket SOCKET as a person runs it (in a node netns when given)."""
    enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    return subprocess.run([*enter, PY, "-m", "podnetd.ctl.main", *args, "--socket", socket],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout, check=check)


def endpoints(daemon: "Daemon") -> list[dict]:
    """The daemon's endpoint records, through podnetctl as a person would get them."""
    proc = podnetctl("endpoints", "-o", "json", socket=daemon.socket, timeout=30)
    if proc.returncode != 0:
        raise AssertionError(f"podnetctl endpoints failed: {proc.stderr}")
    return json.loads(proc.stdout)


class ContinuousPing:
    """A 10 ms ping from a pod for the duration of a with-block, counted by sequence number (the
    lab's pinger): .sent is the last answered sequence number, .received the replies up to it and
    .lost the ones missing, so the packet in flight when the ping stops never counts as lost."""

    def __init__(self, ns: str, address: str):
        self.ns, self.address = ns, address
        self.sent = self.received = 0
        self.lost: list[int] = []
        self.output = ""

    def __enter__(self) -> "ContinuousPing":
        from podnetd.lab.probe import ContinuousPing as SequencePing
        self._ping = SequencePing(self.ns, self.address)
        return self

    def __exit__(self, *exc) -> None:
        result = self._ping.stop()
        self.sent, self.received, self.lost = result["last_seq"], result["answered"], result["lost"]
        self.output = f"lost seq {result['lost'][:50]}; errors {result['errors'][:10]}"


@contextlib.contextmanager
def routed_lab_with_pods(store: str, tag: str, node_timeout: int):
    """A 3-node routed lab on the given store, converged, one pod per node; torn down after."""
    from podnetd.lab import Lab, pods
    lab = Lab.up(3, "routed", store, name=unique(tag), node_timeout=node_timeout, wait=30)
    try:
        assert lab.wait_routes(30) == {}, "nodes did not converge"
        for node in lab.node_names():
            pods.add_pod(lab, node)
        yield lab
    finally:
        lab.down()
