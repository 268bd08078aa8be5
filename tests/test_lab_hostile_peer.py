"""A hostile peer in the lab (real namespaces, real podnetds with the lab's mutual TLS): a process
that speaks podnet.peer.v1.PeerService/Exchange sends forged, malformed and oversized records
with and without a client certificate, with a certificate from another CA, and with a valid lab
certificate for a name other than the one it claims. Routing keeps working, pods keep talking
across nodes, and no forged data is installed."""
import json
import os
import queue
import subprocess
import tempfile
import threading
import time

import pytest

from podnetd.api.podnet.v1 import cluster_pb2
from podnetd.cluster import records
from podnetd.lab import Lab, netops, pki, plan, pods, probe, procs, state
from testlib import PY, REPO, unique

NODE_TIMEOUT = 3.0
HOSTILE = os.path.join(REPO, "tests", "hostile_peer.py")


@pytest.fixture(scope="module")
def lab():
    lb = Lab.up(3, "l2", "static", name=unique("H"), node_timeout=NODE_TIMEOUT, wait=30)
    try:
        assert lb.wait_routes(30) == {}, "nodes did not converge"
        for node in ("n1", "n2"):
            pods.add_pod(lb, node)
        yield lb
    finally:
        lb.down()


@pytest.fixture(scope="module")
def attacker(lab):
    """A namespace of its own on the lab's underlay, with certificates: a valid lab certificate
    for 'mallory', and one for 'n2' from a CA the lab does not trust."""
    seg = plan.segments(lab.st.name, "l2")[0]
    ns, ip = f"{lab.st.name}-atk", plan.host_address(seg, 200)
    with state.locked(lab.st.name, lab.st.root):
        lab._add_netns(ns)
        lab._attach(ns, "a", "atk", ip)
    ca = os.path.join(lab.st.dir, "ca")
    with tempfile.TemporaryDirectory() as tmp:
        mallory = pki.make_node_cert(os.path.join(tmp, "mallory"), os.path.join(ca, "ca.crt"),
                                     os.path.join(ca, "ca.key"), "mallory", ip)
        evil_ca, evil_ca_key = pki.make_ca(os.path.join(tmp, "evilca"), "evil")
        foreign = pki.make_node_cert(os.path.join(tmp, "foreign"), evil_ca, evil_ca_key, "n2", ip)
        yield {"ns": ns, "ip": ip, "ca": os.path.join(ca, "ca.crt"), "mallory": mallory,
               "foreign": foreign}


