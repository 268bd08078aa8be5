"""The lab's image registry, end to end: a 3-node etcd lab runs Debian's docker-registry on
its underlay with busybox:1 pushed to it; pods applied through the cluster API pull it on every
node (the kubelets' Pulling/Pulled events are cluster Events); a tag that does not exist is
ErrImagePull then ImagePullBackOff with the kubelet's Failed and BackOff events; the registry
stopped: a new pod is ErrImagePull "refused the connection" while running pods run on, and once
the registry is back the back-off retries and the pod runs. A static lab runs a registry when
asked and `lab down` stops it by PID and removes its data.

The pull back-off is shortened (--restart-backoff 2, max 8) so the retries come within
seconds. The tests share one lab and run in order (the last one stops the registry)."""
import os
import shutil
import subprocess

import pytest

from podnetd.lab import cluster_api, netops, plan, probe, procs, status
from podnetd.lab.lab import Lab
from testlib import unique

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(shutil.which("docker-registry") is None
                                 or shutil.which("skopeo") is None,
                                 reason="docker-registry or skopeo is not installed")]

NS = "default"
ANTI = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
    {"labelSelector": {"matchLabels": {"app": "pull"}}, "topologyKey": "kubernetes.io/hostname"}]}}


@pytest.fixture(scope="module")
def lab():
    lb = Lab.up(3, "l2", "etcd", name=unique("lr"), wait=30,
                extra_args=["--restart-backoff", "2", "--restart-backoff-max", "8"])
    try:
        yield lb
    finally:
        lb.down()


def pod(name: str, image: str, labels: dict | None = None, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"terminationGracePeriodSeconds": 1, **spec, "containers": [
                {"name": "main", "image": image, "command": ["sleep", "3600"]}]}}


def ready(p: dict) -> bool:
    conds = {c["type"]: c["status"] for c in p["status"].get("conditions") or []}
    return p["status"].get("phase") == "Running" and conds.get("Ready") == "True"


def waiting(p: dict) -> dict:
    statuses = p["status"].get("containerStatuses") or [{}]
    return (statuses[0].get("state") or {}).get("waiting") or {}


def wait_pod(c, name: str, pred, what: str, timeout: float = 60) -> dict:
    def check():
        p = c.get("pods", name, NS)
        return p if pred(p) else None
    return probe.until(check, timeout, f"pod {name} {what}", 0.1)


def events(c, name: str, reason: str, message: str = "") -> list[dict]:
    """The pod's events of that reason (whose message starts with `message`)."""
    return [e for e in c.list("events", NS)
            if e["involvedObject"].get("name") == name and e["reason"] == reason
            and e["message"].startswith(message)]


def wait_event(c, name: str, reason: str, message: str = "", timeout: float = 20) -> dict:
    return probe.until(lambda: events(c, name, reason, message), timeout,
                       f"a {reason} event {message!r}... of pod {name}", 0.2)[0]


def test_the_lab_runs_and_records_its_registry(lab):
    address = f"{plan.registry_address(lab.st.name, 'l2')}:{plan.REGISTRY_PORT}"
    assert lab.registry == address == "10.250.0.3:5000"
    assert lab.registry_image == f"{address}/busybox:1"
    record = lab.st.processes["registry"]
    assert procs.alive(record)
    assert f"{lab.st.name}-registry" in lab.st.namespaces
    assert os.path.isdir(os.path.join(lab.st.dir, "registry", "data", "docker"))
    shown = status.collect(lab)["registry"]
    assert shown == {"address": address, "image": lab.registry_image,
                     "process": f"pid {record['pid']}"}
    for node in lab.node_names():
        argv = lab.daemon(node)["argv"]
        assert argv[argv.index("--insecure-registry") + 1] == address, node
    # busybox:1 is there, reachable from a node's namespace over plain HTTP
    out = subprocess.run([*netops.nsenter(lab.netns("n2")), "skopeo", "inspect", "--raw",
                          "--tls-verify=false", f"docker://{lab.registry_image}"],
                         capture_output=True, text=True, check=True).stdout
    assert '"schemaVersion"' in out, out


def test_pods_pull_the_registry_image_on_every_node(lab):
    image = lab.registry_image
    names = [f"pull{i}" for i in range(3)]
    with cluster_api.client(lab, "n1") as c:
        for n in names:
            c.create("pods", pod(n, image, {"app": "pull"}, affinity=ANTI), NS)
        got = {n: wait_pod(c, n, ready, "Running and Ready") for n in names}
        assert sorted(p["spec"]["nodeName"] for p in got.values()) == ["n1", "n2", "n3"]
        for n, p in got.items():
            node = p["spec"]["nodeName"]
            assert p["status"]["containerStatuses"][0]["imageID"].startswith("sha256:"), p
            pulling = wait_event(c, n, "Pulling")
            assert pulling["message"] == f'Pulling image "{image}"'
            pulled = wait_event(c, n, "Pulled")
            assert pulled["type"] == "Normal"
            assert pulled["message"].startswith(f'Successfully pulled image "{image}" in '), pulled
            # each node's kubelet pulled it itself
            assert pulled["source"] == {"component": "kubelet", "host": node}, pulled
            assert pulled["involvedObject"]["uid"] == p["metadata"]["uid"]
            assert (NS, n, "Running") in {(r.namespace, r.name, r.phase)
                                          for r in cluster_api.runtime_pods(lab, node)}
        # each node reports the image it now holds in its status (what ImageLocality reads)
        for node in ("n1", "n2", "n3"):
            held = probe.until(lambda: [i for i in c.get("nodes", node)["status"].get("images")
                                        or [] if image in i["names"]] or None,
                               60, f"node {node} reporting {image}", 0.5)
            assert held[0]["sizeBytes"] > 0, held


