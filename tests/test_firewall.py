"""The node firewall's logic: rules built only from validated values (fuzzed with hypothesis:
any input is a valid element or a RuleInputError), and its sync against real nftables in a
throwaway netns: idempotent, drift repaired, VXLAN senders kept across a restart until the
cluster's view is complete, hostile peer addresses never reach nft. Plus the single-node
daemon repairing its tables."""
import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from podnetd import firewall, firewall_rules as rules
from podnetd.kernel import netns as kernel_netns
from testlib import cni_add, cni_del, in_ns, ns_path, podnetctl, wait_for

SINGLE = rules.Policy(bridge="podnet0", gateway="10.77.0.1", pod_cidr="10.77.0.0/24")
CLUSTER = rules.Policy(bridge="podnet0", gateway="10.99.1.1", pod_cidr="10.99.1.0/24",
                       cluster=rules.ClusterRules("10.99.0.0/16", vxlan_port=8472))
HOSTILE = ['1.2.3.4 } ; flush ruleset', '1.2.3.4, 0.0.0.0/0', '10.0.0.1\nadd table ip x',
           '"pn1" . 02:00:00:00:00:01 . 10.0.0.2', '::1', '', '256.1.1.1', '1.2.3.4/8']


class Record:
    def __init__(self, port, mac, address, state="ready"):
        self.host_ifname, self.mac, self.address, self.state = port, mac, address, state
        self.container_id, self.ifname = "c" * 12, "eth0"


# -- pure ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_addresses_are_refused(text):
    with pytest.raises(rules.RuleInputError):
        rules.element_text(rules.VXLAN_PEERS_SET, text)
    with pytest.raises(rules.RuleInputError):
        rules.element_text(rules.PODS_SET, ("pn0123456789a", text))


@pytest.mark.parametrize("field, value", [("bridge", 'podnet0" accept #'), ("bridge", "x" * 16),
                                          ("gateway", "10.0.0.1; flush ruleset"),
                                          ("pod_cidr", "10.0.0.0/24 accept")])
def test_policy_refuses_values_that_are_not_what_they_claim(field, value):
    kw = {"bridge": "podnet0", "gateway": "10.77.0.1", "pod_cidr": "10.77.0.0/24", field: value}
    with pytest.raises(rules.RuleInputError, match=re.escape(repr(value))):
        rules.Policy(**kw)


IFNAME, IPV4 = r'"[A-Za-z0-9_.@:-]{1,15}"', r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
MAC = r"[0-9a-f]{2}(:[0-9a-f]{2}){5}"
ELEMENT = {rules.PODS_SET: rf"{IFNAME} \. {IPV4}", rules.POD_MACS_SET: rf"{IFNAME} \. {MAC}",
           rules.PORTS_SETTLED_SET: IFNAME, rules.MACS_TAKEN_SET: MAC,
           rules.VXLAN_PEERS_SET: IPV4}
