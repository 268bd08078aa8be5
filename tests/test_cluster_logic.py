"""Pure logic of the cluster feature: record merging, CIDR conflicts, backend choice, entry
ordering and flag validation (no kernel, no network)."""
import ipaddress
import subprocess

import pytest

from podnetd import config
from podnetd.cluster import backends
from podnetd.cluster.flags import ClusterConfig
from podnetd.cluster.store import LocalNode
from podnetd.features import FEATURES
from podnetd.cluster.backends import Context, Entry
from podnetd.cluster.records import Membership, NodeRecord, conflicts, vtep_ip, vtep_mac
from testlib import PY, REPO


def rec(name, cidr, ip="192.168.1.50", hb=1, started=1, mac=None):
    return NodeRecord(name, ip, cidr, vtep_mac(name) if mac is None else mac, hb, f"{ip}:7946", started)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_conflicts_refuse_the_later_claim_and_outsiders():
    records = [rec("a", "10.1.0.0/24", started=5), rec("b", "10.1.0.0/23", started=9),
               rec("c", "10.1.2.0/24", started=1), rec("d", "10.9.0.0/24", started=1)]
    refused = conflicts(records, "10.1.0.0/16")
    assert set(refused) == {"b", "d"}
    assert "overlaps node a's 10.1.0.0/24" in refused["b"]
    assert "outside the cluster CIDR" in refused["d"]
    # Every node decides the same whatever order it learnt the records in.
    assert conflicts(list(reversed(records)), "10.1.0.0/16") == refused


def test_conflict_tie_broken_by_name():
    refused = conflicts([rec("z", "10.1.0.0/24", started=3), rec("m", "10.1.0.0/24", started=3)], None)
    assert list(refused) == ["z"]


def test_membership_merges_newer_heartbeats_and_reports_routing_changes():
    clock = Clock()
    m = Membership("self", timeout_s=10, clock=clock)
    m.set_self(rec("self", "10.1.0.0/24"))
    assert m.merge(rec("a", "10.1.1.0/24", hb=5)) is True
    assert m.merge(rec("a", "10.1.1.0/24", hb=4)) is False          # older: ignored
    assert m.merge(rec("a", "10.1.1.0/24", hb=6)) is False          # heartbeat only: no change
    assert m.records["a"].heartbeat_ms == 6
    # a move is taken from the node itself only
    assert m.merge(rec("a", "10.1.1.0/24", ip="192.168.1.9", hb=7)) is False
    assert m.merge(rec("a", "10.1.1.0/24", ip="192.168.1.9", hb=7), firsthand=True) is True
    assert m.records["a"].underlay_ip == "192.168.1.9"
    assert m.merge(rec("self", "10.7.0.0/24", hb=99)) is False      # nobody speaks for us
    assert m.merge(rec("self", "10.7.0.0/24", hb=99), firsthand=True) is False


def test_membership_withdraws_silent_nodes_and_keeps_them_out():
    clock = Clock()
    m = Membership("self", timeout_s=10, clock=clock)
    m.set_self(rec("self", "10.1.0.0/24"))
    m.merge(rec("a", "10.1.1.0/24", hb=5))
    m.merge(rec("b", "10.1.2.0/24", hb=5))
    clock.t += 6
    m.merge(rec("b", "10.1.2.0/24", hb=6))
    clock.t += 6
    assert m.expire() == ["a"]
    assert set(m.records) == {"self", "b"}
    assert m.merge(rec("a", "10.1.1.0/24", hb=5)) is False  # a stale copy from a slow peer
    assert "a" not in m.records
    assert m.merge(rec("a", "10.1.1.0/24", hb=50)) is True  # a real comeback
    assert m.age("a") == 0 and m.age("self") == 0


def ctx(subnets=("192.168.1.0/24",)):
    return Context(rec("self", "10.1.0.0/24"), tuple(ipaddress.ip_network(s) for s in subnets), "vx")


