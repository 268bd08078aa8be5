"""podnetctl doctor on real labs: a healthy fabric passes with exit 0 (l2 and routed, host-gw
and VXLAN); then each fault made on purpose is named with its cause: an underlay link with a
smaller MTU, a deleted VXLAN FDB entry, a rogue route, a stopped peer with its underlay down.
The probe endpoint is gone after every run, also when the doctor is interrupted."""
import json
import os
import signal
import subprocess
import sys

import pytest

from podnetd.lab import Lab, netops
from testlib import assert_one_clear_line, cni_add, podnetctl, unique, wait_for

RECONCILE = 3600  # the daemons must not repair the faults while the doctor looks at them


def doctor(lab, node="n1", *args, timeout=60) -> tuple[int, dict]:
    proc = podnetctl("doctor", "-o", "json", *args, socket=lab.socket(node), netns=lab.netns(node),
                     timeout=timeout)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"doctor rc {proc.returncode}: {proc.stdout}\n{proc.stderr}") from None
    return proc.returncode, report


def failures(report) -> list[dict]:
    return [c for c in report["checks"] if c["status"] == "FAIL"]


def find(report, family, target, name_part="") -> dict:
    hits = [c for c in report["checks"]
            if c["family"] == family and c["target"] == target and name_part in c["name"]]
    assert hits, f"no {family} check for {target!r} ({name_part}) in {json.dumps(report, indent=1)}"
    return hits[0]


def probe_leftovers(lab, node="n1") -> tuple[list[str], list[str]]:
    """Namespaces and endpoints a doctor run could have left behind."""
    spaces = [n for n in os.listdir("/run/netns") if n.startswith("podnet-doctor-")]
    out = podnetctl("endpoints", "-o", "json", socket=lab.socket(node), check=True)
    endpoints = [e["container_id"] for e in json.loads(out.stdout) if e.get("network") == "podnet-doctor"]
    return spaces, endpoints


@pytest.fixture(scope="module")
def routed():
    lab = Lab.up(3, "routed", "static", name=unique("D"), reconcile_interval=RECONCILE, wait=30)
    try:
        assert lab.wait_routes(30) == {}, "nodes did not converge"
        yield lab
    finally:
        lab.down()


def test_healthy_l2_lab_passes():
    lab = Lab.up(3, "l2", "static", name=unique("D"), wait=30)
    try:
        assert lab.wait_routes(30) == {}
        rc, report = doctor(lab, "n2")
        assert rc == 0 and report["ok"], failures(report)
        assert find(report, "peer", "n1", "pod path")["name"] == "pod path (host-gw)"
        assert find(report, "mtu", "n3")["status"] == "PASS"
        assert find(report, "antispoof", "", "forged source IP")["status"] == "PASS"
        assert probe_leftovers(lab, "n2") == ([], [])
    finally:
        lab.down()


def test_healthy_routed_lab_passes_with_vxlan_captured(routed):
    rc, report = doctor(routed)
    assert rc == 0 and report["ok"], failures(report)
    assert find(routed_report := report, "peer", "n2", "pod path")["name"] == "pod path (host-gw)"
    encap = find(routed_report, "vxlan", "n3")
    assert encap["status"] == "PASS" and "10.250.2.13 UDP 8472 VNI 1" in encap["detail"]
    assert "pods use MTU 1450" in find(report, "mtu", "n3")["detail"]
    assert probe_leftovers(routed) == ([], [])


def test_shrunk_underlay_link_is_a_named_mtu_black_hole(routed):
    seg = netops.nsenter(f"{routed.st.name}-ulb")
    subprocess.run([*seg, "ip", "link", "set", "n3", "mtu", "1400"], check=True)
    try:
        rc, report = doctor(routed)
    finally:
        subprocess.run([*seg, "ip", "link", "set", "n3", "mtu", "1500"], check=True)
    assert rc == 1
    c = find(report, "mtu", "n3")
    assert c["status"] == "FAIL", c
    # the bridge port forwards frames of MTU + Ethernet + VLAN header: 1404-byte IP packets,
    # 1354 bytes of pod packet inside VXLAN
    assert "largest packet that passes: 1354 bytes; pods use MTU 1450" in c["detail"]
    assert "black hole" in c["cause"] and "1500" in c["fix"]
    assert find(report, "mtu", "n2")["status"] == "PASS"     # host-gw on the other segment is fine
    assert [f["target"] for f in failures(report)] == ["n3"]


