"""A sandbox that cannot be made (a CNI plugin error) is tried again with back-off while the
pod stays Pending (kubelet: FailedCreatePodSandBox each time), then the pod comes up once the
network works. And state files of an older podnetd (booleans instead of the stage) are adopted.
Real runc, real podnet CNI; the node runs with --restart-backoff 0.5 (runtime_lib)."""
import glob
import json
import os
import stat

from testlib import PY, sh
from runtime_lib import RuntimeNode, busybox_archive, container, pod, runc_ids

GATE_PLUGIN = '''#!{python}
"""A CNI plugin whose ADD fails until the file named in its "gate" key exists; then it passes
the previous result on. Every other command succeeds."""
import json, os, sys
conf = json.load(sys.stdin)
command = os.environ.get("CNI_COMMAND")
if command == "VERSION":
    print(json.dumps({{"cniVersion": conf.get("cniVersion", "1.0.0"),
                      "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}}))
elif command == "ADD":
    if not os.path.exists(conf["gate"]):
        print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 11,
                          "msg": "gate closed", "details": conf["gate"]}}))
        sys.exit(1)
    print(json.dumps(conf["prevResult"]))
'''


def _gated_node(netns) -> tuple[RuntimeNode, str]:
    """A runtime node whose conflist has the gate plugin after podnet; the gate's file."""
    node = RuntimeNode(netns.add("sb"), "10.78.57.0/24")
    gate = os.path.join(node.workdir, "gate-open")
    plugin = os.path.join(node.bin_dir, "gate")
    with open(plugin, "w") as f:
        f.write(GATE_PLUGIN.format(python=PY))
    os.chmod(plugin, os.stat(plugin).st_mode | stat.S_IXUSR)
    [path] = glob.glob(f"{node.conf_dir}/*.conflist")
    with open(path) as f:
        conf = json.load(f)
    conf["plugins"].insert(1, {"type": "gate", "gate": gate})
    with open(path, "w") as f:
        json.dump(conf, f)
    return node, gate


def _events(node, name: str, reason: str) -> list[str]:
    text = node.ctl("pod", "describe", name).stdout
    return [line for line in text.splitlines() if reason in line]


def test_failed_sandbox_is_retried_while_pending_then_comes_up(netns):
    node, gate = _gated_node(netns)
    try:
        node.start()
        node.ctl("image", "import", "busybox", busybox_archive())
        first = node.run(pod("gated", [container("app", "sleep 3600")]))
        # `pod run` answers once the first attempt failed: the pod is Pending, not Failed
        assert first["status"]["phase"] == "Pending", first["status"]
        # tried again with back-off: more FailedCreatePodSandBox, still Pending, no IP
        p = node.wait("gated", lambda p: len(_events(node, "gated",
                                                     "FailedCreatePodSandBox")) >= 3,
                      timeout=60, what="three sandbox attempts")
        assert p["status"]["phase"] == "Pending" and not p["status"]["podIP"], p["status"]
        assert "gate closed" in _events(node, "gated", "FailedCreatePodSandBox")[0]
        state = p["status"]["containerStatuses"][0]["state"]
        assert state["waiting"]["reason"] == "ContainerCreating", state
        assert "ContainerCreating" in node.ctl("pod", "ls").stdout
        # the network works again: the next attempt makes the sandbox and the pod runs
        with open(gate, "w"):
            pass
        p = node.wait("gated", lambda p: p["status"]["phase"] == "Running"
                      and "running" in p["status"]["containerStatuses"][0]["state"],
                      timeout=60, what="Running once the plugin works")
        assert p["status"]["podIP"].startswith("10.78.57."), p["status"]
        assert node.exec("gated", "cat", "/etc/hostname").stdout.strip() == "gated"
        assert _events(node, "gated", "SandboxReady")
    finally:
        node.cleanup()


def test_stop_while_the_sandbox_is_retried_leaves_nothing(netns):
    node, _ = _gated_node(netns)
    try:
        node.start()
        node.ctl("image", "import", "busybox", busybox_archive())
        uid = node.run(pod("never", [container("app", "sleep 3600")]))["metadata"]["uid"]
        node.ctl("pod", "stop", "never")
        p = node.get("never")
        assert p["status"]["phase"] == "Failed" and not p["status"]["podIP"], p["status"]
        assert not runc_ids(f"pn-{uid[:12]}")
        assert f"podnet-{uid[:12]}" not in sh("ip", "netns", "list").stdout
    finally:
        node.cleanup()


def _as_old_state_file(path: str) -> None:
    """Rewrite a pod's state file as podnetd before the stage wrote it: lifecycle booleans."""
    with open(path) as f:
        data = json.load(f)
    stage = data.pop("stage")
    data.pop("initializedAt")
    data.update(initialized=stage in ("Running", "Completed"), finished=stage == "Completed",
                stopping=stage == "Terminating", stopped=stage == "Terminated")
    with open(path, "w") as f:
        json.dump(data, f)


def test_pod_of_an_older_podnetd_is_adopted(netns):
    node = RuntimeNode(netns.add("up"), "10.78.58.0/24")
    try:
        node.start()
        node.ctl("image", "import", "busybox", busybox_archive())
        p = node.run(pod("old", [container("app", "sleep 3600")]))
        cid = f"pn-{p['metadata']['uid'][:12]}-app"
        node.wait("old", lambda p: p["status"]["phase"] == "Running"
                  and "running" in p["status"]["containerStatuses"][0]["state"])
        pid = json.loads(sh("runc", "state", cid).stdout)["pid"]
        node.daemon.stop()
        [path] = glob.glob(os.path.join(node.daemon.state_dir, "pods", "default_old.json"))
        _as_old_state_file(path)
        node.daemon.start(timeout=30)
        p = node.get("old")
        assert p["status"]["phase"] == "Running", p["status"]
        assert [c["status"] for c in p["status"]["conditions"]
                if c["type"] == "Initialized"] == ["True"]
        assert json.loads(sh("runc", "state", cid).stdout)["pid"] == pid   # adopted, not rerun
        assert _events(node, "old", "Adopted")
        with open(path) as f:   # written back in the new form
            assert json.load(f)["stage"] == "Running"
        node.ctl("pod", "stop", "old")
        assert sh("runc", "state", cid, check=False).returncode != 0
    finally:
        node.cleanup()
