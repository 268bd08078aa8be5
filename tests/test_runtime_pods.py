"""The pod runtime end to end: real runc, real CNI (podnet + portmap), one podnetd per module."""
import json
import os

import pytest
import yaml

from testlib import PY, REPO, ping, sh
from runtime_lib import container, pod, runc_ids, runtime_node, shared_host_dir, state_of


@pytest.fixture(scope="module")
def node():
    with runtime_node("rn", "10.78.1.0/24") as n:
        yield n


@pytest.fixture
def shared_dir():
    with shared_host_dir("hp") as d:
        yield d


def running(p) -> bool:
    return all("running" in c["state"] for c in p["status"]["containerStatuses"])


def test_pod_basics_localhost_emptydir_shm(node):
    """Two containers: over localhost, an emptyDir and /dev/shm; the pod IP from CNI answers
    on the node; pod get is Kubernetes-shaped; exec passes the exit code through."""
    doc = pod("basics", [
        container("server", "echo data > /shared/file; echo shm-data > /dev/shm/seg; "
                            "exec nc -ll -p 8080 -e echo from-server",
                  volumeMounts=[{"name": "shared", "mountPath": "/shared"}],
                  ports=[{"containerPort": 8080}]),
        container("client", "until [ -f /shared/file ]; do sleep 0.1; done; "
                            # the server writes the file just before nc listens: retry
                            "until nc 127.0.0.1 8080 </dev/null; do sleep 0.1; done; "
                            "cat /shared/file /dev/shm/seg; "
                            "echo done; exec sleep 3600",
                  volumeMounts=[{"name": "shared", "mountPath": "/shared"}])],
        volumes=[{"name": "shared", "emptyDir": {}}])
    try:
        p = node.run(doc)
        assert p["kind"] == "Pod" and p["apiVersion"] == "v1"
        ip = p["status"]["podIP"]
        assert ip.startswith("10.78.1."), p["status"]
        assert ip in node.ctl("endpoints").stdout  # podnet gave the address
        p = node.wait("basics", lambda p: p["status"]["phase"] == "Running" and running(p))
        node.wait("basics", lambda p: "done" in node.logs("basics", "-c", "client"),
                  what="client output")
        out = node.logs("basics", "-c", "client")
        assert "from-server" in out and "data" in out and "shm-data" in out, out
        assert ping(node.netns, ip)
        # exit codes pass through, stdout too
        r = node.exec("basics", "sh", "-c", "echo hi; exit 7", container="client", check=False)
        assert r.returncode == 7 and r.stdout == "hi\n"
        assert node.exec("basics", "hostname", container="server").stdout.strip() == "basics"
        # the same namespaces: both see the same eth0 address
        addr = node.exec("basics", "ip", "-4", "-o", "addr", "show", "eth0",
                         container="client").stdout
        assert ip in addr
        ls = node.ctl("pod", "ls").stdout
        assert "basics" in ls and "2/2" in ls and ip in ls
        y = yaml.safe_load(node.ctl("pod", "get", "basics", "-o", "yaml").stdout)
        assert y["spec"]["containers"][0]["name"] == "server"
        assert {c["type"] for c in y["status"]["conditions"]} >= {"Ready", "Initialized"}
        assert "Events:" in node.ctl("pod", "describe", "basics").stdout
        ts = node.logs("basics", "-c", "client", "--timestamps").splitlines()[0]
        assert ts.split()[0].endswith("Z")
    finally:
        node.rm("basics")
    assert not [i for i in runc_ids() if i.startswith("pn-" + p["metadata"]["uid"][:12])]
    assert not os.path.exists(f"/run/netns/podnet-{p['metadata']['uid'][:12]}")


