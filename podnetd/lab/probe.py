"""Traffic and route checks between lab namespaces: ping and TCP matrices, kernel routes."""
import concurrent.futures
import json
import re
import signal
import subprocess
import sys
import threading
import time

from ..kernel import ip_lib
from ..kernel.netns import run_in_netns
from . import netops

TCP_PORT = 7777

_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[2].encode()); c.close()
"""

_CLIENT = r"""
import json, socket, sys
out = {}
for target, port, want in json.loads(sys.argv[1]):
    try:
        with socket.create_connection((target, port), timeout=3) as c:
            data = b""
            while chunk := c.recv(256):
                data += chunk
        out[target] = data.decode() == want
    except OSError:
        out[target] = False
print(json.dumps(out))
"""


def route_dsts(ns: str) -> set[str]:
    """Destinations of the main table's routes inside ns."""
    return {r["dst"] for r in run_in_netns(netops.ns_path(ns), ip_lib.routes)}


def routes(ns: str) -> list[dict]:
    return run_in_netns(netops.ns_path(ns), ip_lib.routes)


def ping(ns: str, address: str, *, count: int = 1, interval: float = 0.2, wait: int = 2,
         size: int | None = None, dont_fragment: bool = False) -> subprocess.CompletedProcess:
    cmd = [*netops.nsenter(ns), "ping", "-n", "-c", str(count), "-W", str(wait)]
    if count > 1:
        cmd += ["-i", str(interval)]
    if size is not None:
        cmd += ["-s", str(size)]
    if dont_fragment:
        cmd += ["-M", "do"]
    return subprocess.run(cmd + [address], capture_output=True, text=True)


def ping_matrix(pods: dict[str, dict], *, count: int = 2, workers: int = 12) -> dict:
    """{(src, dst): bool} for every ordered pair of distinct pods, pinged in parallel."""
    pairs = [(a, b) for a in pods for b in pods if a != b]

    def one(pair):
        src, dst = pair
        return pair, ping(pods[src]["netns"], pods[dst]["address"], count=count).returncode == 0

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(one, pairs))


def tcp_matrix(pods: dict[str, dict], port: int = TCP_PORT) -> dict:
    """{(src, dst): bool}: a TCP server in every pod answers its name; every pod connects to
    every other and checks the answer."""
    servers = []
    try:
        for key, pod in pods.items():
            proc = subprocess.Popen([*netops.nsenter(pod["netns"]), sys.executable, "-c", _SERVER,
                                     str(port), key], stdout=subprocess.PIPE, text=True)
            servers.append(proc)
        for proc in servers:
            proc.stdout.readline()  # "listening"
        by_addr = {p["address"]: k for k, p in pods.items()}
        clients = {}
        for key, pod in pods.items():
            targets = [(p["address"], port, k) for k, p in pods.items() if k != key]
            clients[key] = subprocess.Popen([*netops.nsenter(pod["netns"]), sys.executable, "-c",
                                             _CLIENT, json.dumps(targets)],
                                            stdout=subprocess.PIPE, text=True)
        result = {}
        for key, proc in clients.items():
            out, _ = proc.communicate(timeout=60)
            for addr, ok in json.loads(out).items():
                result[(key, by_addr[addr])] = ok
        return result
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()


def render_matrix(pods: dict[str, dict], results: dict) -> str:
    """A table: one row per source pod, one column per destination pod."""
    names = list(pods)
    head = ["from \\ to"] + names
    rows = [head]
    for src in names:
        rows.append([f"{src} {pods[src]['address']}"] +
                    ["-" if src == dst else ("ok" if results.get((src, dst)) else "FAIL")
                     for dst in names])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def until(cond, timeout: float, what: str, interval: float = 0.1):
    """Poll cond() until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s")
        time.sleep(interval)


class ContinuousPing:
    """`ping -i 0.01` from a namespace, counted by sequence number: a packet is lost when a later
    one was answered and it was not, so the one in flight when we stop never counts as lost."""

    def __init__(self, ns: str, address: str, interval: float = 0.01):
        self.received: set[int] = set()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen([*netops.nsenter(ns), "ping", "-n", "-i", str(interval),
                                      address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            m = re.search(r"icmp_seq=(\d+) ttl=", line)
            with self._lock:
                if m:
                    self.received.add(int(m.group(1)))
                elif "icmp_seq=" in line:  # unreachable, redirect, ...: anything but a reply
                    self.errors.append(line.strip())

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def wait_replies(self, n: int, timeout: float = 10) -> None:
        """Until n more replies than now have come back."""
        target = self.count() + n
        until(lambda: self.count() >= target or self.proc.poll() is not None, timeout,
              f"{n} ping replies", 0.01)

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        with self._lock:
            last = max(self.received, default=0)
            lost = sorted(set(range(1, last + 1)) - self.received)
            return {"answered": len(self.received), "last_seq": last, "lost": lost,
                    "errors": list(self.errors)}
