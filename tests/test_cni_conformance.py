"""CNI spec details beyond tests/test_single_node.py: CHECK on 0.3.x, STATUS on an exhausted
pool, repeated ADD, bad container ids and interface names (refused without leaking), GC scoped to
its own network name. The plugin is driven as a runtime drives it (env + stdin)."""
import json

import pytest

from podnetd.endpoints import host_veth_name
from cni_chain import podnet_endpoints as endpoints
from testlib import (cni_add, cni_del, ipam_allocations, links_in, ns_path, ping, plugin, unique,
                     wait_for)


def held_by(daemon, cid: str) -> list[dict]:
    return [e for e in endpoints(daemon) if cid in json.dumps(e)]


def node_links(daemon) -> set[str]:
    return {link["ifname"] for link in links_in(daemon.netns)}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_check_refused_before_0_4_0(daemon, netns, version):
    pod = netns.add("p")
    cid = unique("cid")
    rc, result, err = cni_add(daemon, pod, cid, version=version)
    assert rc == 0, (result, err)
    assert result["cniVersion"] == version and result["ips"][0]["version"] == "4"
    rc, out, err = plugin("CHECK", config=daemon.config(version=version, prevResult=result),
                          container_id=cid, netns=ns_path(pod), ifname="eth0")
    assert rc != 0 and out["code"] == 1, (out, err)
    assert out["cniVersion"] == version and "CHECK" in out["msg"]
    # the same attachment checks fine at 0.4.0: the refusal is about the version only
    rc, out, err = plugin("CHECK", config=daemon.config(version="0.4.0", prevResult=result),
                          container_id=cid, netns=ns_path(pod), ifname="eth0")
    assert rc == 0, (out, err)


def test_status_reports_an_exhausted_pool(daemons, netns):
    daemon = daemons(pod_cidr="10.78.0.0/30")   # .1 is the gateway: one pod address, .2
    status = lambda: plugin("STATUS", config=daemon.config())  # noqa: E731
    assert status()[0] == 0
    p1, p2 = netns.add("p"), netns.add("p")
    rc, result, err = cni_add(daemon, p1, "full1")
    assert rc == 0 and result["ips"][0]["address"] == "10.78.0.2/30", (result, err)
    rc, out, err = status()
    assert rc != 0 and out["code"] == 50 and "no free address" in out["details"], (out, err)
    rc, out, err = cni_add(daemon, p2, "full2")
    assert rc != 0 and out["code"] == 11, (out, err)     # try again later
    assert not held_by(daemon, "full2")
    assert not any(link["ifname"] == "eth0" for link in links_in(p2))
    assert cni_del(daemon, p1, "full1")[0] == 0
    wait_for(lambda: status()[0] == 0, what="STATUS ready once the address is released")
    rc, result, err = cni_add(daemon, p2, "full2")
    assert rc == 0 and result["ips"][0]["address"] == "10.78.0.2/30", (result, err)


def test_repeated_add_returns_the_same_address(daemon, netns):
    pod = netns.add("p")
    cid = unique("cid")
    rc, first, err = cni_add(daemon, pod, cid)
    assert rc == 0, (first, err)
    rc, second, err = cni_add(daemon, pod, cid)
    assert rc == 0, (second, err)
    assert second["ips"] == first["ips"]
    assert second["interfaces"][1]["name"] == first["interfaces"][1]["name"]
    assert len(held_by(daemon, cid)) == 1
    assert ping(pod, first["ips"][0]["gateway"])   # the rebuilt link works
    # another ifname of the same container is another attachment with another address
    rc, other, err = cni_add(daemon, pod, cid, ifname="net1")
    assert rc == 0 and other["ips"][0]["address"] != first["ips"][0]["address"], (other, err)
    assert len(held_by(daemon, cid)) == 2


BAD_IDS = ["bad/id", "has space", "-leading-dash", "semi;colon", "a\\b", ".hidden", "x\ny",
           "trailing-newline\n", "a" * 256]