def test_deleted_fdb_entry_is_named(routed):
    ns = netops.nsenter(routed.netns("n1"))
    (entry,) = [line.split() for line in subprocess.run(
        [*ns, "bridge", "fdb", "show", "dev", "podnet.vxlan"], capture_output=True, text=True,
        check=True).stdout.splitlines() if "10.250.2.13" in line]
    mac = entry[0]
    subprocess.run([*ns, "bridge", "fdb", "del", mac, "dev", "podnet.vxlan", "dst", "10.250.2.13", "self"],
                   check=True)
    try:
        rc, report = doctor(routed)
        assert rc == 1
        drift = find(report, "drift", "n3", "fdb")
        assert drift["status"] == "FAIL" and mac in drift["detail"] and "missing" in drift["detail"]
        encap = find(report, "vxlan", "n3")
        assert encap["status"] == "FAIL" and f"FDB entry {mac} -> 10.250.2.13" in encap["cause"]
        assert find(report, "peer", "n3", "pod path")["status"] == "FAIL"
        assert find(report, "peer", "n2", "pod path")["status"] == "PASS"
    finally:
        subprocess.run([*ns, "bridge", "fdb", "replace", mac, "dev", "podnet.vxlan", "dst", "10.250.2.13",
                        "self", "permanent"], check=True)



def vtep_mac_of_n3(routed) -> str:
    listing, _ = routed.cluster_view("n1")
    return next(n.vtep_mac for n in listing.nodes if n.name == "n3")


def test_wrong_fdb_destination_is_seen_on_the_wire(routed):
    ns, mac = netops.nsenter(routed.netns("n1")), vtep_mac_of_n3(routed)
    fdb = [*ns, "bridge", "fdb", "replace", mac, "dev", "podnet.vxlan", "self", "permanent", "dst"]
    subprocess.run([*fdb, "10.250.1.12"], check=True)          # n2's underlay, not n3's
    try:
        rc, report = doctor(routed)
    finally:
        subprocess.run([*fdb, "10.250.2.13"], check=True)
    assert rc == 1
    encap = find(report, "vxlan", "n3")
    assert encap["status"] == "FAIL" and "-> 10.250.1.12 UDP 8472 VNI 1" in encap["detail"]
    assert "sends to 10.250.1.12, not to its underlay address 10.250.2.13" in encap["cause"]
    assert "points to 10.250.1.12 instead" in find(report, "drift", "n3", "fdb")["detail"]


def test_wrong_neighbour_entry_is_named(routed):
    ns, mac = netops.nsenter(routed.netns("n1")), vtep_mac_of_n3(routed)
    neigh = [*ns, "ip", "neigh", "replace", "10.244.3.0", "dev", "podnet.vxlan", "nud", "permanent", "lladdr"]
    subprocess.run([*neigh, "02:00:00:00:00:99"], check=True)
    try:
        rc, report = doctor(routed)
    finally:
        subprocess.run([*neigh, mac], check=True)
    assert rc == 1
    encap = find(report, "vxlan", "n3")
    assert encap["status"] == "FAIL" and "has MAC 02:00:00:00:00:99" in encap["cause"]
    assert "has lladdr 02:00:00:00:00:99 instead" in find(report, "drift", "n3", "neigh")["detail"]

def test_rogue_route_is_named(routed):
    ns = netops.nsenter(routed.netns("n1"))
    subprocess.run([*ns, "ip", "route", "add", "blackhole", "10.244.3.0/25"], check=True)
    try:
        rc, report = doctor(routed)
    finally:
        subprocess.run([*ns, "ip", "route", "del", "blackhole", "10.244.3.0/25"], check=True)
    assert rc == 1
    rogue = find(report, "drift", "10.244.3.0/25", "rogue")
    assert rogue["status"] == "FAIL" and "n3" in rogue["cause"]
    path = find(report, "peer", "n3", "pod path")
    assert path["status"] == "FAIL" and "10.244.3.0/25" in path["cause"]