def test_backend_choice():
    same, far = rec("a", "10.1.1.0/24", ip="192.168.1.7"), rec("b", "10.1.2.0/24", ip="192.168.9.7")
    auto, hostgw, vx = backends.get("auto"), backends.get("host-gw"), backends.get("vxlan")
    assert auto.mode_for(ctx(), same) == ("host-gw", "")
    assert auto.mode_for(ctx(), far) == ("vxlan", "")
    assert vx.mode_for(ctx(), same) == ("vxlan", "")
    mode, problem = hostgw.mode_for(ctx(), far)
    assert mode == "unreachable" and "not on this node's L2 subnet" in problem
    nomac = rec("c", "10.1.3.0/24", ip="192.168.9.8", mac="")
    assert auto.mode_for(ctx(), nomac)[0] == "unreachable"
    assert sorted(backends.BACKENDS) == ["auto", "host-gw", "vxlan"]


def test_vxlan_plan_orders_fdb_neigh_route_and_removal_reverses():
    peers = [rec("a", "10.1.1.0/24", ip="192.168.9.1", mac="02:AA:00:00:00:01"),
             rec("b", "10.1.2.0/24", ip="192.168.9.2", mac="02:aa:00:00:00:02")]
    desired, modes = backends.plan(ctx(), backends.get("vxlan"), peers)
    assert [e.kind for e in desired] == ["fdb", "fdb", "neigh", "neigh", "route", "route"]
    route_a = next(e for e in desired if e.kind == "route" and e.node == "a")
    assert (route_a.destination, route_a.via, route_a.dev) == ("10.1.1.0/24", "10.1.1.0", "vx")
    assert next(e for e in desired if e.kind == "fdb" and e.node == "a").destination == "02:aa:00:00:00:01"
    install, remove = backends.diff([desired[1], desired[3], desired[5]], desired)
    assert [e.kind for e in remove] == ["route", "neigh", "fdb"]  # peer a's, route first
    assert install == []


def test_vtep_identity_is_stable_and_local():
    assert vtep_mac("n1") == vtep_mac("n1") != vtep_mac("n2")
    assert int(vtep_mac("n1").split(":")[0], 16) & 0b11 == 0b10  # local, unicast
    assert vtep_ip("10.244.3.0/24") == "10.244.3.0"
    assert backends.ROUTE_PROTO < 256


def parse(*argv):
    return config.parse(["--node-name", "n", *argv], FEATURES)


def test_flags_defaults_and_cluster_mode():
    s = parse("--pod-cidr", "10.1.1.0/24")
    assert s.feature("cluster") is None  # single node
    s = parse("--pod-cidr", "10.1.1.0/24", "--cluster-cidr", "10.1.0.0/16", "--peers",
              "192.168.1.1:7946, 192.168.1.2:7000", "--insecure-peers")
    c = s.feature("cluster")
    assert isinstance(c, ClusterConfig) and c.store == "static"
    assert c.peer_list == ("192.168.1.1:7946", "192.168.1.2:7000") and c.insecure_peers
    assert (c.backend, c.vxlan_vni, c.vxlan_port, c.vxlan_dev, c.node_timeout, s.daemon.reconcile_interval,
            c.node_cidr_size) == ("auto", 1, 8472, "podnet.vxlan", 15.0, 5.0, 24)
    s = parse("--cluster-cidr", "10.1.0.0/16", "--store", "etcd", "--etcd-endpoints", "http://127.0.0.1:2379")
    assert s.daemon.pod_cidr is None  # leased at start
    assert s.feature("cluster").etcd_endpoints == ("http://127.0.0.1:2379",)


