"""A runtime that reuses a network namespace at once after DEL (a new container id each time)
must get its ADD: DEL's background veth deletion may not leave the old eth0 in the way."""
import concurrent.futures

from testlib import cni_add, cni_del, endpoints, unique, wait_for

WORKERS, CYCLES = 4, 60


def _cycle_in(daemon, ns: str) -> list[str]:
    failures = []
    for i in range(CYCLES):
        cid = unique("c") + f"x{i}"
        rc, out, err = cni_add(daemon, ns, cid)
        if rc != 0:
            failures.append(f"ADD {i}: {out or err}")
            continue
        rc, out, err = cni_del(daemon, ns, cid)
        if rc != 0:
            failures.append(f"DEL {i}: {out or err}")
    return failures


def test_add_into_a_netns_right_after_del_of_another_container_succeeds(daemon, netns):
    spaces = [netns.add("ru") for _ in range(WORKERS)]
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        failures = [f for result in pool.map(lambda ns: _cycle_in(daemon, ns), spaces)
                    for f in result]
    assert failures == [], f"{len(failures)} of {WORKERS * CYCLES} cycles failed: {failures[:5]}"
    # every address released once the reaper is done (DEL returns before it is)
    wait_for(lambda: endpoints(daemon) == [], timeout=30, what="all endpoints released")
