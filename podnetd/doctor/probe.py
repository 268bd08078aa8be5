"""Crafted probes and captures (I/O): scapy builds and parses the packets; plain raw and packet
sockets, opened in whichever network namespace the calling thread is in, carry them.

One raw ICMP socket sends every probe of a round at once (all peers, all sizes) and collects
the answers until all came back or the timeout passed, so a round costs one timeout at most,
whatever the number of peers.
"""
import ctypes
import dataclasses
import os
import select
import socket
import struct
import threading
import time

from scapy.layers.inet import ICMP, IP, UDP, ICMPerror
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from .replies import Reply
from .vxlan import Encap

MARKER = b"podnet-doctor"
ETH_P_ALL = 0x0003
DAY_MS = 86_400_000


@dataclasses.dataclass(frozen=True)
class Probe:
    key: object
    src: str
    dst: str
    size: int = 64            # IP total length
    df: bool = True
    kind: str = "echo"        # "echo" | "timestamp"


def new_ident() -> int:
    return int.from_bytes(os.urandom(2), "big") or 1


def build(probe: Probe, ident: int, seq: int) -> bytes:
    ip = IP(src=probe.src, dst=probe.dst, flags="DF" if probe.df else 0, id=seq or 1)
    if probe.kind == "timestamp":
        return bytes(ip / ICMP(type=13, id=ident, seq=seq, ts_ori=_ms_of_day()))
    pad = max(0, probe.size - 28 - len(MARKER))
    return bytes(ip / ICMP(type=8, id=ident, seq=seq) / (MARKER + b"\0" * pad))


def _ms_of_day(t: float | None = None) -> int:
    return int((time.time() if t is None else t) * 1000) % DAY_MS


def _wrap(ms: float) -> float:
    """A difference of two times of day, folded into [-12 h, 12 h)."""
    return (ms + DAY_MS / 2) % DAY_MS - DAY_MS / 2


def parse_answer(data: bytes, ident: int) -> tuple[int, Reply] | None:
    """(seq, Reply) when data (an IPv4 packet) answers one of our probes."""
    try:
        pkt = IP(data)
    except Exception:  # noqa: BLE001 - anything on a raw socket; not ours then
        return None
    icmp = pkt.getlayer(ICMP)
    if icmp is None:
        return None
    if icmp.type in (0, 14) and icmp.id == ident:
        if icmp.type == 0:
            return icmp.seq, Reply("echo-reply", source=pkt.src)
        # skew_ms holds the peer's time of day for now; icmp_round subtracts ours
        return icmp.seq, Reply("timestamp", source=pkt.src, skew_ms=(icmp.ts_rx + icmp.ts_tx) / 2)
    if icmp.type == 3:
        inner = pkt.getlayer(ICMPerror)
        if inner is None or inner.id != ident:
            return None
        if icmp.code == 4:
            return inner.seq, Reply("frag-needed", source=pkt.src, next_hop_mtu=icmp.nexthopmtu)
        return inner.seq, Reply("unreachable", source=pkt.src, code=icmp.code)
    return None


def icmp_round(probes: list[Probe], timeout: float) -> dict:
    """Send every probe at once from this thread's netns; {probe.key: Reply or None}."""
    ident = new_ident()
    answers: dict = {p.key: None for p in probes}
    sent_at: dict[int, float] = {}
    by_seq: dict[int, Probe] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        for seq, probe in enumerate(probes, start=1):
            by_seq[seq] = probe
            sent_at[seq] = time.time()
            try:
                sock.sendto(build(probe, ident, seq), (probe.dst, 0))
            except OSError as e:
                answers[probe.key] = Reply("error", error=f"{e.strerror or e} ({probe.dst})")
        pending = {seq for seq, p in by_seq.items() if answers[p.key] is None}
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            data = sock.recv(65535)
            got = parse_answer(data, ident)
            if got is None or got[0] not in pending:
                continue
            seq, reply = got
            now = time.time()
            reply.rtt_ms = (now - sent_at[seq]) * 1000
            if reply.kind == "timestamp":
                reply.skew_ms = _wrap(reply.skew_ms - _ms_of_day((sent_at[seq] + now) / 2))
            answers[by_seq[seq].key] = reply
            pending.discard(seq)
    finally:
        sock.close()
    return answers


