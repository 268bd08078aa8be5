"""The runtime as a CNI client: the reference bridge conflist instead of podnet, two nodes
whose pods reach each other by pod IP, hostNetwork, CNI GC on start."""
import json
import os

import pytest

from testlib import Netns, in_ns, ping, sh, unique, wait_for
from runtime_lib import RuntimeNode, busybox_archive, container, leftovers, pod, runc_ids


@pytest.fixture
def nodes():
    spaces = Netns()
    started = []

    def start(cidr, **kw):
        n = RuntimeNode(spaces.add("rn"), cidr, **kw).start()
        started.append(n)
        n.ctl("image", "import", "busybox", busybox_archive())
        return n
    start.spaces = spaces
    try:
        yield start
    finally:
        for n in reversed(started):
            n.cleanup()
            assert not leftovers(n.workdir)
        spaces.cleanup()


def sleeper(name, **spec):
    return pod(name, [container("c", "exec sleep 3600")], **spec)


def test_reference_bridge_conflist(nodes):
    node = nodes("10.78.4.0/24", kind="bridge")
    try:
        p = node.run(sleeper("refpod"))
        ip = p["status"]["podIP"]
        assert ip.startswith("10.88.77."), p["status"]
        assert ip not in node.ctl("endpoints").stdout  # not podnet's doing
        assert ping(node.netns, ip)
        assert ip in node.exec("refpod", "ip", "-4", "-o", "addr", "show", "eth0").stdout
        ipam = os.path.join(node.workdir, "ipam", "refbridge")
        assert ip in os.listdir(ipam)
    finally:
        node.rm("refpod")
    assert ip not in os.listdir(ipam)  # DEL ran through host-local


