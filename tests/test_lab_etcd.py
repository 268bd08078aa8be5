"""The etcd store in the lab (a real etcd 3.4 in its own namespace on a lab address, serving
clients over TLS with client-certificate auth from the lab CA): leased pod CIDRs, pods keep
talking while etcd is down, a node joining after etcd's return is seen, a restarted node keeps
its block, a node cut from etcd alone is NotReady and stays routed, a departed node keeps its
block until its claim goes, a route podnet did not make is left alone."""
import json
import signal
import subprocess
import time

import pytest

from podnetd.api.podnet.v1 import cluster_pb2
from podnetd.lab import netops, plan, pods, probe
from testlib import routed_lab_with_pods, unique

NODE_TIMEOUT = 3


@pytest.fixture(scope="module")
def lab():
    with routed_lab_with_pods("etcd", "E", NODE_TIMEOUT) as lb:
        yield lb


def routed_by(lab, cidr: str) -> list[str]:
    return [n for n in lab.node_names() if cidr in probe.route_dsts(lab.netns(n))]


def test_etcd_outage_then_a_late_joiner(lab):
    ps = pods.pods(lab)
    pings = {dst: probe.ContinuousPing(ps["n1/p1"]["netns"], ps[dst]["address"])
             for dst in ("n2/p1", "n3/p1")}
    try:
        for p in pings.values():
            p.wait_replies(20)
        lab.stop_etcd()
        # Longer than the node timeout (the lease TTL): nothing may be withdrawn meanwhile.
        for p in pings.values():
            p.wait_replies(100 * (NODE_TIMEOUT + 2), timeout=30)
        assert lab.missing_routes() == {}
        lab.start_etcd()
        new = lab.add_node()
        probe.until(lambda: lab.missing_routes() == {}, 20, f"every node routes to {new} and back")
        key = pods.add_pod(lab, new)
        assert probe.ping(pods.pods(lab)[key]["netns"], ps["n1/p1"]["address"]).returncode == 0
        for p in pings.values():
            p.wait_replies(20)
    finally:
        results = {dst: p.stop() for dst, p in pings.items()}
    for dst, r in results.items():
        assert r["lost"] == [] and r["errors"] == [], (dst, r)


def test_restarted_node_gets_its_block_back(lab):
    before = lab.st.nodes["n2"]["pod_cidr"]
    lab.stop_daemon("n2", signal.SIGKILL)
    lab.start_daemon("n2")
    assert lab.st.nodes["n2"]["pod_cidr"] == before
    ps = pods.pods(lab)
    assert probe.ping(ps["n3/p1"]["netns"], ps["n2/p1"]["address"]).returncode == 0


def status(lab, viewer: str, node: str):
    """node's status (cluster_pb2.NodeStatus) as viewer's podnetd sees it, None when unlisted."""
    nodes, _ = lab.cluster_view(viewer)
    return {n.name: n.status for n in nodes.nodes}.get(node) if nodes else None


def etcdctl(lab, *args) -> str:
    return subprocess.run([*netops.nsenter(f"{lab.st.name}-etcd"), "etcdctl", "--endpoints",
                           lab.etcd_endpoint, *lab.etcdctl_tls(), *args], capture_output=True,
                          text=True, check=True).stdout


def test_a_node_cut_from_etcd_alone_is_not_ready_and_stays_routed(lab):
    """Only n3 loses etcd (its underlay works): an nftables rule in n3's namespace drops its TCP
    to etcd for three node timeouts while a pod on n1 pings a pod on n3. n3 turns NotReady in
    n1's view (and its own), nobody withdraws its route, no reply is lost; once the rule is
    gone n3 is Ready again. (Before the claim/liveness split, n1 withdrew n3's route when n3's
    lease expired and the ping lost every packet of the outage.)"""
    ps, ns3 = pods.pods(lab), lab.netns("n3")
    cidr = lab.st.nodes["n3"]["pod_cidr"]
    table = unique("cut")
    nft = [*netops.nsenter(ns3), "nft"]
    etcd_ip = plan.etcd_address(lab.st.name, lab.st.topology)
    probe.until(lambda: status(lab, "n1", "n3") == cluster_pb2.NODE_STATUS_READY, 20, "n3 Ready")
    pinging = probe.ContinuousPing(ps["n1/p1"]["netns"], ps["n3/p1"]["address"])
    try:
        pinging.wait_replies(20)
        subprocess.run([*nft, "-f", "-"], check=True, text=True, input=(
            f"table inet {table} {{\n chain out {{\n  type filter hook output priority 0;\n"
            f"  ip daddr {etcd_ip} tcp dport {plan.ETCD_PORT} drop\n }}\n}}\n"))
        cut_at = time.monotonic()
        try:
            probe.until(lambda: status(lab, "n1", "n3") == cluster_pb2.NODE_STATUS_NOT_READY,
                        NODE_TIMEOUT + 10, "n1 sees n3 NotReady")
            probe.until(lambda: status(lab, "n3", "n3") == cluster_pb2.NODE_STATUS_NOT_READY,
                        NODE_TIMEOUT + 10, "n3 sees itself NotReady")
            while time.monotonic() - cut_at < 3 * NODE_TIMEOUT:
                assert {"n1", "n2"} <= set(routed_by(lab, cidr)), "a route to n3 was withdrawn"
                time.sleep(0.5)
            assert "unreachable" in lab.cluster_view("n3")[0].problem
        finally:
            subprocess.run([*nft, "delete", "table", "inet", table], check=True)
        probe.until(lambda: status(lab, "n1", "n3") == cluster_pb2.NODE_STATUS_READY, 20,
                    "n3 Ready again in n1's view")
        probe.until(lambda: not lab.cluster_view("n3")[0].problem, 20, "n3's store problem gone")
        pinging.wait_replies(20)
    finally:
        result = pinging.stop()
    assert result["lost"] == [] and result["errors"] == [], result
    # at 100 pings a second over more than 3 node timeouts; far fewer would not show an outage
    assert result["answered"] >= 300, result
    assert lab.missing_routes() == {}


