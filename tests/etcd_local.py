"""A real etcd (Debian's etcd-server) for tests that need no network namespace: on free loopback
ports, a temp data dir, TLS with a client certificate from a test CA (podnetd.lab.pki), killed by
PID. Restartable on the same data dir and ports (a test of etcd going away and coming back)."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest

from podnetd.lab import pki
from testlib import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalEtcd:
    def __init__(self, max_request_bytes: int = 5 * 1024 * 1024, netns: str | None = None):
        # netns: run etcd (and etcdctl) inside that network namespace, where a podnetd under
        # test reaches it on its own loopback
        self.prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        self.dir = tempfile.mkdtemp(prefix="podnet-etcd-local-")
        self.client_port, self.peer_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.client_port}"
        self.max_request_bytes = max_request_bytes
        self.proc: subprocess.Popen | None = None
        self.ca, ca_key = pki.make_ca(os.path.join(self.dir, "ca"), "etcd-local")
        self.cert, self.key = pki.make_node_cert(os.path.join(self.dir, "server"), self.ca, ca_key,
                                                 "etcd", "127.0.0.1")
        self.client_cert, self.client_key = pki.make_node_cert(
            os.path.join(self.dir, "client"), self.ca, ca_key, "client", "127.0.0.1")
        self.tls = (self.ca, self.client_cert, self.client_key)

    def start(self) -> "LocalEtcd":
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(os.path.join(self.dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, "etcd", "--name", "podnet-test", "--data-dir", os.path.join(self.dir, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"podnet-test={peer}",
             "--cert-file", self.cert, "--key-file", self.key, "--trusted-ca-file", self.ca,
             "--client-cert-auth", "--max-request-bytes", str(self.max_request_bytes),
             "--logger", "zap", "--log-outputs", "stderr"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(lambda: self.proc.poll() is not None
                 or self.ctl("endpoint", "health", check=False).returncode == 0, 30,
                 interval=0.2, what="etcd healthy")
        assert self.proc.poll() is None, f"etcd exited: {self.log_tail()}"
        return self

    def log_tail(self) -> str:
        with open(os.path.join(self.dir, "etcd.log"), errors="replace") as f:
            return f.read()[-3000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a test may have frozen it
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.prefix, "etcdctl", f"--endpoints={self.url}", "--cacert", self.ca, "--cert", self.client_cert,
             "--key", self.client_key, "--command-timeout=5s", *args],
            check=check, capture_output=True, text=True, timeout=30,
            env={**os.environ, "ETCDCTL_API": "3"})

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_etcd():
    """One LocalEtcd for a test module (import this name into the module to use it)."""
    etcd = LocalEtcd()
    try:
        etcd.start()
        yield etcd
    finally:
        etcd.cleanup()
