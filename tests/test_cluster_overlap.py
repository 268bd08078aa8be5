"""A cluster CIDR that overlaps the node's own networks is refused at start (exit 2, one line
naming both networks), read from the real kernel of a test namespace. podnet's own devices and
routes via a gateway are not the node's networks."""
import subprocess

import pytest

from podnetd.cluster.own_networks import first_overlap
from testlib import PY, REPO, in_ns, unique


def test_first_overlap_is_pure_and_ignores_other_families():
    nets = [("fd00::/64", "v6"), ("192.168.77.0/24", "underlay"), ("10.0.0.0/8", "big")]
    assert first_overlap("10.98.0.0/16", nets) == ("10.0.0.0/8", "big")
    assert first_overlap("192.168.0.0/16", nets) == ("192.168.77.0/24", "underlay")
    assert first_overlap("172.16.0.0/12", nets) is None


@pytest.fixture
def node(netns):
    """A node namespace: ul0 192.168.77.1/24 (a veth whose peer stays in the same namespace),
    an on-link route 10.55.3.0/24 and a route via a gateway to 10.66.0.0/24."""
    ns = netns.add("ov")
    peer = unique("p")
    in_ns(ns, "ip", "link", "add", "ul0", "type", "veth", "peer", "name", peer)
    for dev in ("lo", "ul0", peer):
        in_ns(ns, "ip", "link", "set", dev, "up")
    in_ns(ns, "ip", "addr", "add", "192.168.77.1/24", "dev", "ul0")
    in_ns(ns, "ip", "route", "add", "10.55.3.0/24", "dev", "ul0")
    in_ns(ns, "ip", "route", "add", "10.66.0.0/24", "via", "192.168.77.9", "proto", "static")
    return ns


def start(ns, tmp_path, cluster):
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", PY, "-m", "podnetd.main",
                           "--node-name", "n1", "--socket", str(tmp_path / "s.sock"),
                           "--state-dir", str(tmp_path / "state"), "--node-ip", "192.168.77.1",
                           "--cluster-cidr", cluster, "--pod-cidr", cluster.replace("/16", "/24"),
                           "--insecure-peers"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize("cluster,network,where", [
    ("192.168.0.0/16", "192.168.77.0/24", "address 192.168.77.1/24 on ul0"),
    ("10.55.0.0/16", "10.55.3.0/24", "on-link route 10.55.3.0/24 dev ul0"),
])
def test_cluster_cidr_overlapping_the_node_is_refused(node, tmp_path, cluster, network, where):
    proc = start(node, tmp_path, cluster)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"podnetd: error: --cluster-cidr {cluster} overlaps this node's network "
                           f"{network} ({where}): pod routes would shadow it; choose a cluster CIDR "
                           f"clear of the node's networks\n")
    # nothing was made
    assert "podnet0" not in in_ns(node, "ip", "-br", "link").stdout


def test_a_route_via_a_gateway_is_not_the_nodes_network(node, tmp_path):
    """Only the node's own (on-link) networks count: 10.66.0.0/24 via a gateway may be a pod
    CIDR's route someone made; that is the route owner's business (left alone, reported)."""
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{node}", PY, "-m", "podnetd.main",
                             "--node-name", "n1", "--socket", str(tmp_path / "s.sock"),
                             "--state-dir", str(tmp_path / "state"), "--node-ip", "192.168.77.1",
                             "--cluster-cidr", "10.66.0.0/16", "--pod-cidr", "10.66.1.0/24",
                             "--insecure-peers"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        for line in proc.stdout:
            if "serving on" in line or "error" in line:
                break
        assert "serving on" in line, line
    finally:
        proc.terminate()
        proc.wait(30)
        in_ns(node, PY, "-m", "podnetd.main", "--cleanup", check=False, cwd=REPO)