PARTS = st.one_of(st.text(max_size=20), st.just("pn0123456789a"), st.ip_addresses(v=4).map(str),
                  st.from_regex(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", fullmatch=True))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(rules.SET_TYPES)), st.lists(PARTS, min_size=1, max_size=3))
def test_fuzzed_set_elements_are_valid_or_refused(set_name, parts):
    value = tuple(parts) if len(parts) > 1 else parts[0]
    try:
        text = rules.element_text(set_name, value)
    except rules.RuleInputError as e:
        assert set_name in str(e) or "not" in str(e)
        return
    assert re.fullmatch(ELEMENT[set_name], text), text


def test_single_node_policy_has_no_cluster_parts_and_dns_is_off():
    inet = rules.inet_body(SINGLE, [])
    assert 'iifname "podnet0" jump pod_to_node' in inet
    assert "masquerade" not in inet and "vxlan_peers" not in inet and "dport 53" not in inet
    cluster = rules.inet_body(CLUSTER, ["192.168.200.2"])
    assert "udp dport 8472 ip saddr != @vxlan_peers" in cluster and "masquerade" in cluster
    assert "ip saddr 10.99.0.0/16 jump pod_to_node" in cluster
    dns = rules.inet_body(rules.Policy("podnet0", "10.77.0.1", "10.77.0.0/24", dns_to_gateway=True), [])
    assert "ip daddr 10.77.0.1 udp dport 53 accept" in dns


# -- against nftables in a throwaway netns -----------------------------------------------------

@pytest.fixture
def nftns(netns):
    name = netns.add("fw")
    return lambda fn, *args: kernel_netns.run_in_netns(ns_path(name), fn, *args), name


def peers_in(name: str) -> set:
    out = json.loads(in_ns(name, "nft", "-j", "list", "set", "inet", "podnet", "vxlan_peers").stdout)
    sets = [o["set"] for o in out["nftables"] if "set" in o]
    return set(sets[0].get("elem", []))


def test_sync_is_idempotent_and_repairs_drift(nftns):
    run, name = nftns
    records = [Record("pn0123456789a", "0A:00:00:00:00:01", "10.99.1.2/24"),
               Record("pn0123456789b", "0a:00:00:00:00:02", "10.99.1.3/24", state="releasing")]
    fw = firewall.Firewall(CLUSTER, lambda: records)
    assert run(fw.sync)["rewritten"] == ["inet", "bridge"]
    assert run(fw.sync) == {"rewritten": [], "added": 0, "removed": 0}
    bridge = in_ns(name, "nft", "list", "table", "bridge", "podnet").stdout
    assert '"pn0123456789a" . 10.99.1.2' in bridge and "10.99.1.3" not in bridge
    assert '"pn0123456789a" . 0a:00:00:00:00:01' in bridge and "0a:00:00:00:00:02" not in bridge
    # drift: a rule let in, an element gone, a stranger's element added
    in_ns(name, "nft", "insert", "rule", "bridge", "podnet", "from_pod", "accept")
    assert run(fw.sync)["rewritten"] == ["bridge"]
    in_ns(name, "nft", "flush", "set", "bridge", "podnet", "pods")
    in_ns(name, "nft", "add", "element", "bridge", "podnet", "pods", '{ "pnevil" . 10.99.1.9 }')
    in_ns(name, "nft", "add", "element", "bridge", "podnet", "pod_macs",
          '{ "pnevil" . 02:00:00:00:00:09 }')
    assert run(fw.sync) == {"rewritten": [], "added": 1, "removed": 2}
    bridge = in_ns(name, "nft", "list", "table", "bridge", "podnet").stdout
    assert "pnevil" not in bridge and '"pn0123456789a" . 10.99.1.2' in bridge
    in_ns(name, "nft", "delete", "table", "inet", "podnet")
    assert run(fw.sync)["rewritten"] == ["inet"]
    fw.close()


def test_vxlan_senders_follow_the_peers_and_survive_a_restart(nftns):
    run, name = nftns
    fw = firewall.Firewall(CLUSTER, lambda: [])
    run(fw.sync)
    assert run(fw.set_vxlan_peers, ["192.168.200.2", "192.168.201.3", *HOSTILE]) == (2, 0)
    assert peers_in(name) == {"192.168.200.2", "192.168.201.3"}  # the hostile ones left out
    fw.close()
    # a restarted daemon: its first sync keeps the kernel's senders (its store knows no one yet)
    fw = firewall.Firewall(CLUSTER, lambda: [])
    assert run(fw.sync)["rewritten"] == ["inet", "bridge"]
    assert peers_in(name) == {"192.168.200.2", "192.168.201.3"}
    assert run(fw.set_vxlan_peers, ["192.168.200.2", "192.168.200.4"], False) == (1, 0)
    assert peers_in(name) == {"192.168.200.2", "192.168.201.3", "192.168.200.4"}
    assert run(fw.set_vxlan_peers, ["192.168.200.4"], True) == (0, 2)  # the view is complete
    assert peers_in(name) == {"192.168.200.4"}
    assert run(fw.sync) == {"rewritten": [], "added": 0, "removed": 0}
    fw.close()


def test_single_node_daemon_repairs_its_tables(daemons, netns):
    d = daemons("10.77.3.0/24", extra=["--reconcile-interval", "1"])
    node = d.netns
    pod = netns.add("p")
    rc, r, err = cni_add(d, pod, "c1")
    assert rc == 0, (r, err)
    mac = r["interfaces"][2]["mac"]
    in_ns(node, "nft", "flush", "chain", "bridge", "podnet", "from_pod")
    in_ns(node, "nft", "delete", "table", "inet", "podnet")

    def repaired():
        tables = in_ns(node, "nft", "list", "ruleset").stdout
        return "pod_to_node" in tables and "forged IPv4 source" in tables and mac in tables
    wait_for(repaired, 15, what="nft tables repaired")
    events = json.loads(podnetctl("get", "events", "--for", f"node/{d.node_name}", "-o", "json",
                                  socket=d.socket, check=True).stdout)["items"]
    assert any(e["reason"] == "DriftRepaired" and "firewall" in e["message"]
               for e in events), events
    rc, _, _ = cni_del(d, pod, "c1")
    assert rc == 0
    wait_for(lambda: mac not in in_ns(node, "nft", "list", "set", "bridge", "podnet",
                                      "pods").stdout, 10, what="element removed")


def test_learned_macs_survive_a_restart_and_leave_with_their_port(nftns):
    run, name = nftns
    records = [Record("pn0123456789a", "0a:00:00:00:00:01", "10.99.1.2/24")]
    fw = firewall.Firewall(CLUSTER, lambda: records)
    run(fw.sync)
    # what the packet path adds when the pod's first frame carries a MAC a chained plugin set,
    # and a stranger's port that has no record
    for port, mac in (("pn0123456789a", "0a:58:0a:4d:00:aa"), ("pnstranger", "0a:58:0a:4d:00:cc")):
        in_ns(name, "nft", "add", "element", "bridge", "podnet", "pod_macs", f'{{ "{port}" . {mac} }}')
        in_ns(name, "nft", "add", "element", "bridge", "podnet", "ports_settled", f'{{ "{port}" }}')
        in_ns(name, "nft", "add", "element", "bridge", "podnet", "macs_taken", f"{{ {mac} }}")
    fw.close()
    fw = firewall.Firewall(CLUSTER, lambda: records)  # a restarted daemon rewrites the table
    assert run(fw.sync)["rewritten"] == ["inet", "bridge"]
    table = in_ns(name, "nft", "list", "table", "bridge", "podnet").stdout
    assert '"pn0123456789a" . 0a:58:0a:4d:00:aa' in table and "0a:00:00:00:00:01" in table
    assert "pnstranger" not in table and "0a:58:0a:4d:00:cc" not in table
    def detach():  # in the netns: the worker thread is born there
        fw.forbid(records[0])
        fw.close()  # waits for the queued removal
    run(detach)
    table = in_ns(name, "nft", "list", "table", "bridge", "podnet").stdout
    assert "pn0123456789a" not in table and "0a:58:0a:4d:00:aa" not in table, table
