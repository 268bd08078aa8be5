"""Node events, Kubernetes-shaped: repeated ones counted, bounded, listed and watched through
`podnetctl get events [-w] [--for KIND/NAME]` with kubectl's columns; the fabric records what an
operator must see (a peer gone, drift repaired) and the runtime its pods' events."""
import asyncio
import json
import signal
import subprocess
import threading
import time

import pytest

from podnetd.events import EventRecorder, ObjectRef, parse_ref
from podnetd.lab import Lab
from testlib import PY, REPO, in_ns, podnetctl, unique, wait_for
from runtime_lib import container, pod, runtime_node


def test_a_repeated_event_is_counted_not_duplicated():
    rec = EventRecorder("n1")
    web = ObjectRef("Pod", "web", "default")
    first = rec.record(web, "Warning", "BackOff", "Back-off restarting failed container c")
    rec.record(ObjectRef("Node", "n1"), "Normal", "Starting", "Starting podnetd.")
    again = rec.record(web, "Warning", "BackOff", "Back-off restarting failed container c")
    events = rec.list()
    assert len(events) == 2
    assert again["count"] == 2 and again["metadata"]["name"] == first["metadata"]["name"]
    assert events[-1] is again                     # ordered by last seen
    assert again["involvedObject"] == {"kind": "Pod", "name": "web", "namespace": "default"}
    assert again["source"] == {"component": "podnetd", "host": "n1"}
    assert again["firstTimestamp"].endswith("Z") and again["lastTimestamp"].endswith("Z")
    assert rec.list(ObjectRef("Node", "n1"))[0]["reason"] == "Starting"
    with pytest.raises(ValueError):
        rec.record(web, "Error", "X", "not a Kubernetes event type")


def test_the_store_is_bounded_oldest_first():
    rec = EventRecorder("n1", max_events=10)
    for i in range(25):
        rec.record(ObjectRef("Node", f"n{i}"), "Normal", "PeerReachable", "up")
    names = [e["involvedObject"]["name"] for e in rec.list()]
    assert names == [f"n{i}" for i in range(15, 25)]


def test_watchers_get_events_recorded_from_other_threads_and_slow_ones_are_cut_off():
    async def scenario():
        rec = EventRecorder("n1")
        rec.bind_loop(asyncio.get_running_loop())
        queue = rec.watch()
        thread = threading.Thread(target=rec.record, args=(ObjectRef("Node", "n2"), "Warning",
                                                           "PeerUnreachable", "gone"))
        thread.start()
        event = await asyncio.wait_for(queue.get(), 10)
        thread.join()
        assert event["reason"] == "PeerUnreachable"
        slow = rec.watch()
        for i in range(300):
            rec.record(ObjectRef("Node", "n1"), "Normal", "DriftRepaired", f"pass {i}")
        items = [slow.get_nowait() for _ in range(slow.qsize())]
        assert items[-1] is None and len(items) <= 257    # ended, never grown past the backlog
    asyncio.run(scenario())


@pytest.mark.parametrize("text, ref", [("pod/web", ObjectRef("Pod", "web")),
                                       ("Node/n1", ObjectRef("Node", "n1")),
                                       ("po/x", ObjectRef("Pod", "x"))])
def test_for_takes_kubectls_kind_slash_name(text, ref):
    assert parse_ref(text) == ref


@pytest.mark.parametrize("text", ["web", "svc/web", "pod/", "/web", ""])
def test_for_refuses_anything_else(text):
    with pytest.raises(ValueError):
        parse_ref(text)


def _ctl(socket: str, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    return podnetctl(*args, socket=socket, timeout=timeout)


@pytest.mark.root
def test_pod_events_are_listed_and_watched_with_kubectls_columns():
    with runtime_node("ev", "10.78.51.0/24") as node:
        node.run(pod("evpod", [container("c", "exec sleep 3600")]))
        out = _ctl(node.socket, "get", "events", "--for", "pod/evpod")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
        reasons = {line.split()[2] for line in lines[1:]}
        assert {"Scheduled", "Started"} <= reasons, out.stdout
        assert all(line.split()[3] == "pod/evpod" for line in lines[1:]), out.stdout
        listed = json.loads(_ctl(node.socket, "get", "events", "-o", "json").stdout)
        assert listed["kind"] == "List"
        assert any(e["involvedObject"]["kind"] == "Node" and e["reason"] == "Starting"
                   for e in listed["items"])
        watch = subprocess.Popen([PY, "-m", "podnetd.ctl.main", "get", "events", "-w", "--for",
                                  "pod/evpod", "--socket", node.socket], stdout=subprocess.PIPE,
                                 text=True, cwd=REPO)
        try:
            assert "REASON" in watch.stdout.readline()        # the listing came first
            node.ctl("pod", "stop", "evpod")
            seen = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any("Killing" in s for s in seen):
                seen.append(watch.stdout.readline())
            assert any("Killing" in s and "pod/evpod" in s for s in seen), seen
        finally:
            watch.terminate()
            watch.wait(10)
            node.rm("evpod")


@pytest.mark.root
def test_the_fabric_records_a_lost_peer_and_repaired_drift():
    lab = Lab.up(3, "l2", "static", name=unique("ev"), node_timeout=3, reconcile_interval=1,
                 wait=30)
    try:
        assert lab.wait_routes(30) == {}
        n1 = lab.socket("n1")

        def events_of(ref: str) -> list[dict]:
            return json.loads(_ctl(n1, "get", "events", "--for", ref, "-o", "json").stdout)["items"]

        assert any(e["reason"] == "PeerReachable" for e in events_of("node/n3"))
        cidr = lab.st.nodes["n2"]["pod_cidr"]
        in_ns(lab.netns("n1"), "ip", "route", "del", cidr)          # drift
        repaired = wait_for(lambda: [e for e in events_of("node/n1")
                                     if e["reason"] == "DriftRepaired"], 30,
                            what="a DriftRepaired event")
        assert "1 entries reinstalled" in repaired[0]["message"], repaired
        lab.stop_daemon("n3", signal.SIGKILL)
        lost = wait_for(lambda: [e for e in events_of("node/n3")
                                 if e["reason"] == "PeerUnreachable"], 30,
                        what="a PeerUnreachable event for n3")
        assert lost[0]["type"] == "Warning" and "n3" in lost[0]["message"]
        table = _ctl(n1, "get", "events").stdout
        assert any("PeerUnreachable" in line and "node/n3" in line for line in table.splitlines())
    finally:
        lab.down()
