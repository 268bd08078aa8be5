"""Hostile manifests through a real podnetd, and seccomp with real runc: RuntimeDefault
(containers-common's profile) by default, Unconfined, Localhost profiles below
--seccomp-profile-root, privileged containers unconfined.

The probe: busybox `linux64 -R` calls personality(PER_LINUX|ADDR_NO_RANDOMIZE), which needs no
capability and which the RuntimeDefault profile does not allow (only personality values 0, 8,
0x20000, 0x20008 and 0xffffffff pass; the default action is ENOSYS)."""
import json
import os
import shutil
import tempfile

import pytest
import yaml

from podnetd.runtime import seccomp
from testlib import Netns, unique
from runtime_lib import RuntimeNode, busybox_archive, container, leftovers, pod

PROBE = ("grep '^Seccomp:' /proc/self/status; "
         "if linux64 -R true; then echo personality-allowed; else echo personality-refused; fi; "
         "if mkdir /tmp/made; then echo mkdir-allowed; else echo mkdir-refused; fi")
# allows everything but mkdir, in the containers/common format (what a Localhost file holds)
NO_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                        {"architecture": "SCMP_ARCH_AARCH64",
                         "subArchitectures": ["SCMP_ARCH_ARM"]}],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 1}]}

needs_profile = pytest.mark.skipif(not os.path.exists(seccomp.DEFAULT_PROFILE),
                                   reason="containers-common's seccomp.json is not installed")


@pytest.fixture(scope="module")
def node():
    root = tempfile.mkdtemp(prefix=f"{unique('sc')}-profiles-")
    os.makedirs(os.path.join(root, "team"))
    with open(os.path.join(root, "team", "no-mkdir.json"), "w") as f:
        json.dump(NO_MKDIR, f)
    os.mkfifo(os.path.join(root, "fifo.json"))
    os.symlink("/usr/share/containers/seccomp.json", os.path.join(root, "escape.json"))
    spaces = Netns()
    n = None
    try:
        n = RuntimeNode(spaces.add("sc"), "10.78.23.0/24",
                        extra=["--seccomp-profile-root", root]).start()
        n.ctl("image", "import", "busybox", busybox_archive())
        yield n
    finally:
        if n:
            n.cleanup()
            assert not leftovers(n.workdir), "mounts left behind"
        spaces.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def profile(kind: str, local: str | None = None) -> dict:
    p = {"type": kind, **({"localhostProfile": local} if local else {})}
    return {"seccompProfile": p}


def finished(p) -> bool:
    return all("terminated" in c["state"] for c in p["status"]["containerStatuses"])


def run_text(node, name: str, text: str):
    path = os.path.join(node.workdir, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(text)
    return node.ctl("pod", "run", "-f", path, check=False)


def test_alias_bomb_is_refused_and_the_daemon_goes_on(node):
    levels = "\n".join([f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]"
                        for i in range(1, 8)])
    text = ("apiVersion: v1\nkind: Pod\nmetadata: {name: bomb}\n"
            "spec: {containers: [{name: a, image: busybox}]}\nstatus:\n"
            '  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
            + levels + "\n")
    r = run_text(node, "bomb", text)
    assert r.returncode != 0 and "aliases are expanded" in r.stderr + r.stdout, r
    assert node.ctl("pod", "get", "bomb", check=False).returncode != 0   # nothing was made
    assert node.ctl("status").returncode == 0


def test_submitted_status_is_ignored_and_huge_cpu_is_capped(node):
    text = yaml.safe_dump(pod("forged", [container(
        "app", "sleep 3600", resources={"limits": {"cpu": "1e10000000"}})]))
    text += "status: {phase: Succeeded, podIP: 6.6.6.6, hostIP: 6.6.6.6}\n"
    r = run_text(node, "forged", text)
    try:
        assert r.returncode == 0, r.stderr
        p = node.wait("forged", lambda p: p["status"]["phase"] == "Running")
        assert p["status"].get("podIP") != "6.6.6.6" and "6.6.6.6" not in json.dumps(p)
    finally:
        node.rm("forged")


@needs_profile
def test_runtime_default_refuses_what_unconfined_allows(node):
    doc = pod("seccomp", [
        container("default", PROBE),
        container("runtime-default", PROBE, securityContext=profile("RuntimeDefault")),
        container("unconfined", PROBE, securityContext=profile("Unconfined")),
        container("privileged", PROBE, securityContext={"privileged": True}),
        container("localhost", PROBE, securityContext=profile("Localhost", "team/no-mkdir.json")),
    ], restartPolicy="Never")
    with node.running(doc):
        node.wait("seccomp", finished, what="all containers finished")
        logs = {c: node.logs("seccomp", "-c", c) for c in
                ("default", "runtime-default", "unconfined", "privileged", "localhost")}
    for name in ("default", "runtime-default"):
        assert "Seccomp:\t2" in logs[name], logs[name]
        assert "personality-refused" in logs[name] and "mkdir-allowed" in logs[name], logs[name]
        assert "Function not implemented" in logs[name], logs[name]   # the profile's ENOSYS
    for name in ("unconfined", "privileged"):
        assert "Seccomp:\t0" in logs[name], logs[name]
        assert "personality-allowed" in logs[name] and "mkdir-allowed" in logs[name], logs[name]
    assert "Seccomp:\t2" in logs["localhost"]
    assert "personality-allowed" in logs["localhost"] and "mkdir-refused" in logs["localhost"]


@needs_profile
def test_pod_level_profile_and_container_override(node):
    doc = pod("seccomp-pod", [
        container("inherits", PROBE),
        container("overrides", PROBE, securityContext=profile("RuntimeDefault")),
    ], restartPolicy="Never", securityContext=profile("Unconfined"))
    with node.running(doc):
        node.wait("seccomp-pod", finished, what="all containers finished")
        assert "personality-allowed" in node.logs("seccomp-pod", "-c", "inherits")
        assert "personality-refused" in node.logs("seccomp-pod", "-c", "overrides")


@pytest.mark.parametrize("local,why", [
    ("missing.json", "not found"),
    ("fifo.json", "not a regular file"),       # a FIFO does not block the daemon
    ("escape.json", "resolves outside"),       # a symlink does not lead out of the root
])
def test_unusable_localhost_profile_is_a_container_error(node, local, why):
    name = unique("scbad").lower().replace("_", "-")[:40]
    doc = pod(name, [container("app", "echo ran", securityContext=profile("Localhost", local))],
              restartPolicy="Never")
    with node.running(doc):
        p = node.wait(name, lambda p: "waiting" in p["status"]["containerStatuses"][0]["state"]
                      and p["status"]["containerStatuses"][0]["state"]["waiting"].get("reason")
                      == "CreateContainerError", what="CreateContainerError")
        message = p["status"]["containerStatuses"][0]["state"]["waiting"].get("message", "")
        assert why in message, message
        assert node.ctl("status").returncode == 0     # the daemon still answers


def test_hostile_profile_path_is_refused_before_anything_runs(node):
    doc = pod("seccomp-escape", [container("app", "true", securityContext=profile(
        "Localhost", "../../../usr/share/containers/seccomp.json"))])
    r = run_text(node, "seccomp-escape", yaml.safe_dump(doc))
    assert r.returncode != 0 and "must not contain '..'" in r.stderr + r.stdout
