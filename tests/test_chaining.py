"""podnet as the first plugin of a conflist, followed by the reference portmap, tuning and
bandwidth plugins (Debian's binaries), driven with libcni semantics (tests/cni_chain.py) from
inside the node netns. Each peer must really act on podnet's result, and DEL of the chain must
leave nothing behind."""
import glob
import json
import shutil
import subprocess
import tempfile

import pytest

from cni_chain import Chain, ChainError, fetch, make_bin_dir, nat_rules
from cni_chain import podnet_endpoints as endpoints
from testlib import PY, in_ns, links_in, ns_path, unique, wait_for

HOST_PORT, POD_PORT = 18080, 8080
TUNED_MAC = "0a:58:0a:4d:00:aa"
TUNED_MTU = 1400
SOMAXCONN = "517"
RATE = 10_000_000   # bits/s
BURST = 2_000_000   # bits


@pytest.fixture
def bin_dir():
    path = tempfile.mkdtemp(prefix=f"{unique('b')}-")
    yield make_bin_dir(path)
    shutil.rmtree(path, ignore_errors=True)


def conflist(daemon, version: str) -> dict:
    return {
        "cniVersion": version,
        "name": "podnet-chain",
        "plugins": [
            {"type": "podnet", "socket": daemon.cni_socket},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "tuning", "mtu": TUNED_MTU, "mac": TUNED_MAC,
             "sysctl": {"net.core.somaxconn": SOMAXCONN}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    }


# portmap 1.1.1 (Debian bookworm) CHECK always looks for an IPv6 DNAT chain, so it fails for
# any IPv4-only pod: containernetworking/plugins#819. Its IPv4 rules are checked directly here.
PORTMAP_CHECK_BUG = {"portmap": "could not check ipv6 dnat"}

CAPS = {
    "portMappings": [{"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}],
    "bandwidth": {"ingressRate": RATE, "ingressBurst": BURST,
                  "egressRate": RATE, "egressBurst": BURST},
}


class HttpServer:
    """python's http.server inside a pod netns, serving one file with a unique token."""

    def __init__(self, pod_ns: str, port: int):
        self.dir = tempfile.mkdtemp(prefix=f"{unique('w')}-")
        self.token = unique("tok")
        with open(f"{self.dir}/token", "w") as f:
            f.write(self.token)
        self.pod_ns, self.port = pod_ns, port
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={ns_path(pod_ns)}", PY, "-m", "http.server", str(port),
             "--bind", "0.0.0.0", "--directory", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_listening(self, timeout: float = 10) -> None:
        probe = ("import socket,sys,time\n"
                 "end=time.monotonic()+float(sys.argv[2])\n"
                 "while time.monotonic()<end:\n"
                 "  try: socket.create_connection(('127.0.0.1',int(sys.argv[1])),0.2).close()\n"
                 "  except OSError: time.sleep(0.05); continue\n"
                 "  sys.exit(0)\n"
                 "sys.exit(1)\n")
        in_ns(self.pod_ns, PY, "-c", probe, str(self.port), str(timeout))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def external_client(netns, node_ns: str) -> tuple[str, str]:
    """A client netns wired to the node by a veth, as a machine on the node's LAN:
    returns (client netns, the node's address on that link)."""
    client = netns.add("c")
    node_if, client_if = unique("v"), unique("v")
    in_ns(node_ns, "ip", "link", "add", node_if, "type", "veth", "peer", "name", client_if,
          "netns", ns_path(client))
    in_ns(node_ns, "ip", "addr", "add", "192.0.2.1/24", "dev", node_if)
    in_ns(node_ns, "ip", "link", "set", node_if, "up")
    in_ns(client, "ip", "addr", "add", "192.0.2.2/24", "dev", client_if)
    in_ns(client, "ip", "link", "set", client_if, "up")
    in_ns(client, "ip", "route", "add", "default", "via", "192.0.2.1")
    return client, "192.0.2.1"


def qdiscs(ns: str, dev: str) -> list[dict]:
    return json.loads(in_ns(ns, "tc", "-j", "qdisc", "show", "dev", dev).stdout or "[]")


def pod_link(pod: str, ifname: str = "eth0") -> dict:
    return json.loads(in_ns(pod, "ip", "-j", "link", "show", ifname).stdout)[0]


@pytest.mark.parametrize("version", ["1.0.0", "0.4.0", "0.3.1"])
def test_chain_peers_act_on_podnet_result(daemon, netns, bin_dir, version):
    pod = netns.add("p")
    chain = Chain(conflist(daemon, version), [bin_dir], runtime_netns=daemon.netns)
    cid = unique("cid")
    server = None
    try:
        result = chain.add(cid, ns_path(pod), "eth0", CAPS)
        assert result["cniVersion"] == version
        address = result["ips"][0]["address"].split("/")[0]
        host_if = result["interfaces"][1]["name"]
        pod_if = [i for i in result["interfaces"] if i.get("sandbox")]
        assert pod_if and pod_if[0]["name"] == "eth0"

        # tuning: MTU, MAC and a netns sysctl changed inside the pod, and the result says so
        link = pod_link(pod)
        assert link["mtu"] == TUNED_MTU and link["address"] == TUNED_MAC
        assert pod_if[0]["mac"] == TUNED_MAC
        assert in_ns(pod, "cat", "/proc/sys/net/core/somaxconn").stdout.strip() == SOMAXCONN

        # bandwidth: tbf on the host veth (traffic into the pod) and, for traffic out of the
        # pod, an ingress qdisc on the host veth redirecting to an ifb that carries a tbf
        host_q = qdiscs(daemon.netns, host_if)
        tbf = [q for q in host_q if q["kind"] == "tbf"]
        assert tbf and tbf[0]["options"]["rate"] == RATE // 8, host_q
        assert any(q["kind"] == "ingress" for q in host_q), host_q
        ifbs = [l for l in json.loads(in_ns(daemon.netns, "ip", "-d", "-j", "link").stdout)
                if l.get("linkinfo", {}).get("info_kind") == "ifb"]
        assert len(ifbs) == 1
        assert any(q["kind"] == "tbf" for q in qdiscs(daemon.netns, ifbs[0]["ifname"]))

        # portmap: the host port reaches a server in the pod, from the node itself (OUTPUT)
        # and from a machine on the node's LAN (PREROUTING)
        server = HttpServer(pod, POD_PORT)
        server.wait_listening()
        gateway = result["ips"][0]["gateway"]
        assert fetch(daemon.netns, f"http://{gateway}:{HOST_PORT}/token") == server.token
        client, node_addr = external_client(netns, daemon.netns)
        assert fetch(client, f"http://{node_addr}:{HOST_PORT}/token") == server.token
        assert fetch(client, f"http://{address}:{POD_PORT}/token") == server.token  # plain route
        assert f"--to-destination {address}:{POD_PORT}" in nat_rules(daemon.netns)

        if version != "0.3.1":  # CHECK exists from 0.4.0 on
            chain.check(cid, ns_path(pod), "eth0", known_bugs=PORTMAP_CHECK_BUG)
    finally:
        if server:
            server.stop()
        chain.delete(cid, ns_path(pod), "eth0", CAPS)

    # DEL of the chain leaves nothing: no record, no veth, no ifb, no DNAT, no tuning state
    wait_for(lambda: not any(cid in json.dumps(e) for e in endpoints(daemon)),
             what="address released")
    node_links = json.loads(in_ns(daemon.netns, "ip", "-d", "-j", "link").stdout)
    assert not any(l["ifname"] == host_if for l in node_links)
    assert not any(l.get("linkinfo", {}).get("info_kind") == "ifb" for l in node_links)
    assert not any(l["ifname"] == "eth0" for l in links_in(pod))
    rules = nat_rules(daemon.netns)
    assert address not in rules and "CNI-DN-" not in rules, rules
    assert str(HOST_PORT) not in rules, rules
    assert fetch(daemon.netns, f"http://{gateway}:{HOST_PORT}/token") is None
    # tuning keeps the pod's original settings under /run/cni/tuning until DEL
    assert not [f for f in glob.glob("/run/cni/tuning/*") if cid in f]
    # a second DEL of the whole chain (runtime retry) succeeds
    chain.delete(cid, ns_path(pod), "eth0", CAPS)


def test_chain_check_detects_a_removed_address(daemon, netns, bin_dir):
    """CHECK runs podnet first: drift it can see fails the chain with podnet's error."""
    pod = netns.add("p")
    chain = Chain(conflist(daemon, "1.0.0"), [bin_dir], runtime_netns=daemon.netns)
    cid = unique("cid")
    try:
        result = chain.add(cid, ns_path(pod), "eth0", CAPS)
        chain.check(cid, ns_path(pod), "eth0", known_bugs=PORTMAP_CHECK_BUG)
        in_ns(pod, "ip", "addr", "del", result["ips"][0]["address"], "dev", "eth0")
        with pytest.raises(ChainError) as failed:
            chain.check(cid, ns_path(pod), "eth0", known_bugs=PORTMAP_CHECK_BUG)
        assert failed.value.plugin == "podnet" and "lacks" in failed.value.result["details"]
    finally:
        chain.delete(cid, ns_path(pod), "eth0", CAPS)
    wait_for(lambda: not endpoints(daemon), what="address released")


def test_chain_add_failure_in_a_peer_then_del_cleans(daemon, netns, bin_dir):
    """A peer failing after podnet's ADD (a bad tuning sysctl) fails the ADD; the runtime's DEL
    of the chain then releases podnet's address and link."""
    pod = netns.add("p")
    conf = conflist(daemon, "1.0.0")
    conf["plugins"][2]["sysctl"] = {"net.no.such.knob": "1"}
    chain = Chain(conf, [bin_dir], runtime_netns=daemon.netns)
    cid = unique("cid")
    with pytest.raises(ChainError) as failed:
        chain.add(cid, ns_path(pod), "eth0", CAPS)
    assert failed.value.plugin == "tuning"
    assert len(endpoints(daemon)) == 1  # podnet's part is in place until the runtime DELs
    chain.delete(cid, ns_path(pod), "eth0", CAPS)
    wait_for(lambda: not endpoints(daemon), what="address released")
    assert not any(l["ifname"] == "eth0" for l in links_in(pod))
    assert "CNI-DN-" not in nat_rules(daemon.netns)
