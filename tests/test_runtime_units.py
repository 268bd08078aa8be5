"""Pure parts of the pod runtime: the CNI client's config handling, pod status rendering,
log line parsing, image name normalisation, $(VAR) expansion."""
import json

import pytest

from podnetd.runtime import cni_client, images, logs
from podnetd.runtime.containers import expand
from podnetd.runtime.model import Pod, Stage


def write(tmp_path, name, doc):
    (tmp_path / name).write_text(json.dumps(doc) if not isinstance(doc, str) else doc)


def test_conflist_first_valid_in_lexical_order(tmp_path):
    write(tmp_path, "05-broken.conflist", "{nope")
    write(tmp_path, "10-b.conflist", {"cniVersion": "1.0.0", "name": "b",
                                       "plugins": [{"type": "bridge"}]})
    write(tmp_path, "20-a.conflist", {"cniVersion": "1.0.0", "name": "a",
                                       "plugins": [{"type": "podnet"}]})
    assert cni_client.load_conflist(str(tmp_path))["name"] == "b"


def test_single_conf_is_wrapped(tmp_path):
    write(tmp_path, "10.conf", {"cniVersion": "0.4.0", "name": "one", "type": "bridge"})
    conf = cni_client.load_conflist(str(tmp_path))
    assert conf["plugins"][0]["type"] == "bridge" and conf["name"] == "one"


def test_no_config_is_one_clear_error(tmp_path):
    with pytest.raises(cni_client.CniClientError, match="no CNI network configuration"):
        cni_client.load_conflist(str(tmp_path))
    with pytest.raises(cni_client.CniClientError, match="CNI config dir"):
        cni_client.load_conflist(str(tmp_path / "missing"))


def test_plugin_config_prev_result_and_capabilities():
    conflist = {"cniVersion": "1.0.0", "name": "net"}
    plugin = {"type": "portmap", "capabilities": {"portMappings": True}}
    rc = {"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}],
          "bandwidth": {}}
    conf = cni_client.plugin_config(conflist, plugin, {"ips": []}, rc)
    assert conf["name"] == "net" and conf["cniVersion"] == "1.0.0"
    assert conf["prevResult"] == {"ips": []}
    assert conf["runtimeConfig"] == {"portMappings": rc["portMappings"]}  # only declared caps
    conf = cni_client.plugin_config(conflist, {"type": "podnet"}, None, rc)
    assert "runtimeConfig" not in conf and "prevResult" not in conf


def test_pod_ip_from_result():
    assert cni_client.pod_ip({"ips": [{"address": "fd00::2/64"},
                                      {"address": "10.1.2.3/24"}]}) == "10.1.2.3"
    assert cni_client.pod_ip({}) == ""


def _pod(**spec):
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "a", "image": "busybox"}], **spec}}
    return Pod(doc, "0123456789abcdef", 0.0)


def test_status_reasons():
    p = _pod(initContainers=[{"name": "i", "image": "busybox"}])
    assert p.phase() == "Pending" and p.display_status() == "ContainerCreating"
    p.sandbox, p.stage = True, Stage.INITIALIZING
    assert p.display_status() == "Init:0/1"
    p.containers["i"].state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    p.stage, p.initialized_at = Stage.RUNNING, 1.0
    a = p.containers["a"]
    # kubelet: never ran yet (its image is being pulled, or cannot be): still Pending
    a.state = {"waiting": {"reason": "ErrImagePull", "message": "x: not found"}}
    assert p.phase() == "Pending" and p.display_status() == "ErrImagePull"
    a.state = {"waiting": {"reason": "CrashLoopBackOff"}}
    a.last_state = {"terminated": {"exitCode": 1, "reason": "Error"}}
    assert p.phase() == "Running" and p.display_status() == "CrashLoopBackOff"
    a.state = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    p.stage = Stage.COMPLETED
    assert p.phase() == "Failed" and p.display_status() == "OOMKilled"
    a.state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    assert p.phase() == "Succeeded"


def test_persisted_state_round_trips():
    p = _pod()
    p.ip, p.sandbox = "10.0.0.5", True
    p.containers["a"].restart_count = 4
    q = Pod.from_json(json.loads(json.dumps(p.to_json())))
    assert q.ip == "10.0.0.5" and q.sandbox and q.containers["a"].restart_count == 4
    k8s = q.k8s("node1")
    assert k8s["status"]["containerStatuses"][0]["restartCount"] == 4
    assert k8s["spec"]["nodeName"] == "node1" and k8s["spec"]["restartPolicy"] == "Always"


def test_cri_log_lines():
    line = b"2026-01-01T00:00:00.000000001Z stdout F hello world\n"
    assert logs.parse_line(line, False) == b"hello world\n"
    assert logs.parse_line(line, True) == b"2026-01-01T00:00:00.000000001Z hello world\n"
    assert logs.parse_line(b"2026-01-01T00:00:00Z stderr P part", False) == b"part"