def test_init_and_sidecar_order(node, shared_dir):
    """Init containers in order, a native sidecar started before what follows it and stopped
    after the app; seen from the containers' own output."""
    mount = [{"name": "out", "mountPath": "/out"}]
    term = "trap 'echo {0}-stop >> /out/order; exit 0' TERM; echo {0}-start >> /out/order; " \
           "sleep 3600 & wait"
    doc = pod("order", [container("app", term.format("app"), volumeMounts=mount)],
              initContainers=[
                  container("init1", "echo init1 >> /out/order", volumeMounts=mount),
                  container("side", term.format("side"), volumeMounts=mount,
                            restartPolicy="Always"),
                  container("init2", "echo init2 >> /out/order", volumeMounts=mount)],
              volumes=[{"name": "out", "hostPath": {"path": shared_dir}}],
              terminationGracePeriodSeconds=5)
    try:
        node.run(doc)
        node.wait("order", lambda p: running(p) and p["status"]["phase"] == "Running")
        order = os.path.join(shared_dir, "order")
        node.wait("order", lambda p: "app-start" in open(order).read(), what="app start")
        node.ctl("pod", "stop", "order")
        lines = open(order).read().split()
        assert lines == ["init1", "side-start", "init2", "app-start", "app-stop", "side-stop"], lines
        p = node.get("order")
        assert state_of(p, "init1")["state"]["terminated"]["reason"] == "Completed"
        assert state_of(p, "app")["state"]["terminated"]["exitCode"] == 0
    finally:
        node.rm("order")


def test_crash_loop_backoff_and_previous_logs(node):
    doc = pod("crash", [container("c", "echo attempt; exit 3")])
    try:
        node.run(doc)
        p = node.wait("crash", lambda p: state_of(p, "c")["state"].get("waiting", {}).get(
            "reason") == "CrashLoopBackOff" and state_of(p, "c")["restartCount"] >= 2,
            what="CrashLoopBackOff")
        c = state_of(p, "c")
        assert c["lastState"]["terminated"]["exitCode"] == 3
        assert c["lastState"]["terminated"]["reason"] == "Error"
        assert "CrashLoopBackOff" in node.ctl("pod", "ls").stdout
        assert node.logs("crash", "--previous").strip() == "attempt"
        assert "BackOff" in node.ctl("pod", "describe", "crash").stdout
    finally:
        node.rm("crash")


def test_liveness_failure_restarts_and_readiness_flips(node):
    live = {"exec": {"command": ["test", "-f", "/tmp/healthy"]}, "periodSeconds": 1,
            "failureThreshold": 1}
    ready = {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1}
    doc = pod("probes", [container("c", "touch /tmp/healthy; exec sleep 3600",
                                   livenessProbe=live, readinessProbe=ready)])
    try:
        node.run(doc)
        p = node.wait("probes", lambda p: running(p))
        assert not state_of(p, "c")["ready"]
        node.exec("probes", "touch", "/tmp/ready")
        node.wait("probes", lambda p: state_of(p, "c")["ready"], what="ready")
        node.exec("probes", "rm", "/tmp/healthy")
        p = node.wait("probes", lambda p: state_of(p, "c")["restartCount"] >= 1,
                      what="liveness restart")
        assert "failed liveness probe" in node.ctl("pod", "describe", "probes").stdout
        # a fresh container: its writable layer is new, so it is not ready any more
        p = node.wait("probes", lambda p: running(p))
        assert not state_of(p, "c")["ready"]
    finally:
        node.rm("probes")


