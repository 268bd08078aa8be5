"""Cost the anti-spoofing set adds to each attach/detach: one `nft` exec adding (or deleting)
one (port, MAC, IP) element of `bridge podnet`. Runs in a throwaway netns; prints p50/p99.
Usage: python bench/antispoof_cost.py [N]"""
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from podnetd import firewall, firewall_rules  # noqa: E402
from podnetd.kernel import netns  # noqa: E402

POLICY = firewall_rules.Policy(bridge="podnet0", gateway="10.99.1.1", pod_cidr="10.99.1.0/24",
                               cluster=firewall_rules.ClusterRules("10.99.0.0/16", vxlan_port=8472))


def run(n: int) -> dict:
    fw = firewall.Firewall(POLICY, lambda: [])
    fw.sync()
    adds, dels = [], []
    recs = [type("R", (), {"host_ifname": f"pn{i:011x}", "mac": f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
                           "address": f"10.99.1.{i % 250 + 2}/24"}) for i in range(n)]
    for r in recs:  # attach: waits for its element
        t = time.perf_counter()
        fw.allow(r)
        adds.append(time.perf_counter() - t)
    for r in recs:  # detach: queues the removal
        t = time.perf_counter()
        fw.forbid(r)
        dels.append(time.perf_counter() - t)
    t = time.perf_counter()
    fw.close()  # wait for the queued removals
    drained = time.perf_counter() - t
    fw = firewall.Firewall(POLICY, lambda: recs)
    t = time.perf_counter()
    fw.sync()  # the reconcile loop's full rewrite, with n elements
    full = time.perf_counter() - t
    t = time.perf_counter()
    fw.sync()  # nothing drifted: one listing per table, no rewrite
    unchanged = time.perf_counter() - t
    q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))] * 1000  # noqa: E731
    return {"n": n, "add_p50_ms": q(adds, .5), "add_p99_ms": q(adds, .99),
            "del_p50_ms": q(dels, .5), "del_p99_ms": q(dels, .99),
            "add_mean_ms": statistics.mean(adds) * 1000,
            "queued_removals_drained_ms_per_element": drained * 1000 / n, "full_table_rewrite_ms": full * 1000,
            "unchanged_check_ms": unchanged * 1000}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    name = f"pnbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        result = netns.run_in_netns(f"/run/netns/{name}", run, n)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
