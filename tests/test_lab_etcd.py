"""The etcd store in the lab (a real etcd 3.4 in its own namespace on a lab address, serving
clients over TLS with client-certificate auth from the lab CA): leased pod CIDRs, pods keep
talking while etcd is down, a node joining after etcd's return is seen, a restarted node keeps
its block, a departed node's lease expires and its routes go, a route podnet did not make is
left alone."""
import json
import signal
import subprocess

import pytest

from podnetd.api.podnet.v1 import cluster_pb2
from podnetd.lab import netops, pods, probe
from testlib import routed_lab_with_pods

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


def test_departed_node_lease_expires(lab):
    new = lab.add_node()
    cidr = lab.st.nodes[new]["pod_cidr"]
    probe.until(lambda: lab.missing_routes() == {}, 20, f"every node routes to {new}")
    lab.remove_node(new)
    probe.until(lambda: not routed_by(lab, cidr), NODE_TIMEOUT + 15,
                f"routes to departed {new} withdrawn once its lease expired")
    assert lab.missing_routes() == {}


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
