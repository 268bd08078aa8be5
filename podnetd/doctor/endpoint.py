"""The probe endpoint: a network namespace the doctor creates and attaches through podnetd's
Attach RPC, so it is a pod like any other (veth on the bridge, address from IPAM, an entry in
the anti-spoofing set), and removes again (Detach, then the namespace) whatever happens."""
import contextlib
import os
import signal
import subprocess
import threading

from ..api.podnet.v1 import node_pb2
from ..ctl.client import CtlError, call

NETWORK = "podnet-doctor"
IFNAME = "eth0"


class EndpointError(Exception):
    pass


@contextlib.contextmanager
def _signals_held():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class ProbeEndpoint:
    def __init__(self, node_stub):
        self.stub = node_stub
        self.name = f"podnet-doctor-{os.getpid()}-{os.urandom(3).hex()}"
        self.netns_path = f"/run/netns/{self.name}"
        self.endpoint = None      # node_pb2.Endpoint once attached
        self._made_netns = False
        self.cleanup_errors: list[str] = []

    @property
    def address(self) -> str:
        return self.endpoint.address.split("/")[0]

    def __enter__(self) -> "ProbeEndpoint":
        try:
            self._ip("netns", "add", self.name)
            self._made_netns = True
            self._ip("-n", self.name, "link", "set", "lo", "up")
            try:
                resp = call(self.stub.Attach, node_pb2.AttachRequest(
                    container_id=self.name, ifname=IFNAME, netns=self.netns_path, network=NETWORK),
                    timeout=20)
            except CtlError as e:
                raise EndpointError(f"attach probe endpoint {self.name}: {e}") from None
            self.endpoint = resp.endpoint
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Detach (idempotent in podnetd) and delete the namespace; errors are kept, not raised,
        so one failing step does not leave the other undone. A second Ctrl-C or SIGTERM waits
        until the cleanup is done instead of cutting it short."""
        with _signals_held():
            self._close()

    def _close(self) -> None:
        if self._made_netns:
            try:
                call(self.stub.Detach, node_pb2.DetachRequest(
                    container_id=self.name, ifname=IFNAME, netns=self.netns_path), timeout=20)
            except CtlError as e:
                self.cleanup_errors.append(f"detach probe endpoint {self.name}: {e}")
            try:
                self._ip("netns", "del", self.name)
            except EndpointError as e:
                self.cleanup_errors.append(str(e))
            self._made_netns = False

    @staticmethod
    def _ip(*args: str) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        if proc.returncode != 0:
            raise EndpointError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