@pytest.mark.parametrize("argv,message", [
    (["--pod-cidr", "10.2.0.0/24", "--cluster-cidr", "10.1.0.0/16"], "does not lie inside --cluster-cidr"),
    (["--pod-cidr", "10.1.0.0/24", "--peers", "1.2.3.4:7946"], "--cluster-cidr is required"),
    (["--pod-cidr", "10.1.0.0/24", "--cluster-cidr", "10.1.0.0/16", "--peers", "nohost"], "expected IP:PORT"),
    (["--cluster-cidr", "10.1.0.0/16"], "--pod-cidr is required"),
    (["--cluster-cidr", "10.1.0.0/16", "--store", "etcd"], "needs --etcd-endpoints"),
    (["--pod-cidr", "10.1.0.0/24", "--cluster-cidr", "10.1.0.0/16", "--tls-cert", "/x"], "go together"),
    (["--pod-cidr", "10.1.0.0/24", "--cluster-cidr", "10.1.0.0/16", "--vxlan-vni", "0"], "--vxlan-vni"),
    (["--pod-cidr", "10.1.0.0/24", "--cluster-cidr", "10.1.0.0/16", "--node-ip", "fe80::1"], "not an IPv4"),
    # the static store: mutual TLS or an explicit --insecure-peers
    (["--pod-cidr", "10.1.0.0/24", "--cluster-cidr", "10.1.0.0/16", "--peers", "192.168.1.1:7946"],
     "the static store needs mutual TLS between peers"),
    (["--pod-cidr", "10.1.0.0/24", "--cluster-cidr", "10.1.0.0/16"], "needs mutual TLS"),
    (["--pod-cidr", "10.1.0.0/24", "--cluster-cidr", "10.1.0.0/16", "--insecure-peers", "--tls-cert",
      "/etc/hostname", "--tls-key", "/etc/hostname", "--tls-ca", "/etc/hostname"], "exclude each other"),
    (["--pod-cidr", "10.1.0.0/24", "--cluster-cidr", "10.1.0.0/16", "--insecure-peers",
      "--node-name", "bad_name!"], "--node-name bad_name!: not a DNS subdomain"),
])
def test_bad_flags_are_one_clear_line(argv, message):
    proc = subprocess.run([PY, "-m", "podnetd.main", "--node-name", "n", *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=30)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_entry_keys_ignore_the_value():
    a = Entry("route", "a", "host-gw", "10.1.1.0/24", "192.168.1.1", "")
    b = Entry("route", "b", "vxlan", "10.1.1.0/24", "10.1.1.0", "vx")
    assert a.key == b.key


def static_store(name="self"):
    from podnetd.cluster.static import StaticStore
    cfg = ClusterConfig(cluster_cidr="10.1.0.0/16", store="static", backend="auto",
                        node_timeout=10.0, listen="192.168.1.1:7946",
                        peer_list=("192.168.1.2:7946",))
    changes = []
    store = StaticStore(cfg, LocalNode(name, "192.168.1.1", None, None),
                        lambda: changes.append(1))
    store._own = rec(name, "10.1.0.0/24", hb=100, started=1)
    store.members.set_self(store._own)
    return store, changes


def test_static_store_refuses_an_overlapping_sender_and_reports_changes():
    store, changes = static_store()
    assert store.receive([rec("a", "10.1.1.0/24", hb=5, started=2)], "a") is None
    assert changes == [1]
    refusal = store.receive([rec("b", "10.1.0.0/25", hb=5, started=3)], "b")
    assert refusal and "refuses b" in refusal and "overlaps node self's 10.1.0.0/24" in refusal
    assert store.receive([rec("a", "10.1.1.0/24", hb=6, started=2)], "a") is None
    assert len(changes) == 2  # b's record was news; a's heartbeat alone is not


def test_static_store_continues_above_a_newer_heartbeat_of_its_own():
    store, _ = static_store()
    store.receive([rec("self", "10.1.0.0/24", hb=5000, started=1)], "a")
    assert store._own.heartbeat_ms == 5001 and store.records()[0].heartbeat_ms == 5001
    store.receive([rec("self", "10.1.0.0/24", hb=10, started=1)], "a")
    assert store._own.heartbeat_ms == 5001


def test_static_store_tells_every_known_node_about_itself_once_then_gossips():
    store, _ = static_store()
    assert store._targets() == ["192.168.1.2:7946"]  # seeds only, until one answers
    store._contacted = True
    known = [rec(n, f"10.1.{i}.0/24", ip=f"192.168.1.{10 + i}", hb=5, started=2)
             for i, n in enumerate("abcdefgh", start=1)]
    store.receive(known, "a")
    first = store._targets()
    assert set(first) >= {r.peer_address for r in known}  # the join: all of them, in one round
    later = store._targets()
    assert 0 < len(later) <= 3 and set(later) <= {*first, "192.168.1.2:7946"}  # then FANOUT random
