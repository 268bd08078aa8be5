"""Concurrency, crashes and restarts: no duplicate address, no leak, no orphan veth, no flap."""
import concurrent.futures
import json
import subprocess
import threading

from testlib import (ContinuousPing, cni_add, cni_del, endpoints, in_ns, links_in, ping,
                     plugin, unique, veths_on_bridge, wait_for)


def test_concurrent_add_del_storm(daemon, netns):
    pods = [netns.add("s") for _ in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda a: cni_add(daemon, a[1], f"storm{a[0]}"), enumerate(pods)))
    assert all(rc == 0 for rc, _, _ in results), [r for r in results if r[0]]
    addresses = [r["ips"][0]["address"] for _, r, _ in results]
    assert len(set(addresses)) == len(addresses)
    # delete the even pods while attaching 8 new ones, all at once
    extra = [netns.add("s") for _ in range(8)]
    jobs = [(cni_del, pods[i], f"storm{i}") for i in range(0, 24, 2)]
    jobs += [(cni_add, ns, f"late{i}") for i, ns in enumerate(extra)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(lambda j: j[0](daemon, j[1], j[2]), jobs))
    assert all(rc == 0 for rc, _, _ in outcomes), [o for o in outcomes if o[0]]
    expected = {f"storm{i}" for i in range(1, 24, 2)} | {f"late{i}" for i in range(8)}
    wait_for(lambda: {e["container_id"] for e in endpoints(daemon)} == expected,
             what="records to match the live pods")
    records = endpoints(daemon)
    assert len({e["address"] for e in records}) == len(records)
    wait_for(lambda: veths_on_bridge(daemon) == {e["host_ifname"] for e in records},
             what="veths on the bridge to match the records")
    assert ping(extra[0], records[0]["address"].split("/")[0])


def test_kill9_during_storm_then_restart_and_gc(daemon, netns):
    pods = [netns.add("k") for _ in range(20)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(cni_add, daemon, ns, f"kill{i}") for i, ns in enumerate(pods)]
        wait_for(lambda: len(veths_on_bridge(daemon)) >= 4, interval=0.01,
                 what="part of the storm to land before the crash")
        daemon.kill9()
        results = [f.result() for f in futures]
    daemon.start()
    ok = {f"kill{i}" for i, (rc, _, _) in enumerate(results) if rc == 0}
    assert all(rc == 0 or out["code"] == 11 for rc, out, _ in results), results
    failed = [(i, ns) for i, ns in enumerate(pods) if f"kill{i}" not in ok]
    print(f"ADDs that survived the kill: {len(ok)}, failed: {len(failed)}")
    # as a runtime does: DEL after a failed ADD, then GC with what it believes exists
    for i, ns in failed:
        rc, out, err = cni_del(daemon, ns, f"kill{i}")
        assert rc == 0, (out, err)
    valid = [{"containerID": cid, "ifname": "eth0"} for cid in sorted(ok)]
    rc, out, err = plugin("GC", config=daemon.config(**{"cni.dev/valid-attachments": valid}))
    assert rc == 0, (out, err)
    wait_for(lambda: {e["container_id"] for e in endpoints(daemon)} == ok,
             what="records to equal the successful ADDs")
    records = endpoints(daemon)
    assert len({e["address"] for e in records}) == len(records), "duplicate address after crash"
    wait_for(lambda: veths_on_bridge(daemon) == {e["host_ifname"] for e in records},
             what="no orphan veth")
    for i, ns in enumerate(pods):
        if f"kill{i}" in ok:
            assert ping(ns, "10.77.0.1"), f"pod kill{i} lost its network"
    # every failed pod can be attached again and gets a fresh, unique address
    for i, ns in failed:
        rc, out, err = cni_add(daemon, ns, f"kill{i}")
        assert rc == 0, (out, err)
    final = endpoints(daemon)
    assert len(final) == 20 and len({e["address"] for e in final}) == 20


class LinkMonitor:
    """`ip monitor link` in a netns, known to be listening before the with-block body runs: a
    marker link is added and deleted until the monitor has printed it."""

    def __init__(self, ns: str):
        self.ns, self.lines = ns, []
        self._lock = threading.Lock()

    def __enter__(self) -> "LinkMonitor":
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.ns}", "ip", "-o",
                                      "monitor", "link"], stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        marker = unique("mk")

        def seen() -> bool:
            in_ns(self.ns, "ip", "link", "add", marker, "type", "bridge")
            in_ns(self.ns, "ip", "link", "del", marker)
            with self._lock:
                return any(marker in line for line in self.lines)
        wait_for(seen, timeout=10, interval=0.05, what="ip monitor to listen")
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._reader.join(10)


def test_restart_leaves_pods_untouched(daemon, netns):
    p1, p2 = netns.add("r"), netns.add("r")
    (rc1, r1, _), (rc2, r2, _) = cni_add(daemon, p1, "keep1"), cni_add(daemon, p2, "keep2")
    assert rc1 == rc2 == 0, (r1, r2)
    ip2 = r2["ips"][0]["address"].split("/")[0]
    bridge_before = next(l for l in links_in(daemon.netns) if l["ifname"] == "podnet0")
    with LinkMonitor(daemon.netns) as monitor, ContinuousPing(p1, ip2) as pinging:
        assert ping(p1, ip2)
        daemon.restart()           # SIGTERM
        daemon.kill9()
        daemon.start()             # and a crash
        assert ping(p1, ip2)
    events = "".join(monitor.lines)
    host_ifs = {r1["interfaces"][1]["name"], r2["interfaces"][1]["name"], "podnet0"}
    assert not [line for line in events.splitlines() if any(h in line for h in host_ifs)], events
    assert pinging.sent >= 10 and pinging.lost == [], pinging.output
    bridge_after = next(l for l in links_in(daemon.netns) if l["ifname"] == "podnet0")
    assert (bridge_before["ifindex"], bridge_before["address"]) == \
        (bridge_after["ifindex"], bridge_after["address"])
    # a pod attached before the restarts is detached normally
    rc, out, err = cni_del(daemon, p1, "keep1")
    assert rc == 0, (out, err)
    wait_for(lambda: r1["interfaces"][1]["name"] not in {l["ifname"] for l in links_in(daemon.netns)},
             what="keep1's veth to go")
    assert {e["container_id"] for e in endpoints(daemon)} == {"keep2"}


def test_startup_reconcile_releases_dead_pods_and_orphans(daemon, netns):
    alive, doomed = netns.add("c"), netns.add("c")
    for ns, cid in ((alive, "alive"), (doomed, "doomed")):
        rc, out, err = cni_add(daemon, ns, cid)
        assert rc == 0, (out, err)
    daemon.stop()
    netns.remove(doomed)                       # the pod died while podnetd was down
    in_ns(daemon.netns, "ip", "link", "add", "pnfeedbeef000", "type", "veth", "peer", "name", "pnx0")
    in_ns(daemon.netns, "ip", "link", "set", "pnfeedbeef000", "master", "podnet0")
    daemon.start()
    assert {e["container_id"] for e in endpoints(daemon)} == {"alive"}
    assert "pnfeedbeef000" not in {l["ifname"] for l in links_in(daemon.netns)}
