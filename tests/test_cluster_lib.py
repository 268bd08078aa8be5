"""Helpers for the cluster tests (no tests here): a small underlay made in the test itself
(a hub netns holding a bridge, one veth per node), podnetds with cluster flags, and kernel
inspection of a node. Everything carries the run's unique prefix and is removed by fixtures."""
import json
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from testlib import PY, REPO, Daemon, cni_add, in_ns, sh, unique, wait_for

PROTO = 0x6E


class Underlay:
    """A hub namespace with one bridge per subnet; nodes hang off it by veth. Subnet i is
    192.168.(200+i).0/24; with routed=True the hub also routes between the subnets (so nodes
    on different subnets reach each other through a router: host-gw impossible)."""

    def __init__(self, netns, subnets: int = 1, routed: bool = False):
        self.netns = netns
        self.hub = netns.add("hub")
        self.count = {}
        for i in range(subnets):
            br = f"br{i}"
            in_ns(self.hub, "ip", "link", "add", br, "type", "bridge")
            in_ns(self.hub, "ip", "link", "set", br, "up")
            if routed:
                in_ns(self.hub, "ip", "addr", "add", f"192.168.{200 + i}.254/24", "dev", br)
            self.count[i] = 0
        if routed:
            in_ns(self.hub, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.routed = routed

    def add_node(self, subnet: int = 0) -> tuple[str, str]:
        """A node netns with ul0 on the subnet; returns (netns, underlay ip)."""
        node = self.netns.add("nd")
        self.count[subnet] += 1
        ip = f"192.168.{200 + subnet}.{self.count[subnet]}"
        hub_end = unique("h")
        sh("ip", "link", "add", hub_end, "netns", self.hub, "type", "veth", "peer", "name", "ul0",
           "netns", node)
        in_ns(self.hub, "ip", "link", "set", hub_end, "master", f"br{subnet}", "up")
        in_ns(node, "ip", "addr", "add", f"{ip}/24", "dev", "ul0")
        in_ns(node, "ip", "link", "set", "ul0", "up")
        if self.routed:
            in_ns(node, "ip", "route", "add", "default", "via", f"192.168.{200 + subnet}.254")
        return node, ip


class ClusterDaemon(Daemon):
    """testlib.Daemon with cluster flags; pod_cidr None leaves the CIDR to the store."""

    def __init__(self, netns, pod_cidr, *, node_ip, cluster_cidr="10.99.0.0/16", peers=(),
                 extra=(), listen_port=7946, **kw):
        super().__init__(netns, pod_cidr or "", **kw)
        self.node_ip = node_ip
        self.listen = f"{node_ip}:{listen_port}"
        # node_ip=None: podnetd finds it (default-route interface) and listens on it:7946
        # The static store needs mutual TLS; tests that do not give certificates say so.
        insecure = "etcd" not in extra and "--tls-cert" not in extra
        self.cluster_extra = [*(["--node-ip", node_ip, "--listen", self.listen] if node_ip else []),
                              *(["--insecure-peers"] if insecure else []),
                              "--cluster-cidr", cluster_cidr, "--reconcile-interval", "1",
                              *(["--peers", ",".join(peers)] if peers else []), *extra]

    def start(self, timeout: float = 15, ready: bool = True) -> "ClusterDaemon":
        if ready:
            return super().start(timeout)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO)
        log.close()
        wait_for(lambda: os.path.exists(self.socket) or self.proc.poll() is not None, timeout,
                 what=f"podnetd socket in {self.netns}")
        assert self.proc.poll() is None, self.log()
        return self

    def argv(self):
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", PY, "-m", "podnetd.main",
                "--node-name", self.node_name, "--socket", self.socket,
                "--state-dir", self.state_dir, *self.cluster_extra, *self.extra]
        if self.pod_cidr:
            argv += ["--pod-cidr", self.pod_cidr]
        return argv

    def ctl(self, *args) -> dict | list:
        proc = subprocess.run([PY, "-c", CTL, self.socket, *args], capture_output=True, text=True,
                              cwd=REPO, timeout=30)
        if proc.returncode != 0:
            raise AssertionError(f"Cluster RPC {args} failed: {proc.stderr}")
        return json.loads(proc.stdout)

    def nodes(self) -> dict:
        return {n["name"]: n for n in self.ctl("nodes").get("nodes", [])}

    def entries(self) -> list[dict]:
        return self.ctl("routes").get("entries", [])


# A tiny client of podnet.v1.ClusterService: the views as podnetctl -o json prints them (enums as
# words, heartbeat_age as a Duration string).
CTL = r"""
import json, sys, grpc
from podnetd.api.podnet.v1 import cluster_pb2, cluster_pb2_grpc
from podnetd.apiconv import message_dict
stub = cluster_pb2_grpc.ClusterServiceStub(grpc.insecure_channel("unix://" + sys.argv[1]))
if sys.argv[2] == "nodes":
    r = stub.ListNodes(cluster_pb2.ListNodesRequest(), timeout=10)
else:
    r = stub.ListRoutes(cluster_pb2.ListRoutesRequest(), timeout=10)
print(json.dumps(message_dict(r, defaults=False)))
"""


def routes(node: str) -> dict:
    """Routes of the node's main table with our protocol: {dst: route}."""
    out = json.loads(in_ns(node, "ip", "-j", "route", "show", "proto", str(PROTO)).stdout)
    return {r["dst"]: r for r in out}