def run_hostile(attacker, attempts: list[dict]) -> list[dict]:
    proc = subprocess.run([*netops.nsenter(attacker["ns"]), PY, HOSTILE], input=json.dumps(attempts),
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def view(lab, node) -> dict:
    listing, _ = lab.cluster_view(node)
    assert listing is not None, f"{node}: no cluster view"
    return {n.name: n for n in listing.nodes}


def gateways(lab, node) -> dict:
    return {r["dst"]: r.get("gateway") for r in probe.routes(lab.netns(node))}


def test_forged_malformed_and_oversized_records_change_nothing(lab, attacker):
    n = lab.st.nodes
    ips = {name: n[name]["ip"] for name in n}
    cidrs = {name: n[name]["pod_cidr"] for name in n}
    target = f"{ips['n1']}:{plan.PEER_PORT}"
    now = records.now_ms()
    mallory_cert, mallory_key = attacker["mallory"]
    foreign_cert, foreign_key = attacker["foreign"]
    tls = {"target": target, "transport": "tls", "ca": attacker["ca"], "cert": mallory_cert,
           "key": mallory_key, "cluster_cidr": plan.CLUSTER_CIDR}
    # n2 "moved" to the attacker's address, with a newer heartbeat than n2's own
    moved_n2 = {"name": "n2", "underlay_ip": attacker["ip"], "pod_cidr": cidrs["n2"],
                "heartbeat_ms": now + 60_000, "peer_address": f"{attacker['ip']}:{plan.PEER_PORT}",
                "started_ms": 1}
    old_claim = {"name": "mallory", "underlay_ip": attacker["ip"], "pod_cidr": cidrs["n2"],
                 "heartbeat_ms": now, "peer_address": f"{attacker['ip']}:{plan.PEER_PORT}",
                 "started_ms": 1}
    malformed = [
        {"name": "v6", "underlay_ip": attacker["ip"], "pod_cidr": "fd00::/64", "heartbeat_ms": now},
        {"name": "badip", "underlay_ip": "10.250.0.999", "pod_cidr": "10.244.90.0/24", "heartbeat_ms": now},
        {"name": "n1", "underlay_ip": ips["n1"], "pod_cidr": cidrs["n1"], "heartbeat_ms": 2 ** 63 - 1},
        {"name": "huge", "underlay_ip": attacker["ip"], "pod_cidr": "10.244.91.0/24",
         "heartbeat_ms": 2 ** 63 - 1},
        {"name": "bad name", "underlay_ip": attacker["ip"], "pod_cidr": "10.244.92.0/24", "heartbeat_ms": now},
        {"name": "mcast", "underlay_ip": "224.0.0.1", "pod_cidr": "10.244.93.0/24", "heartbeat_ms": now,
         "vtep_mac": "01:00:5e:00:00:01"},
        {"name": "outside", "underlay_ip": attacker["ip"], "pod_cidr": "10.9.0.0/24", "heartbeat_ms": now},
    ]
    attempts = [
        # without TLS, without a client certificate, with another CA's certificate for "n2"
        {**tls, "transport": "plain", "sender": "n2", "records": [moved_n2]},
        {**tls, "cert": None, "key": None, "sender": "n2", "records": [moved_n2]},
        {**tls, "cert": foreign_cert, "key": foreign_key, "sender": "n2", "records": [moved_n2]},
        # a valid lab certificate, claiming to be n2
        {**tls, "sender": "n2", "records": [moved_n2]},
        # as itself, relaying a forged n2 (hearsay)
        {**tls, "sender": "mallory", "records": [moved_n2]},
        # malformed records, each on its own
        {**tls, "sender": "mallory", "records": malformed},
        # as itself, a claim on n2's CIDR backdated to 1970
        {**tls, "sender": "mallory", "records": [old_claim]},
        # too many records; a message over the size limit; another cluster
        {**tls, "sender": "mallory", "records": [moved_n2], "copies": 5000},
        {**tls, "sender": "mallory", "records": [], "pad": 3 * 1024 * 1024},
        {**tls, "sender": "mallory", "records": [moved_n2], "cluster_cidr": "10.0.0.0/8"},
        # a sender name that is no name
        {**tls, "sender": "mallory\n; rm -rf /", "records": [moved_n2]},
    ]
    out = run_hostile(attacker, attempts)
    codes = [o["code"] for o in out]
    assert codes[:3] == ["UNAVAILABLE"] * 3, out[:3]
    assert codes[3] == "PERMISSION_DENIED" and "not a name of its certificate" in out[3]["details"], out[3]
    assert codes[4] == "OK" and "n2" in out[4]["records"], out[4]
    assert codes[5] == "OK" and "n1" in out[5]["records"], out[5]
    assert codes[6] == "FAILED_PRECONDITION" and "overlaps node n2's" in out[6]["details"], out[6]
    assert codes[7] == "RESOURCE_EXHAUSTED" and codes[8] == "RESOURCE_EXHAUSTED", out[7:9]
    assert codes[9] == "FAILED_PRECONDITION" and "differs from ours" in out[9]["details"], out[9]
    assert codes[10] == "INVALID_ARGUMENT", out[10]
    attacked_at = time.monotonic()

    # Nothing forged is held or installed, on the attacked node or the others.
    for node in ("n1", "n2", "n3"):
        seen = view(lab, node)
        assert seen["n2"].underlay_ip == ips["n2"], (node, seen["n2"])
        assert not {"v6", "badip", "huge", "bad name", "mcast", "outside"} & set(seen), (node, sorted(seen))
        assert seen.get("mallory") is None or seen["mallory"].mode == cluster_pb2.PEER_MODE_UNREACHABLE
        assert seen[node].mode == cluster_pb2.PEER_MODE_SELF and not seen[node].problem, (node, seen[node])
        assert attacker["ip"] not in gateways(lab, node).values(), (node, gateways(lab, node))
    assert gateways(lab, "n1")[cidrs["n2"]] == ips["n2"]
    assert "mallory" in view(lab, "n1") and "overlaps node n2's" in view(lab, "n1")["mallory"].problem

    # The gossip loops live on: for two node timeouts every node keeps every other node
    # (a dead loop stops heartbeating and is withdrawn), and pods keep talking across nodes.
    ps = pods.pods(lab)
    a1, a2 = (ps[k]["address"] for k in ("n1/p1", "n2/p1"))
    while time.monotonic() - attacked_at < 2 * NODE_TIMEOUT + 1:
        for node in ("n1", "n2", "n3"):
            assert {"n1", "n2", "n3"} <= set(view(lab, node)), (node, sorted(view(lab, node)))
        assert lab.missing_routes() == {}
        time.sleep(0.5)
    assert probe.ping(ps["n1/p1"]["netns"], a2, count=3).returncode == 0
    assert probe.ping(ps["n2/p1"]["netns"], a1, count=3).returncode == 0
    for node in ("n1", "n2", "n3"):
        assert procs.alive(lab.daemon(node)), node
    log = open(n["n1"]["dir"] + "/podnetd.log").read()
    assert "Traceback" not in log and "gossip round failed" not in log
    assert "Handshake failed" not in log  # gRPC core's line per failed handshake: unbounded
    assert "dropped a record" in log and "relayed by mallory" in log
    assert "is not a name of its certificate" in log


def test_a_new_node_still_joins_after_the_attack(lab, attacker):
    """The cluster still takes real changes after the hostile traffic above."""
    node = lab.add_node()
    assert lab.wait_routes(30) == {}
    cidr = lab.st.nodes[node]["pod_cidr"]
    assert gateways(lab, "n1")[cidr] == lab.st.nodes[node]["ip"]


def test_forged_answers_from_a_hostile_server_change_nothing(lab, attacker):
    """The answer path: a peer with a valid lab certificate announces itself (a real, valid
    record), the nodes dial it, and it answers with forged, malformed and oversized records."""
    n = lab.st.nodes
    now = records.now_ms()
    cert, key = attacker["mallory"]
    listen = f"{attacker['ip']}:{plan.PEER_PORT}"
    own_cidr = "10.244.200.0/24"
    mallory = {"name": "mallory", "underlay_ip": attacker["ip"], "pod_cidr": own_cidr,
               "vtep_mac": records.vtep_mac("mallory"), "heartbeat_ms": now, "peer_address": listen,
               "started_ms": 1}
    forged = [{"name": "n2", "underlay_ip": attacker["ip"], "pod_cidr": n["n2"]["pod_cidr"],
               "heartbeat_ms": now + 120_000, "peer_address": listen},
              {"name": "n1", "underlay_ip": n["n1"]["ip"], "pod_cidr": n["n1"]["pod_cidr"],
               "heartbeat_ms": 2 ** 63 - 1},
              {"name": "v6", "underlay_ip": attacker["ip"], "pod_cidr": "fd00::/64", "heartbeat_ms": now},
              {"name": "thief", "underlay_ip": attacker["ip"], "pod_cidr": n["n3"]["pod_cidr"],
               "heartbeat_ms": now, "started_ms": 1},
              {"name": "copycat", "underlay_ip": attacker["ip"], "pod_cidr": "10.244.201.0/24",
               "vtep_mac": records.vtep_mac("n2"), "heartbeat_ms": now}]
    config = {"listen": listen, "cert": cert, "key": key, "ca": attacker["ca"],
              "answers": [{"records": forged}, {"records": forged, "copies": 1000},
                          {"pad": 3 * 1024 * 1024}]}
    server = subprocess.Popen([*netops.nsenter(attacker["ns"]), PY, HOSTILE, "serve", json.dumps(config)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert server.stdout.readline().strip() == "ready"
        out = run_hostile(attacker, [{"target": f"{n['n1']['ip']}:{plan.PEER_PORT}", "transport": "tls",
                                      "ca": attacker["ca"], "cert": cert, "key": key, "sender": "mallory",
                                      "cluster_cidr": plan.CLUSTER_CIDR, "records": [mallory]}])
        assert out[0]["code"] == "OK", out
        # every node learns of mallory and dials it; each variant of answer gets served
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in server.stdout], daemon=True).start()
        calls = []
        try:
            while len(calls) < 6:
                calls.append(json.loads(lines.get(timeout=30)))
        except queue.Empty:
            raise AssertionError(f"the nodes stopped gossiping after {calls}") from None
        assert {c["sender"] for c in calls} <= set(n), calls
        probe.until(lambda: all("mallory" in view(lab, node) for node in n), 20,
                    "every node has heard of mallory")
        attacked_at = time.monotonic()
        for node in n:
            seen = view(lab, node)
            assert seen["n2"].underlay_ip == n["n2"]["ip"], (node, seen["n2"])
            assert not {"v6", "copycat"} & set(seen), (node, sorted(seen))
            # a new name by hearsay may be held, but its backdated claim loses to n3's
            assert "thief" not in seen or "overlaps node n3's" in seen["thief"].problem, seen["thief"]
            assert seen["mallory"].pod_cidr == own_cidr  # a node with a valid certificate
            assert seen[node].mode == cluster_pb2.PEER_MODE_SELF and not seen[node].problem, \
                (node, seen[node])
            gw = gateways(lab, node)
            assert {d for d, g in gw.items() if g == attacker["ip"]} <= {own_cidr}, (node, gw)
        # the loops live on, and pods keep talking
        while time.monotonic() - attacked_at < 2 * NODE_TIMEOUT + 1:
            for node in n:
                assert set(n) <= set(view(lab, node)), (node, sorted(view(lab, node)))
            assert lab.missing_routes() == {}
            time.sleep(0.5)
        ps = pods.pods(lab)
        assert probe.ping(ps["n1/p1"]["netns"], ps["n2/p1"]["address"], count=3).returncode == 0
        logs = "".join(open(v["dir"] + "/podnetd.log").read() for v in n.values())
        assert "Traceback" not in logs and "gossip round failed" not in logs
        assert f"dropped a record from {listen}" in logs and f"relayed by {listen}" in logs
        assert f"peer {listen} answered 5000 records (at most 2000): ignored" in logs
        assert "Received message larger than max" in logs
    finally:
        server.stdin.close()
        server.wait(timeout=30)
