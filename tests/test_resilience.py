"""Concurrency, crashes and restarts: no duplicate address, no leak, no orphan veth, no flap."""
import concurrent.futures
import json
import signal
import subprocess
import time

from testlib import endpoints, in_ns, links_in, ns_path, ping, plugin, wait_for


def _veths_on_bridge(daemon) -> set[str]:
    return {link["ifname"] for link in links_in(daemon.netns) if link.get("master") == "podnet0"}


def _add(daemon, ns, cid):
    return plugin("ADD", config=daemon.config(), container_id=cid, netns=ns_path(ns), ifname="eth0")


def _del(daemon, ns, cid):
    return plugin("DEL", config=daemon.config(), container_id=cid, netns=ns_path(ns), ifname="eth0")


def test_concurrent_add_del_storm(daemon, netns):
    pods = [netns.add("s") for _ in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda a: _add(daemon, a[1], f"storm{a[0]}"), enumerate(pods)))
    assert all(rc == 0 for rc, _, _ in results), [r for r in results if r[0]]
    addresses = [r["ips"][0]["address"] for _, r, _ in results]
    assert len(set(addresses)) == len(addresses)
    # delete the even pods while attaching 8 new ones, all at once
    extra = [netns.add("s") for _ in range(8)]
    jobs = [(_del, pods[i], f"storm{i}") for i in range(0, 24, 2)]
    jobs += [(_add, ns, f"late{i}") for i, ns in enumerate(extra)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(lambda j: j[0](daemon, j[1], j[2]), jobs))
    assert all(rc == 0 for rc, _, _ in outcomes), [o for o in outcomes if o[0]]
    expected = {f"storm{i}" for i in range(1, 24, 2)} | {f"late{i}" for i in range(8)}
    wait_for(lambda: {e["container_id"] for e in endpoints(daemon)} == expected,
             what="records to match the live pods")
    records = endpoints(daemon)
    assert len({e["address"] for e in records}) == len(records)
    wait_for(lambda: _veths_on_bridge(daemon) == {e["host_ifname"] for e in records},
             what="veths on the bridge to match the records")
    assert ping(extra[0], records[0]["address"].split("/")[0])


def test_kill9_during_storm_then_restart_and_gc(daemon, netns):
    pods = [netns.add("k") for _ in range(20)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(_add, daemon, ns, f"kill{i}") for i, ns in enumerate(pods)]
        wait_for(lambda: len(_veths_on_bridge(daemon)) >= 4, interval=0.01,
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
        rc, out, err = _del(daemon, ns, f"kill{i}")
        assert rc == 0, (out, err)
    valid = [{"containerID": cid, "ifname": "eth0"} for cid in sorted(ok)]
    rc, out, err = plugin("GC", config=daemon.config(**{"cni.dev/valid-attachments": valid}))
    assert rc == 0, (out, err)
    wait_for(lambda: {e["container_id"] for e in endpoints(daemon)} == ok,
             what="records to equal the successful ADDs")
    records = endpoints(daemon)
    assert len({e["address"] for e in records}) == len(records), "duplicate address after crash"
    wait_for(lambda: _veths_on_bridge(daemon) == {e["host_ifname"] for e in records},
             what="no orphan veth")
    for i, ns in enumerate(pods):
        if f"kill{i}" in ok:
            assert ping(ns, "10.77.0.1"), f"pod kill{i} lost its network"
    # every failed pod can be attached again and gets a fresh, unique address
    for i, ns in failed:
        rc, out, err = _add(daemon, ns, f"kill{i}")
        assert rc == 0, (out, err)
    final = endpoints(daemon)
    assert len(final) == 20 and len({e["address"] for e in final}) == 20


def test_restart_leaves_pods_untouched(daemon, netns):
    p1, p2 = netns.add("r"), netns.add("r")
    r1, r2 = _add(daemon, p1, "keep1")[1], _add(daemon, p2, "keep2")[1]
    ip2 = r2["ips"][0]["address"].split("/")[0]
    bridge_before = next(l for l in links_in(daemon.netns) if l["ifname"] == "podnet0")
    monitor = subprocess.Popen(["nsenter", f"--net=/run/netns/{daemon.netns}", "ip", "-o",
                                "monitor", "link"], stdout=subprocess.PIPE, text=True)
    pinger = subprocess.Popen(["nsenter", f"--net={ns_path(p1)}", "ping", "-n", "-i", "0.01",
                               "-w", "30", ip2], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        daemon.restart()           # SIGTERM
        daemon.kill9()
        daemon.start()             # and a crash
        assert ping(p1, ip2)
    finally:
        pinger.send_signal(signal.SIGINT)
        ping_out = pinger.communicate(timeout=10)[0]
        monitor.terminate()
        events = monitor.communicate(timeout=10)[0]
    host_ifs = {r1["interfaces"][1]["name"], r2["interfaces"][1]["name"], "podnet0"}
    assert not [line for line in events.splitlines() if any(h in line for h in host_ifs)], events
    assert " 0% packet loss" in ping_out, ping_out
    bridge_after = next(l for l in links_in(daemon.netns) if l["ifname"] == "podnet0")
    assert (bridge_before["ifindex"], bridge_before["address"]) == \
        (bridge_after["ifindex"], bridge_after["address"])
    # a pod attached before the restarts is detached normally
    rc, out, err = _del(daemon, p1, "keep1")
    assert rc == 0, (out, err)
    wait_for(lambda: r1["interfaces"][1]["name"] not in {l["ifname"] for l in links_in(daemon.netns)},
             what="keep1's veth to go")
    assert {e["container_id"] for e in endpoints(daemon)} == {"keep2"}


def test_startup_reconcile_releases_dead_pods_and_orphans(daemon, netns):
    alive, doomed = netns.add("c"), netns.add("c")
    _add(daemon, alive, "alive")
    _add(daemon, doomed, "doomed")
    daemon.stop()
    netns.remove(doomed)                       # the pod died while podnetd was down
    in_ns(daemon.netns, "ip", "link", "add", "pnfeedbeef000", "type", "veth", "peer", "name", "pnx0")
    in_ns(daemon.netns, "ip", "link", "set", "pnfeedbeef000", "master", "podnet0")
    daemon.start()
    assert {e["container_id"] for e in endpoints(daemon)} == {"alive"}
    assert "pnfeedbeef000" not in {l["ifname"] for l in links_in(daemon.netns)}
