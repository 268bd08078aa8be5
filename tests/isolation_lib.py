"""Helpers for the pod isolation tests (no tests here): frames built with scapy in the test
process and sent raw from inside a pod's netns, a raw-socket capture inside another netns that
stops at a marker (the positive control), and TCP listeners/connects inside namespaces."""
import json
import subprocess
import threading

from scapy.layers.l2 import Ether

from testlib import PY, REPO, in_ns

# Sends hex frames (argv) on an interface through an AF_PACKET socket, in order.
SEND_RAW = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for frame in sys.argv[2:]:
    s.send(bytes.fromhex(frame))
"""

# Sends hex IPv4 packets (argv, header included) through a raw IP socket, routed by the netns.
SEND_IP = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for packet in sys.argv[1:]:
    data = bytes.fromhex(packet)
    s.sendto(data, (socket.inet_ntoa(data[16:20]), 0))
"""

# Captures frames arriving on an interface until one holds the marker (or a deadline); prints
# "ready" once bound, then the captured frames as a JSON list of hex strings.
CAPTURE = r"""
import json, socket, sys, time
iface, marker, limit = sys.argv[1], bytes.fromhex(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.bind((iface, 0))
s.settimeout(0.2)
print("ready", flush=True)
frames, deadline = [], time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    frames.append(data.hex())
    if marker in data:
        break
print(json.dumps(frames), flush=True)
"""


def send_frames(ns: str, frames, iface: str = "eth0") -> None:
    """Send scapy frames, raw and in order, from inside ns."""
    in_ns(ns, PY, "-c", SEND_RAW, iface, *(bytes(f).hex() for f in frames), cwd=REPO)


def send_packets(ns: str, packets) -> None:
    """Send scapy IPv4 packets (any source address), routed by ns, in order."""
    in_ns(ns, PY, "-c", SEND_IP, *(bytes(p).hex() for p in packets), cwd=REPO)


class Capture:
    """Frames arriving on iface in ns, from construction until a frame holding `marker`
    arrives (a positive control the test sends last) or `limit` seconds pass."""

    def __init__(self, ns: str, iface: str, marker: bytes, limit: float = 20):
        self.marker = marker
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", PY, "-c", CAPTURE, iface,
                                      marker.hex(), str(limit)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"capture did not start: {line} {self.proc.stderr.read()}")

    def frames(self) -> list[Ether]:
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return [Ether(bytes.fromhex(h)) for h in json.loads(out.strip().splitlines()[-1])]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def with_marker(frames: list[Ether], marker: bytes) -> list[Ether]:
    return [f for f in frames if marker in bytes(f)]


# A TCP (and UDP) listener inside a netns: prints "ready", then one line per connection or
# datagram: "tcp <peer ip>" / "udp <peer ip>"; stops at EOF on stdin.
LISTEN = r"""
import selectors, socket, sys
port = int(sys.argv[1])
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", port)); tcp.listen(16)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", port))
sel = selectors.DefaultSelector()
for s in (tcp, udp, sys.stdin):
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is sys.stdin:
            sys.exit(0)
        if key.fileobj is tcp:
            conn, peer = tcp.accept()
            conn.sendall(b"hello\n"); conn.close()
            print("tcp", peer[0], flush=True)
        else:
            _, peer = udp.recvfrom(2048)
            print("udp", peer[0], flush=True)
"""


class Listener:
    """What reached a TCP+UDP port inside a netns: seen() = [(proto, peer ip)] so far."""

    def __init__(self, ns: str, port: int):
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", PY, "-c", LISTEN,
                                      str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"listener did not start: {line} {self.proc.stderr.read()}")
        self._seen: list[tuple[str, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip():
                self._seen.append(tuple(line.split()))

    def seen(self) -> list[tuple[str, str]]:
        return list(self._seen)

    def stop(self) -> list[tuple[str, str]]:
        """Everything that reached the listener."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        return self.seen()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# Connects over TCP (prints ok/refused/timeout/error) or sends one UDP datagram (prints sent).
CONNECT = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if proto == "udp":
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (host, port)); print("sent")
    sys.exit(0)
try:
    with socket.create_connection((host, port), timeout=float(sys.argv[4])) as c:
        print("ok" if c.recv(16) == b"hello\n" else "no greeting")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
except OSError as e:
    print("error", e.errno)
"""


def tcp_connect(ns: str, host: str, port: int, timeout: float = 5) -> str:
    return in_ns(ns, PY, "-c", CONNECT, "tcp", host, str(port), str(timeout)).stdout.strip()


def udp_send(ns: str, host: str, port: int) -> None:
    in_ns(ns, PY, "-c", CONNECT, "udp", host, str(port), "1")