def test_memory_hog_is_oom_killed(node):
    doc = pod("hog", [{"name": "hog", "image": "busybox", "command": [
        "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        "resources": {"limits": {"memory": "16Mi"}}}],
              restartPolicy="Never")
    try:
        node.run(doc)
        p = node.wait("hog", lambda p: "terminated" in state_of(p, "hog")["state"])
        term = state_of(p, "hog")["state"]["terminated"]
        assert term["reason"] == "OOMKilled" and term["exitCode"] == 137, term
        assert p["status"]["phase"] == "Failed"
        assert "OOMKilled" in node.ctl("pod", "ls").stdout
    finally:
        node.rm("hog")


def test_sigterm_ignored_until_grace_then_sigkill_and_prestop(node, shared_dir):
    mount = [{"name": "out", "mountPath": "/out"}]
    doc = pod("stubborn", [
        container("ignores", "trap '' TERM; while true; do sleep 1; done",
                  lifecycle={"preStop": {"exec": {"command": [
                      "sh", "-c", "echo prestop-ran > /out/prestop"]}}}, volumeMounts=mount),
        container("polite", "trap 'exit 0' TERM; sleep 3600 & wait")],
        volumes=[{"name": "out", "hostPath": {"path": shared_dir}}],
        terminationGracePeriodSeconds=2)
    try:
        node.run(doc)
        node.wait("stubborn", running)
        node.ctl("pod", "stop", "stubborn")
        p = node.get("stubborn")
        assert state_of(p, "ignores")["state"]["terminated"]["exitCode"] == 137
        assert state_of(p, "polite")["state"]["terminated"]["exitCode"] == 0
        assert open(os.path.join(shared_dir, "prestop")).read() == "prestop-ran\n"
        assert "SIGKILL" in node.ctl("pod", "describe", "stubborn").stdout
        assert not p["status"]["podIP"] or p["status"]["podIP"] not in node.ctl("endpoints").stdout
    finally:
        node.rm("stubborn")


def test_readonly_root_capabilities_and_user(node):
    doc = pod("locked", [
        container("ro", "exec sleep 3600", resources={"limits": {"cpu": "500m", "memory": "32Mi"}},
                  securityContext={
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["CHOWN", "NET_RAW"]},
            "allowPrivilegeEscalation": False}),
        container("user", "exec sleep 3600", securityContext={"runAsUser": 1000,
                                                             "runAsGroup": 1000})],
        volumes=[])
    try:
        p = node.run(doc)
        node.wait("locked", running)
        r = node.exec("locked", "touch", "/newfile", container="ro", check=False)
        assert r.returncode != 0 and "Read-only file system" in r.stderr
        assert node.exec("locked", "touch", "/tmp/x", container="user").returncode == 0
        r = node.exec("locked", "chown", "1:1", "/dev/shm", container="ro", check=False)
        assert r.returncode != 0 and "Operation not permitted" in r.stderr
        r = node.exec("locked", "ping", "-c", "1", "-W", "1", "127.0.0.1", container="ro",
                      check=False)
        assert r.returncode != 0
        status = node.exec("locked", "cat", "/proc/self/status", container="ro").stdout
        assert "NoNewPrivs:\t1" in status
        assert node.exec("locked", "id", "-u", container="user").stdout.strip() == "1000"
        cg = f"podnet-{p['metadata']['uid'][:12]}-ro"
        if os.path.exists("/sys/fs/cgroup/cpu"):  # cgroup v1 (this host)
            assert open(f"/sys/fs/cgroup/cpu/{cg}/cpu.cfs_quota_us").read().strip() == "50000"
            assert open(f"/sys/fs/cgroup/memory/{cg}/memory.limit_in_bytes").read().strip() \
                == str(32 * 2**20)
        else:
            assert open(f"/sys/fs/cgroup/{cg}/cpu.max").read().split()[0] == "50000"
            assert open(f"/sys/fs/cgroup/{cg}/memory.max").read().strip() == str(32 * 2**20)
    finally:
        node.rm("locked")


def test_bad_manifest_refused_before_anything_is_created(node):
    before = set(runc_ids())
    doc = pod("bad", [container("c", "true", stdin=True)])
    path = os.path.join(node.workdir, "bad.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    r = node.ctl("pod", "run", "-f", path, check=False)
    assert r.returncode == 1
    assert "spec.containers[0].stdin: field is not supported" in r.stderr
    assert "Traceback" not in r.stderr
    assert set(runc_ids()) == before
    assert "bad" not in node.ctl("pod", "ls").stdout
    # an image that is not there is the container's business (ErrImagePull, as the kubelet
    # does), not a refusal: test_runtime_registry.py


def test_images_oci_archive_list_rm(node):
    oci = os.path.join(node.workdir, "bb-oci.tar")
    sh(PY, "-m", "podnetd.runtime.busybox_image", oci, "--format", "oci", cwd=REPO)
    node.ctl("image", "import", "bb-oci:v1", oci)
    listing = node.ctl("image", "list").stdout
    assert "bb-oci:v1" in listing and "busybox:latest" in listing
    doc = pod("ocipod", [{"name": "c", "image": "bb-oci:v1",
                          "command": ["sh", "-c", "ls /etc /opt; exec sleep 3600"]}])
    try:
        node.run(doc)
        node.wait("ocipod", running)
        node.wait("ocipod", lambda p: "new" in node.logs("ocipod"))
        out = node.logs("ocipod")
        # layer 2's whiteout removed a file, its opaque dir hid layer 1's /opt content
        assert "removed-by-layer2" not in out and "old" not in out and "image-release" in out
    finally:
        node.rm("ocipod")
    node.ctl("image", "rm", "bb-oci:v1")
    assert "bb-oci" not in node.ctl("image", "list").stdout
    r = node.ctl("image", "rm", "bb-oci:v1", check=False)
    assert r.returncode == 1 and "not found" in r.stderr


def test_podnetd_restart_keeps_and_adopts_pods(node):
    doc = pod("survivor", [container("c", "i=0; while [ ! -f /tmp/stop ]; do i=$((i+1)); "
                                          "echo tick $i; sleep 0.2; done; exit 5")])
    try:
        p = node.run(doc)
        node.wait("survivor", running)
        uid = p["metadata"]["uid"]
        cid = f"pn-{uid[:12]}-c"
        pid = json.loads(sh("runc", "state", cid).stdout)["pid"]
        node.daemon.restart()
        assert json.loads(sh("runc", "state", cid).stdout)["pid"] == pid
        p = node.get("survivor")
        assert p["status"]["phase"] == "Running" and p["metadata"]["uid"] == uid
        assert ping(node.netns, p["status"]["podIP"])
        # logs kept flowing to the file while podnetd was away, and still do
        n1 = len(node.logs("survivor").splitlines())
        node.wait("survivor", lambda _: len(node.logs("survivor").splitlines()) > n1 + 2,
                  what="more log lines")
        # the adopted container is watched: its exit is seen and it is restarted
        node.exec("survivor", "touch", "/tmp/stop")
        p = node.wait("survivor", lambda p: state_of(p, "c")["restartCount"] >= 1 and running(p),
                  what="restart after adoption")
        assert state_of(p, "c")["lastState"]["terminated"]["exitCode"] == 5
        assert "Adopted" in node.ctl("pod", "describe", "survivor").stdout
    finally:
        node.rm("survivor")


def test_logs_follow_ends_with_the_container_and_shared_pid_namespace(node):
    doc = pod("follow", [container("talker", "echo one; sleep 1; echo two"),
                         container("watcher", "exec sleep 3600")],
              restartPolicy="Never", shareProcessNamespace=True, hostname="custom",
              subdomain="sub")
    try:
        node.run(doc)
        assert node.exec("follow", "hostname", container="watcher").stdout.strip() == "custom"
        hosts = node.exec("follow", "cat", "/etc/hosts", container="watcher").stdout
        assert "custom.sub.default.svc.cluster.local custom" in hosts, hosts
        # shareProcessNamespace: the watcher sees the talker's processes
        procs = node.exec("follow", "ps", container="watcher", check=False).stdout
        out = node.ctl("pod", "logs", "follow", "-c", "talker", "-f").stdout
        assert out == "one\ntwo\n", out
        # one PID namespace for the pod: the pause container's catatonit is everyone's PID 1
        assert "1 root     /catatonit -P" in procs and "sleep 3600" in procs, procs
        p = node.wait("follow", lambda p: "terminated" in state_of(p, "talker")["state"])
        assert state_of(p, "talker")["state"]["terminated"]["reason"] == "Completed"
    finally:
        node.rm("follow")


def test_startup_probe_gates_liveness(node):
    startup = {"exec": {"command": ["test", "-f", "/tmp/go"]}, "periodSeconds": 1,
               "failureThreshold": 60}
    live = {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1}
    doc = pod("gated", [container("c", "exec sleep 3600", startupProbe=startup,
                                  livenessProbe=live)])
    try:
        node.run(doc)
        describe = lambda: node.ctl("pod", "describe", "gated").stdout  # noqa: E731
        node.wait("gated", lambda p: describe().count("Startup probe failed") >= 2,
                  what="two failed startup probes")
        p = node.get("gated")
        c = state_of(p, "c")
        assert c["restartCount"] == 0 and not c["started"] and not c["ready"]
        assert "Liveness probe failed" not in describe()
        node.exec("gated", "touch", "/tmp/go")
        node.wait("gated", lambda p: state_of(p, "c")["restartCount"] >= 1,
                  what="liveness restart once started")
        assert "Liveness probe failed" in describe()
    finally:
        node.rm("gated")


def test_run_as_non_root_privileged_working_dir_env(node):
    doc = pod("misc", [
        container("nonroot", "exec sleep 3600", securityContext={"runAsNonRoot": True}),
        container("priv", "exec sleep 3600", workingDir="/tmp",
                  env=[{"name": "GREETING", "value": "hi"},
                       {"name": "DERIVED", "value": "$(GREETING)-there"}],
                  securityContext={"privileged": True})])
    try:
        node.run(doc)
        p = node.wait("misc", lambda p: state_of(p, "nonroot")["state"].get("waiting", {}).get(
            "reason") == "CreateContainerConfigError" and "running" in state_of(p, "priv")["state"])
        assert "runAsNonRoot" in state_of(p, "nonroot")["state"]["waiting"]["message"]
        assert node.exec("misc", "pwd", container="priv").stdout.strip() == "/tmp"
        assert node.exec("misc", "sh", "-c", "echo $DERIVED", container="priv").stdout == "hi-there\n"
        caps = node.exec("misc", "grep", "CapEff", "/proc/self/status", container="priv").stdout
        assert int(caps.split()[1], 16) & (1 << 21)  # CAP_SYS_ADMIN: privileged
    finally:
        node.rm("misc")


def test_stop_all_caps_the_grace_period_as_before_a_node_shutdown():
    """`pod stop --all --grace-period 1`, what a node's shutdown unit runs: every running pod
    stops at once; a container that ignores SIGTERM is killed when the capped grace period is
    over, not after its own 300 s; pods already stopped are left alone; the network goes."""
    with runtime_node("sa", "10.78.13.0/24") as n:
        stubborn = container("c", "trap '' TERM; while true; do sleep 1; done")
        for name in ("all1", "all2"):
            n.run(pod(name, [stubborn], terminationGracePeriodSeconds=300))
        n.run(pod("before", [container("c", "trap 'exit 0' TERM; sleep 3600 & wait")]))
        for name in ("all1", "all2", "before"):
            n.wait(name, running)
        n.ctl("pod", "stop", "before")
        # the timeout only guards against a hang: uncapped, this call would take 300 s
        out = n.ctl("pod", "stop", "--all", "--grace-period", "1", timeout=90).stdout
        assert out.splitlines() == ["pod/default/all1 stopped", "pod/default/all2 stopped"]
        for name in ("all1", "all2"):
            p = n.get(name)
            assert state_of(p, "c")["state"]["terminated"]["exitCode"] == 137
            assert p["status"]["reason"] == "Terminated"
            assert "grace period 1s" in n.ctl("pod", "describe", name).stdout
        assert "10.78.13." not in n.ctl("endpoints").stdout
        assert n.ctl("pod", "stop", "--all").stdout == ""  # nothing left to stop
        n.run(pod("now", [stubborn], terminationGracePeriodSeconds=300))
        n.wait("now", running)
        out = n.ctl("pod", "stop", "--all", "--grace-period", "0", timeout=90).stdout
        assert out == "pod/default/now stopped\n"
        assert state_of(n.get("now"), "c")["state"]["terminated"]["exitCode"] == 137
        for args, message in ((["--all", "--grace-period", "-1"], "give seconds, 0 or more"),
                              (["--all", "--grace-period", "nan"], "give seconds, 0 or more"),
                              (["all1", "--grace-period", "1"], "--grace-period goes with --all"),
                              ([], "give a pod name, or --all"),
                              (["all1", "--all"], "not both")):
            proc = n.ctl("pod", "stop", *args, check=False)
            assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
            assert "Traceback" not in proc.stderr