def test_a_missing_tag_is_err_image_pull_then_image_pull_back_off(lab):
    image = f"{lab.registry}/busybox:{unique('no')}"
    with cluster_api.client(lab, "n2") as c:
        c.create("pods", pod("notag", image), NS)
        p = wait_pod(c, "notag", lambda p: waiting(p).get("reason") == "ErrImagePull",
                     "ErrImagePull")
        assert waiting(p)["message"] == f"{image}: not found (manifest unknown)", p
        assert p["status"]["phase"] == "Pending"
        p = wait_pod(c, "notag", lambda p: waiting(p).get("reason") == "ImagePullBackOff",
                     "ImagePullBackOff")
        assert waiting(p)["message"] == f'Back-off pulling image "{image}"'
        assert p["status"]["phase"] == "Pending"
        # the kubelet's events, as the cluster's Events (its node agent records them)
        failed = wait_event(c, "notag", "Failed", "Failed to pull image")
        assert failed["type"] == "Warning"
        assert failed["message"] == (f'Failed to pull image "{image}": {image}: not found '
                                     f'(manifest unknown)'), failed
        assert failed["source"] == {"component": "kubelet", "host": p["spec"]["nodeName"]}
        for reason in ("ErrImagePull", "ImagePullBackOff"):
            assert wait_event(c, "notag", "Failed", f"Error: {reason}")["type"] == "Warning"
        backoff = wait_event(c, "notag", "BackOff")
        assert backoff["message"] == f'Back-off pulling image "{image}"'
        assert backoff["involvedObject"]["uid"] == p["metadata"]["uid"]
        c.delete("pods", "notag", NS, grace=0)


def test_registry_down_new_pod_err_image_pull_running_pods_run_then_it_pulls(lab):
    tag = f"busybox:{unique('dn')}"
    image = lab.push_test_image(tag)   # there, but on no node yet
    with cluster_api.client(lab, "n3") as c:
        before = {p["metadata"]["name"]: p for p in c.list("pods", NS)
                  if p["metadata"]["name"].startswith("pull")}
        assert len(before) == 3 and all(ready(p) for p in before.values())
        lab.stop_registry()
        try:
            assert not procs.alive(lab.st.processes["registry"])
            c.create("pods", pod("late", image, nodeSelector={"kubernetes.io/hostname": "n1"}), NS)
            p = wait_pod(c, "late", lambda p: waiting(p).get("reason") == "ErrImagePull",
                         "ErrImagePull")
            assert waiting(p)["message"] == (f"registry {lab.registry} refused the connection "
                                             f"(is it running?)"), p
            failed = wait_event(c, "late", "Failed", "Failed to pull image")
            assert failed["message"] == (f'Failed to pull image "{image}": registry '
                                         f'{lab.registry} refused the connection (is it running?)')
            # an image a node has needs no registry (IfNotPresent): n1 pulled busybox:1 before
            c.create("pods", pod("present", lab.registry_image,
                                 nodeSelector={"kubernetes.io/hostname": "n1"}), NS)
            wait_pod(c, "present", ready, "Running and Ready from the image n1 has")
            assert wait_event(c, "present", "Pulled")["message"] == \
                f'Container image "{lab.registry_image}" already present on machine'
            # the running pods ran on, untouched
            for n, old in before.items():
                now = c.get("pods", n, NS)
                assert ready(now), now
                assert now["status"]["containerStatuses"][0]["restartCount"] == 0
                assert now["status"]["containerStatuses"][0]["state"]["running"]["startedAt"] == \
                    old["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        finally:
            lab.start_registry()
        # the back-off retries (at most --restart-backoff-max apart) and the pull succeeds
        wait_pod(c, "late", ready, "Running once the registry is back", timeout=40)
        pulled = wait_event(c, "late", "Pulled")
        assert pulled["message"].startswith(f'Successfully pulled image "{image}" in ')
        for n in ("late", "present"):
            c.delete("pods", n, NS, grace=0)


def test_a_static_lab_runs_a_registry_when_asked_and_down_removes_it():
    lb = Lab.up(1, "l2", "static", name=unique("ls"), registry=True, wait=20)
    try:
        record = lb.st.processes["registry"]
        data = os.path.join(lb.st.dir, "registry", "data")
        assert procs.alive(record) and os.path.isdir(data)
        argv = lb.daemon("n1")["argv"]
        assert argv[argv.index("--insecure-registry") + 1] == lb.registry
    finally:
        lb.down()
    assert not procs.alive(record)
    assert not os.path.exists(data)
    assert not netops.netns_exists(f"{lb.st.name}-registry")


def test_a_static_lab_has_no_registry_by_default():
    lb = Lab.up(1, "l2", "static", name=unique("ln"), wait=20)
    try:
        assert lb.registry is None and "registry" not in lb.st.processes
        assert "--insecure-registry" not in lb.daemon("n1")["argv"]
        assert status.collect(lb)["registry"] is None
    finally:
        lb.down()
