"""podnetctl against a real podnetd's cluster API (its local socket: root is cluster admin):
apply/create/get/describe/label/taint/cordon/drain/delete/watch/auth as a kubectl user types
them, the errors in kubectl's words, and a client config whose first server is down."""
import json
import os
import re
import subprocess
import tempfile
import time

import pytest
import yaml

from runtime_lib import busybox_archive, runtime_node
from testlib import PY, REPO


@pytest.fixture(scope="module")
def node():
    with runtime_node("ctlc", "10.81.0.0/24") as n:
        # the node agent registers its Node shortly after podnetd is up
        wait_for(lambda: f"node/{n.daemon.node_name}\n" == ctl(
            n, "get", "nodes", "-o", "name", check=False).stdout, "the node registered")
        yield n


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="pt-ctlc-") as d:
        yield d


def ctl(node, *args, check=True, env=None, stdin=None, timeout=120):
    """podnetctl ARGS with the node's socket (a global flag, so at the end or before --)."""
    args = list(args)
    at = args.index("--") if "--" in args else len(args)
    argv = [PY, "-m", "podnetd.ctl.main", *args[:at], "--socket", node.socket, *args[at:]]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          input=stdin, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"podnetctl {' '.join(args)}: exit {proc.returncode}\n"
                             f"{proc.stdout}{proc.stderr}\n--- podnetd ---\n"
                             f"{node.daemon.log()[-3000:]}")
    return proc


def manifest(path, *docs) -> str:
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f)
    return path


def pod_doc(node, name, labels=None, owned=False, namespace=None) -> dict:
    meta = {"name": name, "labels": labels or {"app": name}}
    if namespace:
        meta["namespace"] = namespace
    if owned:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                    "uid": "0c0ffee0-0000-4000-8000-000000000001",
                                    "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node.daemon.node_name, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "app", "image": "busybox",
                                     "command": ["sh", "-c", "echo hi; sleep 1000"],
                                     "resources": {"requests": {"cpu": "150m",
                                                                "memory": "16Mi"}}}]}}


def get_json(node, *args) -> dict:
    return json.loads(ctl(node, "get", *args, "-o", "json").stdout)


def wait_for(fn, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last})")


def test_apply_creates_then_reports_unchanged_then_configured(node, workdir):
    path = manifest(os.path.join(workdir, "app.yaml"),
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ctl-a"}},
                    pod_doc(node, "web", namespace="ctl-a"))
    try:
        assert ctl(node, "apply", "-f", path).stdout == \
            "namespace/ctl-a created\npod/web created\n"
        assert ctl(node, "apply", "-f", path).stdout == \
            "namespace/ctl-a unchanged\npod/web unchanged\n"
        changed = pod_doc(node, "web", labels={"app": "web", "tier": "front"}, namespace="ctl-a")
        manifest(path, changed)
        assert ctl(node, "apply", "-f", path).stdout == "pod/web configured\n"
        live = get_json(node, "pod", "web", "-n", "ctl-a")
        assert live["metadata"]["labels"] == {"app": "web", "tier": "front"}
        assert live["spec"]["nodeName"] == node.daemon.node_name
        # the node runs it: the table says so in kubectl's columns
        row = wait_for(lambda: [line.split() for line in ctl(
            node, "get", "pods", "-n", "ctl-a").stdout.splitlines()[1:]
            if line.split()[2] == "Running"], "pod web Running")
        assert row[0][:2] == ["web", "1/1"]
        # selectors are the server's: -l picks it, a non-matching one gives kubectl's message
        assert ctl(node, "get", "po", "-l", "tier=front", "-A", "-o", "name").stdout == "pod/web\n"
        none = ctl(node, "get", "po", "-l", "tier=back", "-n", "ctl-a")
        assert none.stdout == "" and none.stderr == "No resources found in ctl-a namespace.\n"
    finally:
        ctl(node, "delete", "pod", "web", "-n", "ctl-a", "--ignore-not-found", check=False)


