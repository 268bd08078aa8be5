"""Documented pod lifecycle behaviour that had no test: restart back-off (doubling, cap, reset),
OnFailure, httpGet and tcpSocket liveness, a sidecar's startup probe holding back later init
containers, adoption after kill -9 and of a container that exited while podnetd was down, and
`podnetctl status`. Real runc, real CNI; the node runs with --restart-backoff 0.5 and
--restart-backoff-max 2 (runtime_lib), so back-off resets after 4 s of clean running."""
import json
import os
import re
import subprocess

import pytest

from testlib import PY, REPO, sh, wait_for
from runtime_lib import container, pod, runtime_node, shared_host_dir, state_of


@pytest.fixture(scope="module")
def node():
    with runtime_node("lc", "10.78.41.0/24") as n:
        yield n


@pytest.fixture
def shared_dir():
    with shared_host_dir("lc") as d:
        yield d


def backoff_delays(node, name: str) -> list[float]:
    text = node.ctl("pod", "describe", name).stdout
    return [float(x) for x in re.findall(r"Back-off restarting failed container c \(([\d.]+)s\)",
                                         text)]


def test_restart_backoff_doubles_to_the_cap_and_resets_after_a_clean_run(node):
    # runs 1-5 fail at once, run 6 lasts 5 s (> 2 x the 2 s cap) then fails, runs 7-8 fail at
    # once, run 9 stays up. Expected waits: none, 0.5, 1, 2, 2 (capped), none (reset), 0.5, 1.
    script = ("n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; "
              "if [ $n -eq 6 ]; then sleep 5; exit 1; fi; "
              "if [ $n -ge 9 ]; then exec sleep 3600; fi; exit 1")
    doc = pod("backoff", [container("c", script, volumeMounts=[{"name": "d", "mountPath": "/data"}])],
              volumes=[{"name": "d", "emptyDir": {}}])
    try:
        node.run(doc)
        p = node.wait("backoff", lambda p: state_of(p, "c")["restartCount"] >= 8
                      and "running" in state_of(p, "c")["state"], timeout=90,
                      what="the ninth run")
        assert node.exec("backoff", "cat", "/data/n").stdout.strip() == "9"
        assert backoff_delays(node, "backoff") == [0.5, 1, 2, 2, 0.5, 1]
        assert state_of(p, "c")["lastState"]["terminated"]["exitCode"] == 1
    finally:
        node.rm("backoff")


def test_on_failure_restarts_failed_containers_only(node):
    doc = pod("onfail", [
        container("ok", "echo fine; exit 0"),
        container("c", "n=$(cat /data/n 2>/dev/null || echo 0); echo $((n+1)) > /data/n; "
                       "[ $n -ge 1 ]", volumeMounts=[{"name": "d", "mountPath": "/data"}])],
              restartPolicy="OnFailure", volumes=[{"name": "d", "emptyDir": {}}])
    try:
        node.run(doc)
        p = node.wait("onfail", lambda p: p["status"]["phase"] == "Succeeded", timeout=60,
                      what="phase Succeeded")
        assert state_of(p, "ok")["restartCount"] == 0
        assert state_of(p, "ok")["state"]["terminated"]["reason"] == "Completed"
        assert state_of(p, "c")["restartCount"] == 1
        assert state_of(p, "c")["lastState"]["terminated"]["exitCode"] == 1
        assert state_of(p, "c")["state"]["terminated"]["exitCode"] == 0
    finally:
        node.rm("onfail")


def test_http_get_and_tcp_socket_liveness_restart_a_dead_server(node):
    http = ("mkdir -p /tmp/www; echo ok > /tmp/www/index.html; httpd -p 8080 -h /tmp/www; "
            "exec sleep 3600")
    tcp = "nc -lk -p 9090 -e true & echo $! > /tmp/nc.pid; exec sleep 3600"
    doc = pod("liveness", [
        container("web", http, livenessProbe={"httpGet": {"path": "/index.html", "port": 8080},
                                              "periodSeconds": 1, "failureThreshold": 2}),
        container("tcp", tcp, livenessProbe={"tcpSocket": {"port": 9090}, "periodSeconds": 1,
                                             "failureThreshold": 2})])
    try:
        node.run(doc)
        node.wait("liveness", lambda p: all("running" in c["state"]
                                            for c in p["status"]["containerStatuses"]))
        # both probes pass while the servers serve: give them several periods
        wait_for(lambda: node.ctl("pod", "describe", "liveness").stdout.count("Started") >= 2,
                 timeout=30, what="containers started")
        p = node.get("liveness")
        assert state_of(p, "web")["restartCount"] == state_of(p, "tcp")["restartCount"] == 0
        node.exec("liveness", "rm", "/tmp/www/index.html", container="web")   # now a 404
        node.exec("liveness", "sh", "-c", "kill $(cat /tmp/nc.pid)", container="tcp")
        p = node.wait("liveness", lambda p: state_of(p, "web")["restartCount"] >= 1
                      and state_of(p, "tcp")["restartCount"] >= 1, timeout=60,
                      what="liveness restarts")
        described = node.ctl("pod", "describe", "liveness").stdout
        assert "failed liveness probe" in described
        assert "404" in described, described
    finally:
        node.rm("liveness")