def test_departed_node_stays_routed_until_its_claim_goes(lab):
    new = lab.add_node()
    cidr = lab.st.nodes[new]["pod_cidr"]
    probe.until(lambda: lab.missing_routes() == {}, 20, f"every node routes to {new}")
    lab.remove_node(new)
    probe.until(lambda: status(lab, "n1", new) == cluster_pb2.NODE_STATUS_NOT_READY,
                NODE_TIMEOUT + 10, f"departed {new} NotReady")
    time.sleep(NODE_TIMEOUT)
    assert routed_by(lab, cidr) == lab.node_names(), "a NotReady node's routes were withdrawn"
    # its claim expires (here: its lease revoked, as 24 h without renewal would end it)
    key = "/podnet/nodes/" + cidr.replace(".", "-").replace("/", "-")
    lease = json.loads(etcdctl(lab, "get", key, "-w", "json"))["kvs"][0]["lease"]
    etcdctl(lab, "lease", "revoke", format(lease, "x"))
    probe.until(lambda: not routed_by(lab, cidr), 15,
                f"routes to departed {new} withdrawn once its claim expired")
    assert status(lab, "n1", new) is None and lab.missing_routes() == {}
    assert json.loads(etcdctl(lab, "get", key, "-w", "json")).get("kvs") is None


def test_etcd_serves_only_clients_with_a_lab_certificate(lab):
    assert lab.etcd_endpoint.startswith("https://")
    ns = f"{lab.st.name}-etcd"
    ca = lab.etcdctl_tls()[:2]  # --cacert only: the server is trusted, the client brings nothing

    def etcdctl(*tls):
        return subprocess.run([*netops.nsenter(ns), "etcdctl", "--endpoints", lab.etcd_endpoint, *tls,
                               "--dial-timeout", "2s", "--command-timeout", "3s", "get", "--prefix",
                               "/podnet/nodes/", "--keys-only"], capture_output=True, text=True)
    refused = etcdctl(*ca)
    assert refused.returncode != 0, refused.stdout
    allowed = etcdctl(*lab.etcdctl_tls())
    assert allowed.returncode == 0 and allowed.stdout.count("/podnet/nodes/") == len(lab.node_names())


def _route(ns: str, dst: str) -> list[dict]:
    out = subprocess.run([*netops.nsenter(ns), "ip", "-j", "route", "show", dst], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def test_a_route_podnet_did_not_make_is_left_alone(lab):
    """An admin's route to a peer's pod CIDR (iproute2's default protocol, boot) in a lab node:
    podnetd neither replaces nor removes it, and says so in ListRoutes and ListNodes."""
    ns, cidr = lab.netns("n1"), lab.st.nodes["n2"]["pod_cidr"]
    via = _route(ns, cidr)[0]  # podnet's own route: the admin's copies its next hop
    assert via["protocol"] == "110"
    netops_argv = [*netops.nsenter(ns), "ip", "route"]
    subprocess.run([*netops_argv, "del", cidr, "proto", "110"], check=True)
    subprocess.run([*netops_argv, "add", cidr, "via", via["gateway"], "dev", via["dev"],
                    *(["onlink"] if "onlink" in via.get("flags", []) else [])], check=True)
    try:
        def reported():
            nodes, routes = lab.cluster_view("n1")
            entry = [e for e in routes.entries
                     if e.destination == cidr and e.kind == cluster_pb2.ENTRY_KIND_ROUTE]
            n2 = [n for n in nodes.nodes if n.name == "n2"]
            return (entry and entry[0].state == cluster_pb2.ENTRY_STATE_FOREIGN
                    and n2 and "proto boot" in n2[0].problem)
        probe.until(reported, 20, "the foreign route reported by n1")
        assert [r.get("protocol", "boot") for r in _route(ns, cidr)] == ["boot"]
        ps = pods.pods(lab)  # still routed, by the admin's route
        assert probe.ping(ps["n1/p1"]["netns"], ps["n2/p1"]["address"]).returncode == 0
    finally:
        subprocess.run([*netops_argv, "del", cidr, "proto", "boot"], check=False)
    probe.until(lambda: [r.get("protocol", "boot") for r in _route(ns, cidr)] == ["110"], 20,
                "podnet's route back once the admin's is gone")