def test_errors_read_as_kubectls(node, workdir):
    missing = ctl(node, "get", "pod", "nope", check=False)
    assert (missing.returncode, missing.stderr) == (1, 'Error from server (NotFound): pods '
                                                       '"nope" not found\n')
    unknown = ctl(node, "get", "widgets", check=False)
    assert unknown.returncode == 1
    assert unknown.stderr == 'error: the server doesn\'t have a resource type "widgets"\n'
    bad = manifest(os.path.join(workdir, "bad.yaml"), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"},
        "spec": {"containers": [{"name": "a"}]}})
    invalid = ctl(node, "apply", "-f", bad, check=False)
    assert invalid.returncode == 1
    assert invalid.stderr.startswith(f'Error from server (Invalid): error when creating "{bad}": '
                                     f'Pod "bad" is invalid: spec.containers[0].image')
    assert ctl(node, "get", "pod", "bad", check=False).returncode == 1     # nothing stored
    ns = manifest(os.path.join(workdir, "ns.yaml"),
                  {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ctl-dup"}})
    try:
        assert ctl(node, "create", "-f", ns).stdout == "namespace/ctl-dup created\n"
        dup = ctl(node, "create", "-f", ns, check=False)
        assert dup.returncode == 1 and dup.stderr == (
            f'Error from server (AlreadyExists): error when creating "{ns}": namespaces '
            f'"ctl-dup" already exists\n')
    finally:
        ctl(node, "delete", "ns", "ctl-dup", "--wait=false", check=False)


def test_nodes_get_describe_label_taint_cordon(node):
    name = node.daemon.node_name
    table = ctl(node, "get", "nodes", "-o", "wide").stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert "KERNEL-VERSION" in table[0] and table[1].split()[:2] == [name, "Ready"]
    assert ctl(node, "label", "nodes", name, "ctl-test=yes").stdout == f"node/{name} labeled\n"
    assert ctl(node, "get", "no", "-l", "ctl-test=yes", "-o", "name").stdout == f"node/{name}\n"
    refused = ctl(node, "label", "no", name, "ctl-test=no", check=False)
    assert refused.stderr == \
        "error: 'ctl-test' already has a value (yes), and --overwrite is false\n"
    assert ctl(node, "label", "no", name, "ctl-test-").stdout == f"node/{name} unlabeled\n"
    assert ctl(node, "taint", "nodes", name, "ctl=x:NoSchedule").stdout == f"node/{name} tainted\n"
    assert get_json(node, "node", name)["spec"]["taints"] == [
        {"key": "ctl", "value": "x", "effect": "NoSchedule"}]
    assert ctl(node, "taint", "nodes", name, "ctl-").stdout == f"node/{name} untainted\n"
    try:
        assert ctl(node, "cordon", name).stdout == f"node/{name} cordoned\n"
        assert ctl(node, "get", "nodes", name).stdout.splitlines()[1].split()[1] == \
            "Ready,SchedulingDisabled"
        assert ctl(node, "cordon", name).stdout == f"node/{name} already cordoned\n"
    finally:
        assert ctl(node, "uncordon", name).stdout == f"node/{name} uncordoned\n"
    assert "unschedulable" not in get_json(node, "node", name)["spec"]


def test_describe_node_counts_the_requests_of_its_pods(node, workdir):
    name = node.daemon.node_name
    path = manifest(os.path.join(workdir, "p.yaml"), pod_doc(node, "counted"))
    ctl(node, "apply", "-f", path)
    try:
        out = ctl(node, "describe", "node", name).stdout
        assert f"Name:               {name}" in out
        assert "Conditions:" in out and re.search(r"^\s+Ready\s+True\s", out, re.M), out
        assert re.search(r"^\s+MemoryPressure\s+False\s", out, re.M), out
        pods = out.split("Non-terminated Pods:")[1]
        assert "default    counted" in pods and "150m (" in pods and "16Mi (" in pods
        allocated = out.split("Allocated resources:")[1]
        assert "cpu       150m" in allocated or "cpu      150m" in allocated or \
            [line for line in allocated.splitlines() if line.split()[:2] == ["cpu", "150m"]]
        desc = ctl(node, "describe", "pod", "counted").stdout
        assert f"Node:               {name}" in desc and "Containers:\n  app:" in desc
        assert "cpu:     150m" in desc
    finally:
        ctl(node, "delete", "pod", "counted")


def test_watch_shows_changes_as_they_happen(node, workdir):
    path = manifest(os.path.join(workdir, "w.yaml"), pod_doc(node, "watched"))
    ctl(node, "apply", "-f", path)
    watch = subprocess.Popen([PY, "-m", "podnetd.ctl.main", "get", "pods", "watched", "-w",
                              "--output-watch-events", "--socket", node.socket],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        first = watch.stdout.readline()
        assert first.split()[:2] == ["EVENT", "NAME"], first
        assert watch.stdout.readline().split()[:2] == ["ADDED", "watched"]
        ctl(node, "label", "pod", "watched", "seen=yes")
        line = watch.stdout.readline()
        while line.split()[0] != "MODIFIED":
            line = watch.stdout.readline()
        assert line.split()[1] == "watched"
        assert ctl(node, "delete", "pod", "watched").stdout == 'pod "watched" deleted\n'
        lines = []
        while not lines or lines[-1].split()[0] != "DELETED":
            lines.append(watch.stdout.readline())
            assert lines[-1], watch.stderr.read()
        assert lines[-1].split()[1] == "watched"
    finally:
        watch.kill()
        watch.wait()
        ctl(node, "delete", "pod", "watched", "--ignore-not-found", check=False)
    gone = ctl(node, "get", "pod", "watched", check=False)
    assert "NotFound" in gone.stderr                     # delete waited for the node


def test_drain_refuses_a_bare_pod_and_force_evicts_it(node, workdir):
    name = node.daemon.node_name
    path = manifest(os.path.join(workdir, "d.yaml"), pod_doc(node, "bare"),
                    pod_doc(node, "owned", owned=True))
    ctl(node, "apply", "-f", path)
    try:
        refused = ctl(node, "drain", name, check=False)
        assert refused.returncode == 1
        assert refused.stdout == f"node/{name} cordoned\n"
        assert f'error: unable to drain node "{name}" due to error:cannot delete Pods declare no ' \
               f'controller (use --force to override): default/bare' in refused.stderr
        assert ctl(node, "get", "pod", "owned").returncode == 0      # nothing was evicted
        done = ctl(node, "drain", name, "--force", "--grace-period", "1", timeout=180)
        assert "Warning: deleting Pods that declare no controller: default/bare" in done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == f"node/{name} already cordoned"
        assert {"evicting pod default/bare", "evicting pod default/owned", "pod/bare evicted",
                "pod/owned evicted"} <= set(lines)
        assert lines[-1] == f"node/{name} drained"
        left = ctl(node, "get", "pods", "-o", "name").stdout.split()
        assert "pod/bare" not in left and "pod/owned" not in left
    finally:
        ctl(node, "uncordon", name, check=False)
        ctl(node, "delete", "pod", "bare", "owned", "--ignore-not-found", check=False)


def test_auth_and_api_resources(node):
    assert ctl(node, "auth", "can-i", "create", "pods").stdout == "yes\n"
    who = ctl(node, "auth", "whoami").stdout.splitlines()
    assert who[1].split() == ["Username", "system:admin"]
    assert "system:masters" in who[2]
    kinds = ctl(node, "api-resources").stdout.splitlines()
    assert kinds[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    assert ["pods", "po", "v1", "true", "Pod"] in [k.split() for k in kinds]


def test_get_events_on_a_lone_node_is_the_nodes_own_record(node, workdir):
    path = manifest(os.path.join(workdir, "e.yaml"), pod_doc(node, "evented"))
    ctl(node, "apply", "-f", path)
    try:
        rows = wait_for(lambda: [line for line in ctl(node, "get", "events").stdout.splitlines()
                                 if "pod/evented" in line and "Scheduled" in line],
                        "a Scheduled event for pod/evented")
        assert rows
    finally:
        ctl(node, "delete", "pod", "evented")


def test_a_cluster_whose_first_server_is_down_is_reached_through_the_next(node, workdir):
    config = os.path.join(workdir, "config.yaml")
    dead = os.path.join(workdir, "dead.sock")
    with open(config, "w") as f:
        yaml.safe_dump({"apiVersion": "v1", "kind": "Config",
                        "clusters": [{"name": "c", "cluster": {
                            "servers": [f"unix://{dead}", f"unix://{node.socket}"]}},
                                     {"name": "down", "cluster": {"server": f"unix://{dead}"}}],
                        "contexts": [{"name": "c", "context": {"cluster": "c",
                                                               "namespace": "kube-system"}},
                                     {"name": "down", "context": {"cluster": "down"}}],
                        "current-context": "c"}, f)
    argv = [PY, "-m", "podnetd.ctl.main"]
    out = subprocess.run([*argv, "get", "nodes", "-o", "name"], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PODNET_CONFIG": config}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"node/{node.daemon.node_name}\n"
    ns = subprocess.run([*argv, "get", "pods", "--config", config], capture_output=True,
                        text=True, cwd=REPO, timeout=60)
    assert ns.stderr == "No resources found in kube-system namespace.\n"   # the context's
    down = subprocess.run([*argv, "--context", "down", "get", "nodes", "--config", config],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert down.returncode == 1
    assert down.stderr.startswith(f"Unable to connect to the server unix:{dead}: ")


# ---- over TLS (--api-listen): certificates, tokens, failover, denials, impersonation


@pytest.fixture(scope="module")
def tls_api():
    """A podnetd serving the cluster API on 127.0.0.1:6443 of its netns over TLS, real
    certificates for it and an admin (O=system:masters), and a token for alice (no RBAC)."""
    from podnetd.lab import pki
    from testlib import Daemon, Netns
    spaces = Netns()
    work = tempfile.mkdtemp(prefix="pt-ctltls-")
    daemon = None
    try:
        ca, ca_key = pki.make_ca(os.path.join(work, "ca"), "ctl")
        cert, key = pki.make_node_cert(os.path.join(work, "srv"), ca, ca_key, "api", "127.0.0.1")
        admin = pki.make_client_cert(os.path.join(work, "adm"), ca, ca_key, "admin",
                                     ("system:masters",))
        other_ca, other_key = pki.make_ca(os.path.join(work, "other"), "other")
        tokens = os.path.join(work, "tokens.csv")
        with open(tokens, "w") as f:
            f.write('tok-alice,alice,u-alice,"devs"\n')
        daemon = Daemon(spaces.add("ctls"), "10.82.0.0/24", extra=[
            "--api-listen", "127.0.0.1:6443", "--tls-cert", cert, "--tls-key", key,
            "--client-ca", ca, "--token-auth-file", tokens]).start(timeout=30)
        config = os.path.join(work, "config.yaml")
        cluster = {"servers": ["https://127.0.0.1:6444", "https://127.0.0.1:6443"],
                   "certificate-authority": ca}
        with open(config, "w") as f:
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "t", "cluster": cluster},
                             {"name": "foreign", "cluster": {
                                 "server": "https://127.0.0.1:6443",
                                 "certificate-authority": other_ca}}],
                "users": [{"name": "admin", "user": {"client-certificate": admin[0],
                                                     "client-key": admin[1]}},
                          {"name": "alice", "user": {"token": "tok-alice"}},
                          {"name": "forged", "user": {"token": "tok-mallory"}}],
                "contexts": [{"name": "admin", "context": {"cluster": "t", "user": "admin"}},
                             {"name": "alice", "context": {"cluster": "t", "user": "alice",
                                                           "namespace": "prod"}},
                             {"name": "forged", "context": {"cluster": "t", "user": "forged"}},
                             {"name": "foreign", "context": {"cluster": "foreign",
                                                             "user": "admin"}}],
                "current-context": "admin"}, f)
        yield daemon, config
    finally:
        if daemon:
            daemon.cleanup()
        spaces.cleanup()
        subprocess.run(["rm", "-rf", work], check=False)


def tls_ctl(api, *args, check=False):
    daemon, config = api
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{daemon.netns}", PY, "-m",
                           "podnetd.ctl.main", *args, "--config", config],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    if check and proc.returncode:
        raise AssertionError(f"{args}: {proc.stdout}{proc.stderr}\n{daemon.log()[-3000:]}")
    return proc


def test_tls_with_a_client_certificate_through_the_second_server(tls_api):
    daemon, _ = tls_api
    # the first server of the cluster (port 6444) is down: the second answers
    nodes = wait_for(lambda: tls_ctl(tls_api, "get", "nodes", "-o", "name").stdout,
                     "the node registered")
    assert nodes == f"node/{daemon.node_name}\n"
    who = tls_ctl(tls_api, "auth", "whoami", check=True).stdout.splitlines()
    assert who[1].split() == ["Username", "admin"] and "system:masters" in who[-1]


def test_tls_token_user_rbac_denial_and_impersonation(tls_api):
    who = tls_ctl(tls_api, "--context", "alice", "auth", "whoami", check=True).stdout
    assert "alice" in who and "u-alice" in who
    can = tls_ctl(tls_api, "auth", "can-i", "create", "pods", "--context", "alice")
    assert (can.returncode, can.stdout.split()[0]) == (1, "no")
    denied = tls_ctl(tls_api, "--context", "alice", "get", "pods")
    assert denied.returncode == 1 and denied.stderr == (
        'Error from server (Forbidden): pods is forbidden: User "alice" cannot list resource '
        '"pods" in API group "" in the namespace "prod"\n')
    # the admin acting as alice gets alice's answer
    acting = tls_ctl(tls_api, "get", "ns", "--as", "alice")
    assert acting.returncode == 1 and 'User "alice" cannot list resource "namespaces"' in \
        acting.stderr
    assert tls_ctl(tls_api, "auth", "can-i", "list", "pods", "--as", "alice").stdout == "no\n"


def test_tls_bad_token_and_foreign_ca(tls_api):
    forged = tls_ctl(tls_api, "--context", "forged", "get", "pods")
    assert forged.returncode == 1
    assert forged.stderr.startswith("error: You must be logged in to the server (Unauthorized")
    foreign = tls_ctl(tls_api, "--context", "foreign", "get", "pods")
    assert foreign.returncode == 1
    assert foreign.stderr.startswith("Unable to connect to the server 127.0.0.1:6443: ")


def test_the_cluster_example_applies_as_documented(node, workdir):
    """examples/cluster/web.yaml as the README uses it: on one node one web pod runs, the other
    two stay Pending in kube-scheduler's words (anti-affinity), and the db waits for a node
    labelled disk=ssd, then runs once the node is labelled."""
    node.ctl("image", "import", "busybox:1", busybox_archive())
    example = os.path.join(REPO, "examples", "cluster", "web.yaml")
    out = ctl(node, "apply", "-f", example).stdout
    assert out.split("\n")[:4] == ["pod/web-0 created", "pod/web-1 created",
                                   "pod/web-2 created", "pod/db created"]
    try:
        def states():
            pods = {p["metadata"]["name"]: p for p in get_json(node, "pods")["items"]}
            running = [n for n in ("web-0", "web-1", "web-2")
                       if pods[n]["status"].get("phase") == "Running"]
            waiting = [c for n in ("web-0", "web-1", "web-2", "db")
                       for c in pods[n]["status"].get("conditions") or []
                       if c["type"] == "PodScheduled" and c["status"] == "False"]
            return (running, waiting) if len(running) == 1 and len(waiting) == 3 else None
        running, waiting = wait_for(states, "one web pod running, three pods unschedulable")
        messages = sorted(c["message"] for c in waiting)
        assert messages[0] == ("0/1 nodes are available: 1 node(s) didn't match Pod's node "
                               "affinity/selector.")                                  # db
        assert messages[1:] == ["0/1 nodes are available: 1 node(s) didn't match pod "
                                "anti-affinity rules."] * 2
        ctl(node, "label", "nodes", node.daemon.node_name, "disk=ssd")
        wait_for(lambda: get_json(node, "pod", "db")["status"].get("phase") == "Running",
                 "db scheduled and running once a node has disk=ssd")
    finally:
        for name in ("web-0", "web-1", "web-2", "db"):
            ctl(node, "delete", "pod", name, "--now", check=False)
        ctl(node, "label", "nodes", node.daemon.node_name, "disk-", check=False)


def test_get_nodes_says_the_api_is_node_local_without_etcd(node):
    out = ctl(node, "get", "nodes")
    assert node.daemon.node_name in out.stdout
    assert "this cluster API is node-local" in out.stderr
    doc = get_json(node, "node", node.daemon.node_name)
    assert doc["metadata"]["annotations"]["podnet.io/cluster-api"] == "node-local"