def all_routes(node: str) -> list[dict]:
    return json.loads(in_ns(node, "ip", "-j", "route", "show").stdout)


def neighbours(node: str, dev: str = "podnet.vxlan") -> dict:
    out = json.loads(in_ns(node, "ip", "-j", "neigh", "show", "dev", dev).stdout)
    return {n["dst"]: n for n in out}


def fdb(node: str, dev: str = "podnet.vxlan") -> dict:
    out = json.loads(in_ns(node, "bridge", "-j", "fdb", "show", "dev", dev).stdout)
    return {f["mac"]: f for f in out if f.get("dst")}


def add_pod(daemon, pod_ns: str, cid: str) -> str:
    """Attach a pod through the real plugin; return its address (no prefix)."""
    rc, result, err = cni_add(daemon, pod_ns, cid)
    assert rc == 0, (result, err, daemon.log()[-3000:])
    return result["ips"][0]["address"].split("/")[0]


@pytest.fixture
def cluster(netns):
    """Factory: cluster(node_ip=..., pod_cidr=..., ...) starts a ClusterDaemon; all stopped
    and their node state removed (podnetd --cleanup) at the end."""
    started: list[ClusterDaemon] = []

    def start(node, pod_cidr, ready=True, **kw):
        d = ClusterDaemon(node, pod_cidr, **kw)
        started.append(d)
        return d.start(ready=ready)

    yield start
    for d in reversed(started):
        d.cleanup()
        in_ns(d.netns, PY, "-m", "podnetd.main", "--cleanup", check=False, cwd=REPO)


def make_pki(directory: str, names_ips: list[tuple[str, str]], ca_name: str = "ca") -> dict:
    """A CA and one cert per node (SAN IP = its underlay address) with the openssl CLI."""
    def ossl(*args):
        sh("openssl", *args)
    ca_key, ca_crt = f"{directory}/{ca_name}.key", f"{directory}/{ca_name}.crt"
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", ca_key, "-out", ca_crt, "-days", "2", "-subj", f"/CN=podnet test {ca_name}")
    out = {"ca": ca_crt}
    for name, ip in names_ips:
        key, csr, crt = (f"{directory}/{ca_name}-{name}.{x}" for x in ("key", "csr", "crt"))
        ext = f"{directory}/{ca_name}-{name}.ext"
        with open(ext, "w") as f:
            f.write(f"subjectAltName=IP:{ip},DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth\n")
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        ossl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
             "-out", crt, "-days", "2", "-extfile", ext)
        out[name] = ["--tls-cert", crt, "--tls-key", key, "--tls-ca", ca_crt]
    return out


__all__ = ["Underlay", "ClusterDaemon", "routes", "neighbours", "fdb", "add_pod", "cluster",
           "wait_for", "in_ns", "unique", "sh", "signal", "os", "shutil", "tempfile"]


SNIFF = r"""
import json, sys
from scapy.all import AsyncSniffer, bind_layers, raw
from scapy.layers.inet import IP, UDP, ICMP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
iface, port = sys.argv[1], int(sys.argv[2])
bind_layers(UDP, VXLAN, dport=port)
s = AsyncSniffer(iface=iface, store=True, started_callback=lambda: print("ready", flush=True))
s.start()
sys.stdin.readline()
s.stop()
out = []
for p in s.results or []:
    d = {"src_mac": p[Ether].src if Ether in p else None}
    if IP in p:
        d.update(src=p[IP].src, dst=p[IP].dst, proto=p[IP].proto)
    if VXLAN in p:
        inner = p[VXLAN].payload
        d["vni"] = p[VXLAN].vni
        d["dport"] = p[UDP].dport
        if IP in inner:
            d.update(inner_src=inner[IP].src, inner_dst=inner[IP].dst)
    elif ICMP in p:
        d["payload"] = raw(p[ICMP].payload).decode("latin-1")
    if ARP in p:
        d.update(arp_op=p[ARP].op, arp_psrc=p[ARP].psrc, arp_hwsrc=p[ARP].hwsrc)
    out.append(d)
print(json.dumps(out), flush=True)
"""


class Sniffer:
    """scapy capturing on iface inside a netns, from start() until stop() (returns packets)."""

    def __init__(self, ns: str, iface: str, vxlan_port: int = 8472):
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", PY, "-c", SNIFF, iface,
                                      str(vxlan_port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"sniffer did not start: {line} {self.proc.stderr.read()}")

    def stop(self) -> list[dict]:
        out, err = self.proc.communicate("\n", timeout=30)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


SEND = r"""
import sys
from scapy.all import sendp, conf
from scapy.layers.inet import IP, ICMP
from scapy.layers.l2 import ARP, Ether
conf.verb = 0
kind, src_mac, dst_mac, src_ip, dst_ip, payload = sys.argv[1:7]
if kind == "icmp":
    frame = Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / ICMP() / payload.encode()
else:  # an unsolicited ARP reply claiming src_ip is at src_mac
    frame = Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=2, hwsrc=src_mac, psrc=src_ip,
                                                              hwdst="ff:ff:ff:ff:ff:ff", pdst=dst_ip)
sendp(frame, iface="eth0", count=3)
"""


def send_frame(pod_ns: str, kind: str, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str,
               payload: str = "") -> None:
    """Craft and send a frame with scapy from inside the pod's netns."""
    in_ns(pod_ns, PY, "-c", SEND, kind, src_mac, dst_mac, src_ip, dst_ip, payload, cwd=REPO)
