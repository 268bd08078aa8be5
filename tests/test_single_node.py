"""podnetd + the podnet plugin on one node, driven as a CNI runtime drives it. Every test runs
with both builds of the plugin (native and portable Python)."""
import json
import signal

import pytest

from testlib import (cni_add, in_ns, ipam_allocations, links_in, ns_path, ping, plugin,
                     veths_on_bridge, wait_for)

pytestmark = pytest.mark.usefixtures("plugin_build")


def test_add_gives_address_route_and_connectivity(daemon, netns):
    p1, p2 = netns.add("p"), netns.add("p")
    rc, r1, err = cni_add(daemon, p1, "c1")
    assert rc == 0, (r1, err)
    rc, r2, err = cni_add(daemon, p2, "c2")
    assert rc == 0, (r2, err)
    assert r1["cniVersion"] == "1.1.0"
    a1, a2 = r1["ips"][0]["address"], r2["ips"][0]["address"]
    assert a1 != a2 and a1.startswith("10.77.0.") and a1.endswith("/24")
    assert r1["ips"][0]["gateway"] == "10.77.0.1"
    assert r1["interfaces"][2] == {"name": "eth0", "mac": r1["interfaces"][2]["mac"],
                                   "sandbox": ns_path(p1)}
    routes = json.loads(in_ns(p1, "ip", "-j", "route").stdout)
    assert {"dst": "default", "gateway": "10.77.0.1"}.items() <= routes[0].items()
    assert ping(p1, a2.split("/")[0])
    assert ping(p2, "10.77.0.1")


def test_del_is_idempotent_and_releases(daemon, netns):
    p1 = netns.add("p")
    rc, r1, _ = cni_add(daemon, p1, "c1")
    assert rc == 0
    host_if = r1["interfaces"][1]["name"]
    assert any(link["ifname"] == host_if for link in links_in(daemon.netns))
    for env in ({"netns": ns_path(p1)}, {"netns": ns_path(p1)}, {}):
        rc, out, err = plugin("DEL", config=daemon.config(), container_id="c1", ifname="eth0", **env)
        assert rc == 0, (out, err)
    wait_for(lambda: not any(link["ifname"] == host_if for link in links_in(daemon.netns)),
             what=f"{host_if} to be deleted")
    rc, out, _ = plugin("DEL", config=daemon.config(), container_id="never-seen", ifname="eth0",
                        netns="/run/netns/does-not-exist")
    assert rc == 0, out
    # the same pod attached again right after its DEL gets a working interface
    rc, again, err = plugin("ADD", config=daemon.config(), container_id="c1", netns=ns_path(p1),
                            ifname="eth0")
    assert rc == 0, (again, err)
    assert ping(p1, "10.77.0.1")


def test_versions_shape_results(daemon, netns):
    for i, version in enumerate(("0.3.1", "0.4.0", "1.0.0", "1.1.0")):
        pod = netns.add("p")
        rc, result, err = cni_add(daemon, pod, f"v{i}", version=version)
        assert rc == 0, (result, err)
        assert result["cniVersion"] == version
        assert ("version" in result["ips"][0]) == (version < "1.0.0")


def test_check_detects_drift(daemon, netns):
    pod = netns.add("p")
    rc, result, _ = cni_add(daemon, pod, "chk")
    assert rc == 0
    cfg = daemon.config(prevResult=result)
    assert plugin("CHECK", config=cfg, container_id="chk", netns=ns_path(pod), ifname="eth0")[0] == 0
    in_ns(pod, "ip", "route", "del", "default")
    rc, out, _ = plugin("CHECK", config=cfg, container_id="chk", netns=ns_path(pod), ifname="eth0")
    assert rc != 0 and "default route" in out["details"]