def test_interrupted_doctor_removes_its_probe_endpoint(routed):
    # A long round (the timeout) while n3's pod gateway is blackholed keeps the doctor busy.
    ns = netops.nsenter(routed.netns("n1"))
    subprocess.run([*ns, "ip", "route", "add", "blackhole", "10.244.3.1/32"], check=True)
    proc = subprocess.Popen([*ns, sys.executable, "-m", "podnetd.ctl.main", "doctor", "--socket",
                             routed.socket("n1"), "--timeout", "20"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: probe_leftovers(routed)[1], timeout=30, what="the probe endpoint attached")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130
        assert probe_leftovers(routed) == ([], [])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run([*ns, "ip", "route", "del", "blackhole", "10.244.3.1/32"], check=True)


def test_zz_stopped_peer_with_its_underlay_down_is_named(routed):
    # last: it breaks n3 for good
    routed.stop_daemon("n3")
    subprocess.run([*netops.nsenter(routed.netns("n3")), "ip", "link", "set", "eth0", "down"], check=True)
    rc, report = doctor(routed)
    assert rc == 1
    under = find(report, "peer", "n3", "underlay")
    assert under["status"] == "FAIL" and "10.250.2.13" in under["cause"]
    path = find(report, "peer", "n3", "pod path")
    assert path["status"] == "FAIL" and "underlay does not reach n3" in path["cause"]
    assert find(report, "peer", "n2", "underlay")["status"] == "PASS"
    assert {f["target"] for f in failures(report)} == {"n3"}


def test_unreachable_daemon_is_one_line_and_exit_1(tmp_path):
    proc = podnetctl("doctor", socket=str(tmp_path / "none.sock"))
    assert proc.returncode == 1
    assert_one_clear_line(proc.stderr, prefix="podnetctl: cannot reach podnetd")
    assert not [n for n in os.listdir("/run/netns") if n.startswith("podnet-doctor-")]


def test_stale_antispoofing_element_is_named(routed):
    ns = netops.nsenter(routed.netns("n1"))
    elements = {"pods": '{ "pnrogue" . 10.244.1.250 }', "pod_macs": '{ "pnrogue" . 02:00:00:00:00:09 }'}
    for name, element in elements.items():
        subprocess.run([*ns, "nft", "add", "element", "bridge", "podnet", name, element], check=True)
    try:
        rc, report = doctor(routed)
    finally:
        for name, element in elements.items():
            subprocess.run([*ns, "nft", "delete", "element", "bridge", "podnet", name, element], check=True)
    assert rc == 1
    c = find(report, "drift", "pnrogue", "nftables")
    assert c["status"] == "FAIL" and "10.244.1.250" in c["detail"]


def test_single_node_daemon_passes_the_antispoofing_self_test(daemons):
    d = daemons("10.77.9.0/24")
    proc = podnetctl("doctor", "-o", "json", socket=d.socket, netns=d.netns)
    report = json.loads(proc.stdout)
    # the firewall runs in every mode: both forgeries are dropped
    assert find(report, "antispoof", "", "forged source IP")["status"] == "PASS", report
    assert find(report, "antispoof", "", "forged source MAC")["status"] == "PASS", report
    assert find(report, "drift", "", "routes and firewall")["status"] == "SKIP"
    assert find(report, "node", "podnet0", "bridge")["status"] == "PASS"
    assert not [n for n in os.listdir("/run/netns") if n.startswith("podnet-doctor-")]


def test_full_pool_is_a_named_failure_and_the_rest_still_runs(daemons, netns):
    d = daemons("10.77.8.0/30")                 # one address for pods
    pod = netns.add("dp")
    rc, _, err = cni_add(d, pod, unique("c"))
    assert rc == 0, err
    proc = podnetctl("doctor", "-o", "json", socket=d.socket, netns=d.netns)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1
    c = find(report, "antispoof", "", "probe endpoint")
    assert c["status"] == "FAIL" and "attach probe endpoint" in c["detail"] and "full" in c["cause"]
    assert find(report, "node", "", "IP forwarding")["status"] == "PASS"
    assert not [n for n in os.listdir("/run/netns") if n.startswith("podnet-doctor-")]