def test_a_sidecars_startup_probe_holds_back_the_init_containers_after_it(node, shared_dir):
    startup = {"exec": {"command": ["test", "-f", "/tmp/go"]}, "periodSeconds": 1,
               "failureThreshold": 600}
    mount = [{"name": "out", "mountPath": "/out"}]
    doc = pod("gated", [container("app", "echo app >> /out/order; exec sleep 3600",
                                  volumeMounts=mount)],
              initContainers=[
                  container("side", "exec sleep 3600", restartPolicy="Always",
                            startupProbe=startup),
                  container("after", "echo after >> /out/order", volumeMounts=mount)],
              volumes=[{"name": "out", "hostPath": {"path": shared_dir}}],
              terminationGracePeriodSeconds=1)   # sleep as PID 1 ignores SIGTERM
    order = os.path.join(shared_dir, "order")
    try:
        node.run(doc)
        node.wait("gated", lambda p: "running" in state_of(p, "side")["state"], what="sidecar")
        # several probe periods with the probe failing: nothing after the sidecar starts
        wait_for(lambda: node.ctl("pod", "describe", "gated").stdout.count("Unhealthy") >= 3,
                 timeout=30, what="three failed startup probes")
        p = node.get("gated")
        assert not os.path.exists(order)
        assert "waiting" in state_of(p, "after")["state"]
        assert p["status"]["phase"] == "Pending"
        node.exec("gated", "touch", "/tmp/go", container="side")
        node.wait("gated", lambda p: p["status"]["phase"] == "Running"
                  and "running" in state_of(p, "app")["state"], what="app running")
        wait_for(lambda: os.path.exists(order) and open(order).read().split() == ["after", "app"],
                 timeout=30, what="init then app")
    finally:
        node.rm("gated")


def _runc_status(cid: str) -> str:
    out = sh("runc", "state", cid, check=False)
    return json.loads(out.stdout)["status"] if out.returncode == 0 else "gone"


def test_adoption_after_kill9_and_of_a_container_that_exited_meanwhile(node, shared_dir):
    script = "while [ ! -f /shared/stop ]; do sleep 0.1; done; rm /shared/stop; exit 4"
    doc = pod("adopted", [container("c", script, volumeMounts=[{"name": "s", "mountPath":
                                                                 "/shared"}])],
              volumes=[{"name": "s", "hostPath": {"path": shared_dir}}])
    try:
        p = node.run(doc)
        cid = f"pn-{p['metadata']['uid'][:12]}-c"
        node.wait("adopted", lambda p: "running" in state_of(p, "c")["state"])
        pid = json.loads(sh("runc", "state", cid).stdout)["pid"]
        node.daemon.kill9()
        node.daemon.start(timeout=30)
        assert json.loads(sh("runc", "state", cid).stdout)["pid"] == pid   # not restarted
        assert state_of(node.get("adopted"), "c")["restartCount"] == 0
        # the container ends while podnetd is down: seen at start, restarted once
        node.daemon.stop()
        open(os.path.join(shared_dir, "stop"), "w").close()
        wait_for(lambda: _runc_status(cid) in ("stopped", "gone"), timeout=30,
                 what="the container to exit while podnetd is down")
        node.daemon.start(timeout=30)
        p = node.wait("adopted", lambda p: state_of(p, "c")["restartCount"] == 1
                      and "running" in state_of(p, "c")["state"], timeout=60,
                      what="the restart after the exit seen at start")
        assert state_of(p, "c")["lastState"]["terminated"]["exitCode"] == 4
    finally:
        node.rm("adopted")


def test_podnetctl_status_says_ready_with_free_addresses(node):
    out = subprocess.run([PY, "-m", "podnetd.ctl.main", "status", "--socket", node.socket,
                          "-o", "json"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["ready"] is True and 0 < status["free_addresses"] <= 253, status