def test_pods_on_two_nodes_reach_each_other(nodes):
    a = nodes("10.78.5.0/24")
    b = nodes("10.78.6.0/24")
    va, vb = unique("va"), unique("vb")
    sh("ip", "link", "add", va, "netns", a.netns, "type", "veth", "peer", vb, "netns", b.netns)
    in_ns(a.netns, "ip", "addr", "add", "192.168.251.1/30", "dev", va)
    in_ns(b.netns, "ip", "addr", "add", "192.168.251.2/30", "dev", vb)
    in_ns(a.netns, "ip", "link", "set", va, "up")
    in_ns(b.netns, "ip", "link", "set", vb, "up")
    in_ns(a.netns, "ip", "route", "add", "10.78.6.0/24", "via", "192.168.251.2")
    in_ns(b.netns, "ip", "route", "add", "10.78.5.0/24", "via", "192.168.251.1")
    try:
        pa = a.run(sleeper("pa"))
        pb = b.run(pod("pb", [container("c", "exec nc -ll -p 7000 -e echo pong-from-b")]))
        ip_b = pb["status"]["podIP"]
        # the node's address, as the kubelet reports its InternalIP
        assert (pa["status"]["hostIP"], pb["status"]["hostIP"]) == ("192.168.251.1",
                                                                    "192.168.251.2")
        r = a.exec("pa", "ping", "-c", "1", "-W", "2", ip_b, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        out = a.exec("pa", "nc", "-w", "2", ip_b, "7000").stdout
        assert "pong-from-b" in out
        r = b.exec("pb", "ping", "-c", "1", "-W", "2", pa["status"]["podIP"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        a.rm("pa")
        b.rm("pb")


def test_host_network_skips_cni(nodes):
    node = nodes("10.78.7.0/24")
    try:
        p = node.run(sleeper("hostnet", hostNetwork=True))
        assert not [l for l in node.ctl("endpoints").stdout.splitlines()[1:] if l.strip()]
        links = node.exec("hostnet", "ip", "-o", "link").stdout
        assert "podnet0" in links  # it sees the node's own interfaces
        uid = p["metadata"]["uid"][:12]
        assert not os.path.exists(f"/run/netns/podnet-{uid}")
    finally:
        node.rm("hostnet")


def test_gc_on_start_releases_stale_attachments(nodes):
    """With a CNI 1.1 conflist, the runtime runs GC at start with its pods as the valid
    attachments: an attachment nobody owns is released."""
    node = nodes("10.78.8.0/24")
    node.run(sleeper("keeper"))
    try:
        conf = os.path.join(node.conf_dir, "10-test.conflist")
        with open(conf) as f:
            doc = json.load(f)
        doc["cniVersion"] = "1.1.0"
        doc["plugins"] = doc["plugins"][:1]  # portmap of this Debian does not know 1.1
        with open(conf, "w") as f:
            json.dump(doc, f)
        stale_ns = node_ns = unique("st")
        sh("ip", "netns", "add", stale_ns)
        try:
            from testlib import plugin
            rc, out, err = plugin("ADD", config=node.daemon.config(name=doc["name"]),
                                  container_id="stale-one", netns=f"/run/netns/{stale_ns}",
                                  ifname="eth0")
            assert rc == 0, (out, err)
            assert "stale-one" in node.ctl("endpoints", "-o", "json").stdout
            node.daemon.restart()
            node.wait("keeper", lambda p: "stale-one" not in node.ctl(
                "endpoints", "-o", "json").stdout, what="GC of the stale attachment")
            assert node.get("keeper")["status"]["podIP"] in node.ctl("endpoints").stdout
        finally:
            sh("ip", "netns", "del", node_ns, check=False)
    finally:
        node.rm("keeper")


def test_crun_selectable(nodes):
    node = nodes("10.78.10.0/24", oci="crun")
    try:
        p = node.run(pod("crunpod", [container("c", "echo under-crun; exec sleep 3600")]))
        uid = p["metadata"]["uid"][:12]
        node.wait("crunpod", lambda p: "under-crun" in node.logs("crunpod"))
        assert node.exec("crunpod", "sh", "-c", "exit 4", check=False).returncode == 4
        assert f"pn-{uid}-c" in sh("crun", "list").stdout
        assert f"pn-{uid}" not in sh("runc", "list").stdout
    finally:
        node.rm("crunpod")
    assert f"pn-{uid}" not in sh("crun", "list").stdout


def test_failed_cni_add_is_rolled_back(nodes):
    """A chain whose second plugin fails: the first plugin's ADD is undone by DEL, the pause
    container, netns and mounts are gone, and the pod says why. The pod stays Pending (the
    sandbox is tried again with back-off, test_runtime_sandbox.py); a leak of any attempt
    would stay, so nothing left between two attempts proves the rollback."""
    node = nodes("10.78.11.0/24")
    conf = os.path.join(node.conf_dir, "10-test.conflist")
    with open(conf) as f:
        doc = json.load(f)
    doc["plugins"].insert(1, {"type": "no-such-plugin"})
    with open(conf, "w") as f:
        json.dump(doc, f)
    try:
        path = os.path.join(node.workdir, "doomed.json")
        with open(path, "w") as f:
            json.dump(sleeper("doomed"), f)
        r = node.ctl("pod", "run", "-f", path, check=False)
        assert r.returncode == 0 and "Pending" in r.stdout, r.stdout + r.stderr
        p = node.get("doomed")
        uid = p["metadata"]["uid"][:12]
        assert p["status"]["phase"] == "Pending" and not p["status"]["podIP"], p["status"]
        describe = node.ctl("pod", "describe", "doomed").stdout
        assert "FailedCreatePodSandBox" in describe and "no-such-plugin" in describe, describe

        def nothing_left() -> bool:
            return not [l for l in node.ctl("endpoints").stdout.splitlines()[1:] if l.strip()] \
                and not [i for i in runc_ids() if i.startswith(f"pn-{uid}")] \
                and not os.path.exists(f"/run/netns/podnet-{uid}") \
                and not leftovers(node.workdir)
        wait_for(nothing_left, timeout=30, what="nothing left of a failed sandbox attempt")
    finally:
        node.rm("doomed")


def test_host_port_through_portmap(nodes):
    node = nodes("10.78.12.0/24")
    try:
        node.run(pod("hp", [container("c", "exec nc -ll -p 8080 -e echo via-hostport",
                                      ports=[{"containerPort": 8080, "hostPort": 18080}])]))
        node.wait("hp", lambda p: all("running" in c["state"]
                                      for c in p["status"]["containerStatuses"]))
        out = in_ns(node.netns, "busybox", "nc", "-w", "2", "10.78.12.1", "18080",
                    check=False, input="").stdout
        assert "via-hostport" in out
    finally:
        node.rm("hp")