def test_image_names_and_expansion():
    assert images.normalize("busybox") == "busybox:latest"
    assert images.normalize("docker.io/library/busybox:1.36") == "busybox:1.36"
    assert images.normalize("localhost:5000/x") == "localhost:5000/x:latest"
    env = {"A": "1"}
    assert expand("$(A)-$(B)-$$(A)", env) == "1-$(B)-$(A)"


def test_probe_thresholds_one_state_machine():
    from podnetd.runtime.prober import Thresholds
    # liveness: success until failureThreshold failures in a row; a success resets the run
    live = Thresholds(1, 3, True)
    assert [live.observe(ok) for ok in (False, False, True, False, False)] == [None] * 5
    assert live.observe(False) is False and live.result is False
    # readiness: failure until successThreshold successes in a row, then flips back
    ready = Thresholds(2, 2, False)
    assert [ready.observe(ok) for ok in (True, False, True)] == [None, None, None]
    assert ready.observe(True) is True
    assert ready.observe(False) is None and ready.observe(False) is False
    # startup: unknown until decided either way
    startup = Thresholds(1, 2, None)
    assert startup.observe(False) is None and startup.observe(True) is True


def test_old_state_files_migrate_to_the_stage():
    p = _pod()
    data = p.to_json()
    del data["stage"], data["initializedAt"]
    for flags, stage in [({}, Stage.CREATING), ({"sandbox": True}, Stage.INITIALIZING),
                         ({"sandbox": True, "initialized": True}, Stage.RUNNING),
                         ({"initialized": True, "finished": True}, Stage.COMPLETED),
                         ({"finished": True, "stopping": True}, Stage.TERMINATING),
                         ({"finished": True, "stopped": True}, Stage.TERMINATED)]:
        q = Pod.from_json(json.loads(json.dumps({**data, **flags})))
        assert q.stage is stage, flags
        assert q.initialized == bool(flags.get("initialized")), flags
    p.stage, p.initialized_at = Stage.RUNNING, 5.0
    q = Pod.from_json(json.loads(json.dumps(p.to_json())))
    assert q.stage is Stage.RUNNING and q.initialized_at == 5.0


def test_backoffs_and_error_types():
    from podnetd.runtime.errors import ContainerError, PodError
    from podnetd.runtime.lifecycle import sandbox_backoff
    from podnetd.runtime.supervisor import restart_backoff
    assert [restart_backoff(s, 10, 300) for s in (1, 2, 3, 7)] == [0, 10, 20, 300]
    assert [sandbox_backoff(n, 10, 300) for n in (1, 2, 3, 9)] == [10, 20, 40, 300]
    assert PodError("x", "not_found").status == "not_found"
    with pytest.raises(ValueError):
        PodError("x", "CreateContainerConfigError")   # a reason is not an API status
    assert ContainerError("CreateContainerConfigError", "m").reason == \
        "CreateContainerConfigError"


def test_pod_conditions_as_the_kubelet_writes_them(monkeypatch):
    """Reasons and messages of the False conditions; lastTransitionTime moves only when a
    condition's status does, and comes back with the pod's state after a restart."""
    clock = [1000.0]
    monkeypatch.setattr("podnetd.runtime.model.time.time", lambda: clock[0])
    p = _pod(initContainers=[{"name": "i", "image": "busybox"}])
    cond = {c["type"]: c for c in p.conditions()}
    assert cond["Initialized"]["status"] == "False"
    assert cond["Initialized"]["reason"] == "ContainersNotInitialized"
    assert cond["Initialized"]["message"] == "containers with incomplete status: [i]"
    assert cond["Ready"]["reason"] == "ContainersNotReady"
    assert cond["Ready"]["message"] == "containers with unready status: [a]"
    assert cond["Ready"]["lastProbeTime"] is None
    first = cond["Ready"]["lastTransitionTime"]
    p.sandbox, p.stage, p.initialized_at = True, Stage.RUNNING, 1.0
    p.containers["i"].state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    clock[0] = 1005.0
    cond = {c["type"]: c for c in p.conditions()}
    assert cond["Initialized"]["status"] == "True" and "reason" not in cond["Initialized"]
    assert cond["Initialized"]["lastTransitionTime"] != first
    assert cond["Ready"]["lastTransitionTime"] == first       # still False: not a transition
    a = p.containers["a"]
    a.state, a.ready, a.started = {"running": {"startedAt": "x"}}, True, True
    clock[0] = 1010.0
    cond = {c["type"]: c for c in p.conditions()}
    assert cond["Ready"]["status"] == "True" and cond["Ready"]["lastTransitionTime"] != first
    again = Pod.from_json(json.loads(json.dumps(p.to_json())))
    clock[0] = 2000.0
    assert again.conditions() == p.conditions()
    a.state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    a.ready = False
    p.stage = Stage.COMPLETED
    cond = {c["type"]: c for c in p.conditions()}
    assert cond["Ready"]["reason"] == "PodCompleted"