# lengths count bytes, as the kernel does: 10 two-byte characters are 20 bytes
BAD_IFNAMES = ["a" * 16, "eth0/1", "eth:0", "eth 0", ".", "..", "é" * 10, "eà", "eth%d"]


def test_bad_container_id_or_ifname_refused_without_leaking(daemon, netns):
    pod = netns.add("p")
    before = node_links(daemon)
    cases = [(cid, "eth0", "CNI_CONTAINERID") for cid in BAD_IDS]
    cases += [(unique("cid"), ifname, "CNI_IFNAME") for ifname in BAD_IFNAMES]
    for cid, ifname, env in cases:
        rc, out, err = cni_add(daemon, pod, cid, ifname=ifname)
        assert rc != 0 and out["code"] == 4 and env in out["msg"], (cid, ifname, out, err)
        assert "Traceback" not in err
    assert endpoints(daemon) == [] and ipam_allocations(daemon) == set()
    assert node_links(daemon) == before
    assert [link["ifname"] for link in links_in(pod)] == ["lo"]


def test_fifteen_char_ifname_is_fine(daemon, netns):
    pod = netns.add("p")
    rc, out, err = cni_add(daemon, pod, unique("cid"), ifname="a" * 15)
    assert rc == 0, (out, err)
    assert "a" * 15 in [link["ifname"] for link in links_in(pod)]


def test_gc_only_touches_its_own_network(daemon, netns):
    pa, pb, pc = netns.add("p"), netns.add("p"), netns.add("p")
    a, b, c = unique("ga"), unique("gb"), unique("gc")
    assert cni_add(daemon, pa, a, name="net-a")[0] == 0
    assert cni_add(daemon, pb, b, name="net-b")[0] == 0
    assert cni_add(daemon, pc, c, name="net-a")[0] == 0
    valid = [{"containerID": c, "ifname": "eth0"}]
    rc, out, err = plugin("GC", config=daemon.config(name="net-a",
                                                     **{"cni.dev/valid-attachments": valid}))
    assert rc == 0, (out, err)
    wait_for(lambda: not held_by(daemon, a), what="GC of net-a to release the invalid attachment")
    assert held_by(daemon, b) and held_by(daemon, c)
    wait_for(lambda: host_veth_name(a, "eth0") not in node_links(daemon), what="a's veth gone")
    assert {host_veth_name(b, "eth0"), host_veth_name(c, "eth0")} <= node_links(daemon)
    assert ping(pb, "10.77.0.1") and ping(pc, "10.77.0.1")
    # a GC of net-b with nothing valid takes b only
    rc, out, err = plugin("GC", config=daemon.config(name="net-b",
                                                     **{"cni.dev/valid-attachments": []}))
    assert rc == 0, (out, err)
    wait_for(lambda: not held_by(daemon, b), what="GC of net-b")
    assert held_by(daemon, c)


def test_gc_rejects_malformed_valid_attachments(daemon, netns):
    pod = netns.add("p")
    cid = unique("cid")
    assert cni_add(daemon, pod, cid)[0] == 0
    for bad in ("not-a-list", [{"containerID": cid}], [{"containerID": 5, "ifname": "eth0"}]):
        rc, out, err = plugin("GC", config=daemon.config(**{"cni.dev/valid-attachments": bad}))
        assert rc != 0 and out["code"] == 7, (bad, out, err)
    assert held_by(daemon, cid)   # a refused GC releases nothing


def test_check_with_a_foreign_prev_result_fails(daemon, netns):
    pod = netns.add("p")
    cid = unique("cid")
    rc, result, _ = cni_add(daemon, pod, cid)
    assert rc == 0
    forged = json.loads(json.dumps(result))
    forged["ips"][0]["address"] = "10.77.0.250/24"
    rc, out, err = plugin("CHECK", config=daemon.config(prevResult=forged), container_id=cid,
                          netns=ns_path(pod), ifname="eth0")
    assert rc != 0 and "10.77.0.250/24" in out["details"], (out, err)