def test_errors_follow_the_spec(daemon, netns):
    pod = netns.add("p")
    base = dict(container_id="e1", netns=ns_path(pod), ifname="eth0")
    cases = [
        (b"{not json", 6),
        (json.dumps({"cniVersion": "9.9.9", "name": "x", "type": "podnet", "socket": daemon.cni_socket}).encode(), 1),
        (json.dumps({"cniVersion": "1.0.0", "type": "podnet", "socket": daemon.cni_socket}).encode(), 7),
    ]
    for config, code in cases:
        rc, out, err = plugin("ADD", config=config, **base)
        assert rc != 0 and out["code"] == code, (config, out, err)
        assert "Traceback" not in err
    rc, out, _ = plugin("ADD", config=daemon.config(), container_id="e2", netns=ns_path(pod))
    assert rc != 0 and out["code"] == 4 and "CNI_IFNAME" in out["msg"]
    rc, out, _ = plugin("ADD", config=daemon.config(), container_id="e3", ifname="eth0",
                        netns="/run/netns/no-such-ns")
    assert rc != 0 and out["code"] == 3
    rc, out, _ = plugin("BOGUS", config=daemon.config())
    assert rc != 0 and out["code"] == 4
    # nothing leaked, as the kernel and the IPAM database say (not through a GC, which would
    # clean a leak up): no address held, no veth on the bridge, nothing but lo in the pod
    assert ipam_allocations(daemon) == set()
    assert veths_on_bridge(daemon) == set()
    assert [link["ifname"] for link in links_in(pod)] == ["lo"]
    # ...and the same checks do see a pod that exists
    assert cni_add(daemon, pod, "e4")[0] == 0
    assert ipam_allocations(daemon) == {("e4", "eth0")} and len(veths_on_bridge(daemon)) == 1


def test_version_does_not_touch_the_daemon():
    rc, out, err = plugin("VERSION", config={"cniVersion": "1.0.0", "name": "x", "type": "podnet",
                                             "socket": "/nonexistent/podnetd.sock"})
    assert rc == 0 and "1.1.0" in out["supportedVersions"] and "0.3.1" in out["supportedVersions"]


def test_daemon_down_fails_fast_with_try_again(netns):
    cfg = {"cniVersion": "1.1.0", "name": "x", "type": "podnet", "socket": "/nonexistent/p.sock"}
    rc, out, err = plugin("ADD", config=cfg, container_id="d1", netns="/proc/self/ns/net",
                          ifname="eth0", timeout=10)
    assert rc != 0 and out["code"] == 11 and "Traceback" not in err
    rc, out, _ = plugin("STATUS", config=cfg, timeout=10)
    assert rc != 0 and out["code"] == 50


def test_wedged_daemon_does_not_hang_the_plugin(daemon, netns):
    """A stopped daemon still accepts connections (the kernel's backlog) but never answers: the
    plugin gives up after its connect timeout instead of hanging the runtime."""
    pod = netns.add("w")
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        rc, out, err = cni_add(daemon, pod, "wedged")
        assert rc != 0 and out["code"] == 11 and "did not answer" in out["details"], (out, err)
        rc, out, _ = plugin("STATUS", config=daemon.config(), timeout=10)
        assert rc != 0 and out["code"] == 50
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    rc, out, err = cni_add(daemon, pod, "wedged")
    assert rc == 0, (out, err)


def test_gc_releases_everything_not_valid(daemon, netns):
    pods = [netns.add("p") for _ in range(3)]
    results = [cni_add(daemon, p, f"g{i}")[1] for i, p in enumerate(pods)]
    valid = [{"containerID": "g1", "ifname": "eth0"}]
    rc, out, err = plugin("GC", config=daemon.config(**{"cni.dev/valid-attachments": valid}))
    assert rc == 0, (out, err)
    gone = {results[0]["interfaces"][1]["name"], results[2]["interfaces"][1]["name"]}
    wait_for(lambda: not gone & {link["ifname"] for link in links_in(daemon.netns)},
             what="GC'd veths to be deleted")
    assert results[1]["interfaces"][1]["name"] in {link["ifname"] for link in links_in(daemon.netns)}


def test_large_config_crosses_flow_control(daemon, netns):
    """A GC list far beyond one HTTP/2 frame and the initial 64 KiB window."""
    pod = netns.add("p")
    assert cni_add(daemon, pod, "keepme")[0] == 0
    valid = [{"containerID": f"ghost{i:05d}", "ifname": "eth0"} for i in range(3000)]
    valid.append({"containerID": "keepme", "ifname": "eth0"})
    config = daemon.config(**{"cni.dev/valid-attachments": valid})
    assert len(json.dumps(config)) > 130_000
    rc, out, err = plugin("GC", config=config)
    assert rc == 0, (out, err)
    assert plugin("CHECK", config=daemon.config(), container_id="keepme", netns=ns_path(pod),
                  ifname="eth0")[0] == 0
