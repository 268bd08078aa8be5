"""A TCP forwarder from the caller's loopback into a lab namespace.

The lab's underlay addresses exist only inside its namespaces (plan.py), so a client in the
host namespace (the demo, a test, a bench) cannot dial a node's cluster API directly. This
listens on 127.0.0.1:<free port> where the caller is and dials the target from inside the
namespace (a socket keeps the namespace it was made in); bytes are copied unchanged, so TLS
runs end to end between the client and the node."""
import contextlib
import socket
import threading

from ..kernel.netns import run_in_netns
from . import netops

BUF = 65536


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(BUF):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class Forwarder:
    def __init__(self, netns: str, host: str, port: int, connect_timeout: float = 3):
        self.netns, self.target, self.timeout = netns, (host, port), connect_timeout
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"fwd-{netns}").start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _dial(self) -> socket.socket:
        return run_in_netns(netops.ns_path(self.netns), socket.create_connection, self.target,
                            self.timeout)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self._dial()
        except Exception:  # noqa: BLE001 - refused, unreachable, namespace gone: the client sees EOF
            client.close()
            return
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._conns |= {client, upstream}
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        with self._lock:
            self._conns -= {client, upstream}
        client.close()
        upstream.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