def send_frames(ifname: str, frames: list[bytes]) -> None:
    """Send raw Ethernet frames out of ifname in this thread's netns."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind((ifname, 0))
        for frame in frames:
            sock.send(frame)
    finally:
        sock.close()


def echo_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, ident: int, seq: int) -> bytes:
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip)
                 / ICMP(type=8, id=ident, seq=seq) / MARKER)


SO_ATTACH_FILTER = 26


def bpf_ipv4(proto: int, dport: int | None = None) -> list[tuple[int, int, int, int]]:
    """A classic BPF program passing IPv4 frames of protocol `proto` (and, for UDP, to dport;
    first fragments only): what `tcpdump -dd 'ip and udp dst port N'` compiles. On a busy
    uplink the kernel then hands this process only the few packets it looks for."""
    accept, drop = (0x06, 0, 0, 0x40000), (0x06, 0, 0, 0)
    head = [(0x28, 0, 0, 12),                 # ldh [12]          ethertype
            (0x15, 0, None, 0x0800),          # jeq IPv4
            (0x30, 0, 0, 23),                 # ldb [23]          protocol
            (0x15, 0, None, proto)]           # jeq proto
    if dport is None:
        body = [accept, drop]
    else:
        body = [(0x28, 0, 0, 20),             # ldh [20]          fragment offset
                (0x45, None, 0, 0x1FFF),      # jset 0x1fff -> drop
                (0xB1, 0, 0, 14),             # ldxb 4*([14]&0xf) IP header length
                (0x48, 0, 0, 16),             # ldh [x+16]        UDP destination port
                (0x15, 0, 1, dport),          # jeq dport
                accept, drop]
    prog = head + body
    last = len(prog) - 1                      # the drop
    return [(code, last - i - 1 if jt is None else jt, last - i - 1 if jf is None else jf, k)
            for i, (code, jt, jf, k) in enumerate(prog)]


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    raw = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Capture:
    """Packets seen on an interface of the calling thread's netns, kept when keep(frame) gives
    something; runs in its own thread between start() and stop(). program: a BPF filter that
    lets the kernel drop what keep() would not look at anyway."""

    def __init__(self, ifname: str, keep, program: list | None = None):
        self.ifname, self.keep, self.program = ifname, keep, program
        self.found: list = []
        self.error = ""
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "Capture":
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            if self.program:
                attach_filter(self._sock, self.program)
            self._sock.bind((self.ifname, 0))
        except OSError as e:
            self.error = f"capture on {self.ifname}: {e.strerror or e}"
            if self._sock:
                self._sock.close()
            self._sock = None
            return self
        self._thread = threading.Thread(target=self._loop, name=f"capture:{self.ifname}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        sock = self._sock
        while True:
            ready, _, _ = select.select([sock], [], [], 0.05)
            if ready:
                try:
                    frame = sock.recv(65535)
                except OSError:
                    continue
                item = self.keep(frame)
                if item is not None:
                    self.found.append(item)
            elif self._stop.is_set():
                return

    def stop(self) -> list:
        """Drain what is already queued, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self.found


def vxlan_keeper(port: int):
    """keep() for a Capture on the underlay: doctor probes inside VXLAN to `port`."""
    def keep(frame: bytes):
        if MARKER not in frame:
            return None
        try:
            pkt = Ether(frame)
            udp = pkt.getlayer(UDP)
            if udp is None or udp.dport != port:
                return None
            vx = VXLAN(bytes(udp.payload))
            inner = vx.getlayer(IP)
            if inner is None:
                return None
            return Encap(pkt[IP].src, pkt[IP].dst, udp.dport, vx.vni, inner.dst)
        except Exception:  # noqa: BLE001 - a malformed frame on the wire is not ours
            return None
    return keep


def echo_keeper(ident: int):
    """keep() for a Capture on the bridge: the seq of our echo requests that arrived."""
    def keep(frame: bytes):
        if MARKER not in frame:
            return None
        try:
            icmp = Ether(frame).getlayer(ICMP)
        except Exception:  # noqa: BLE001
            return None
        if icmp is not None and icmp.type == 8 and icmp.id == ident:
            return icmp.seq
        return None
    return keep
