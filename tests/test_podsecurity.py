"""Pod Security Admission levels: pure logic, rootless-safe. Expected strings are
kube-apiserver's (k8s.io/pod-security-admission's reasons and details)."""
import copy
import pathlib

import pytest
from hypothesis import given, settings, strategies as st

from podnetd.runtime import manifest, podsecurity as psa

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

ENFORCE = "pod-security.kubernetes.io/enforce"
VERSION = "pod-security.kubernetes.io/enforce-version"

# passes restricted:latest
GOOD_SC = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
           "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
GOOD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "app", "image": "busybox",
                                 "securityContext": copy.deepcopy(GOOD_SC)}],
                 "volumes": [{"name": "scratch", "emptyDir": {}}]}}


def pod(changes: dict) -> dict:
    """GOOD with dotted paths set (containers.N / initContainers.N index into lists)."""
    doc = copy.deepcopy(GOOD)
    for path, value in changes.items():
        node, keys = doc, path.split(".")
        for k in keys[:-1]:
            if isinstance(node, list):
                while len(node) <= int(k):
                    node.append({"name": f"c{len(node)}", "image": "busybox",
                                 "securityContext": copy.deepcopy(GOOD_SC)})
                node = node[int(k)]
            else:
                node = node.setdefault(k, [] if k in ("containers", "initContainers") else {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return doc


def test_good_pod_passes_every_level():
    for level in psa.LEVELS:
        assert psa.check(level, GOOD) == []


# (name, changes, baseline violations, restricted violations)
CASES = [
    ("hostNetwork", {"spec.hostNetwork": True},
     ["host namespaces (hostNetwork=true)"], ["host namespaces (hostNetwork=true)"]),
    ("hostNetwork false", {"spec.hostNetwork": False}, [], []),
    ("all host namespaces", {"spec.hostNetwork": True, "spec.hostPID": True, "spec.hostIPC": True},
     ["host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)"],
     ["host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)"]),
    ("privileged", {"spec.containers.0.securityContext.privileged": True},
     ['privileged (container "app" must not set securityContext.privileged=true)'],
     ['privileged (container "app" must not set securityContext.privileged=true)']),
    ("privileged false", {"spec.containers.0.securityContext.privileged": False}, [], []),
    ("privileged init and app", {"spec.initContainers.0.securityContext.privileged": True,
                                 "spec.containers.0.securityContext.privileged": True},
     ['privileged (containers "c0", "app" must not set securityContext.privileged=true)'],
     ['privileged (containers "c0", "app" must not set securityContext.privileged=true)']),
    ("baseline capability", {"spec.containers.0.securityContext.capabilities.add": ["CHOWN"]},
     [], ['unrestricted capabilities (container "app" must not include "CHOWN" in '
          'securityContext.capabilities.add)']),
    ("NET_BIND_SERVICE", {"spec.containers.0.securityContext.capabilities.add":
                          ["NET_BIND_SERVICE"]}, [], []),
    ("non-default capabilities", {"spec.containers.0.securityContext.capabilities.add":
                                  ["SYS_ADMIN", "NET_RAW", "CHOWN"]},
     ['non-default capabilities (container "app" must not include "NET_RAW", "SYS_ADMIN" in '
      'securityContext.capabilities.add)'],
     ['unrestricted capabilities (container "app" must not include "CHOWN", "NET_RAW", '
      '"SYS_ADMIN" in securityContext.capabilities.add)']),
    ("CAP_ prefix is not the default set", {"spec.containers.0.securityContext.capabilities.add":
                                            ["CAP_CHOWN"]},
     ['non-default capabilities (container "app" must not include "CAP_CHOWN" in '
      'securityContext.capabilities.add)'],
     ['unrestricted capabilities (container "app" must not include "CAP_CHOWN" in '
      'securityContext.capabilities.add)']),
    ("no drop ALL", {"spec.containers.0.securityContext.capabilities": {"drop": ["NET_RAW"]}},
     [], ['unrestricted capabilities (container "app" must set '
          'securityContext.capabilities.drop=["ALL"])']),
    ("no capabilities", {"spec.containers.0.securityContext.capabilities": None},
     [], ['unrestricted capabilities (container "app" must set '
          'securityContext.capabilities.drop=["ALL"])']),
    ("no drop and an add", {"spec.containers.0.securityContext.capabilities":
                            {"add": ["NET_ADMIN"]}},
     ['non-default capabilities (container "app" must not include "NET_ADMIN" in '
      'securityContext.capabilities.add)'],
     ['unrestricted capabilities (container "app" must set '
      'securityContext.capabilities.drop=["ALL"]; container "app" must not include '
      '"NET_ADMIN" in securityContext.capabilities.add)']),
    ("hostPath", {"spec.volumes": [{"name": "host", "hostPath": {"path": "/"}},
                                   {"name": "scratch", "emptyDir": {}}]},
     ['hostPath volumes (volume "host")'],
     ['restricted volume types (volume "host" uses restricted volume type "hostPath")']),
    ("two hostPaths", {"spec.volumes": [{"name": "a", "hostPath": {"path": "/a"}},
                                        {"name": "b", "hostPath": {"path": "/b"}}]},
     ['hostPath volumes (volumes "a", "b")'],
     ['restricted volume types (volumes "a", "b" use restricted volume type "hostPath")']),
    ("unknown volume type", {"spec.volumes": [{"name": "n", "nfs": {}}, {"name": "u"}]},
     [], ['restricted volume types (volumes "n", "u" use restricted volume types "nfs", '
          '"unknown")']),
    ("hostPort", {"spec.containers.0.ports": [{"containerPort": 80, "hostPort": 8080}]},
     ['hostPort (container "app" uses hostPort 8080)'],
     ['hostPort (container "app" uses hostPort 8080)']),
    ("hostPorts", {"spec.containers.0.ports": [{"containerPort": 80, "hostPort": 8080},
                                               {"containerPort": 81, "hostPort": 443}],
                   "spec.containers.1.ports": [{"containerPort": 82, "hostPort": 9000}]},
     ['hostPort (containers "app", "c1" use hostPorts 443, 8080, 9000)'],
     ['hostPort (containers "app", "c1" use hostPorts 443, 8080, 9000)']),
    ("containerPort only", {"spec.containers.0.ports": [{"containerPort": 80}]}, [], []),
    ("probe host", {"spec.containers.0.livenessProbe": {"httpGet": {"port": 80,
                                                                     "host": "10.0.0.1"}}},
     ['probe or lifecycle host (container "app" uses probe or lifecycle host "10.0.0.1")'],
     ['probe or lifecycle host (container "app" uses probe or lifecycle host "10.0.0.1")']),
    ("probe and preStop hosts", {
        "spec.containers.0.readinessProbe": {"tcpSocket": {"port": 80, "host": "b.example"}},
        "spec.containers.0.lifecycle": {"preStop": {"httpGet": {"port": 80, "host": "a.example"}}}},
     ['probe or lifecycle host (container "app" uses probe or lifecycle hosts "a.example", '
      '"b.example")'],
     ['probe or lifecycle host (container "app" uses probe or lifecycle hosts "a.example", '
      '"b.example")']),
    ("probe without host", {"spec.containers.0.startupProbe": {"tcpSocket": {"port": 80}}},
     [], []),
    ("allowPrivilegeEscalation unset",
     {"spec.containers.0.securityContext.allowPrivilegeEscalation": None},
     [], ['allowPrivilegeEscalation != false (container "app" must set '
          'securityContext.allowPrivilegeEscalation=false)']),
    ("allowPrivilegeEscalation true",
     {"spec.containers.0.securityContext.allowPrivilegeEscalation": True},
     [], ['allowPrivilegeEscalation != false (container "app" must set '
          'securityContext.allowPrivilegeEscalation=false)']),
    ("runAsNonRoot at pod level", {"spec.containers.0.securityContext.runAsNonRoot": None,
                                   "spec.securityContext.runAsNonRoot": True}, [], []),
    ("runAsNonRoot unset", {"spec.containers.0.securityContext.runAsNonRoot": None},
     [], ['runAsNonRoot != true (pod or container "app" must set '
          'securityContext.runAsNonRoot=true)']),
    ("runAsNonRoot false", {"spec.containers.0.securityContext.runAsNonRoot": False,
                            "spec.securityContext.runAsNonRoot": False},
     [], ['runAsNonRoot != true (pod and container "app" must not set '
          'securityContext.runAsNonRoot=false)']),
    ("runAsNonRoot false in a container", {"spec.containers.0.securityContext.runAsNonRoot":
                                           False, "spec.securityContext.runAsNonRoot": True},
     [], ['runAsNonRoot != true (container "app" must not set '
          'securityContext.runAsNonRoot=false)']),
    ("runAsUser 0", {"spec.securityContext.runAsUser": 0,
                     "spec.containers.0.securityContext.runAsUser": 0},
     [], ['runAsUser=0 (pod and container "app" must not set runAsUser=0)']),
    ("runAsUser 1000", {"spec.securityContext.runAsUser": 1000}, [], []),
    ("seccomp Unconfined in a container",
     {"spec.containers.0.securityContext.seccompProfile": {"type": "Unconfined"}},
     ['seccompProfile (container "app" must not set securityContext.seccompProfile.type to '
      '"Unconfined")'],
     ['seccompProfile (container "app" must not set securityContext.seccompProfile.type to '
      '"Unconfined")']),
    ("seccomp Unconfined at pod level",
     {"spec.securityContext.seccompProfile": {"type": "Unconfined"}},
     ['seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")'],
     ['seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")']),
    ("seccomp unset", {"spec.containers.0.securityContext.seccompProfile": None},
     [], ['seccompProfile (pod or container "app" must set securityContext.seccompProfile.type '
          'to "RuntimeDefault" or "Localhost")']),
    ("seccomp Localhost at pod level",
     {"spec.containers.0.securityContext.seccompProfile": None,
      "spec.securityContext.seccompProfile": {"type": "Localhost", "localhostProfile": "a.json"}},
     [], []),
]


@pytest.mark.parametrize("name,changes,baseline,restricted", CASES, ids=[c[0] for c in CASES])
def test_levels(name, changes, baseline, restricted):
    doc = pod(changes)
    assert psa.check("privileged", doc) == []
    assert psa.check("baseline", doc) == baseline
    assert psa.check("restricted", doc) == restricted


def test_apiserver_message_for_a_plain_pod():
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
             "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
    assert psa.forbidden_message({ENFORCE: "restricted"}, plain) == (
        'pods "x" is forbidden: violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "app" must set '
        'securityContext.allowPrivilegeEscalation=false), unrestricted capabilities '
        '(container "app" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot '
        '!= true (pod or container "app" must set securityContext.runAsNonRoot=true), '
        'seccompProfile (pod or container "app" must set securityContext.seccompProfile.type '
        'to "RuntimeDefault" or "Localhost")')
    assert psa.forbidden_message({ENFORCE: "baseline"}, plain) is None
    assert psa.forbidden_message({}, plain) is None


def test_baseline_checks_come_before_restricted_ones():
    doc = pod({"spec.hostNetwork": True, "spec.containers.0.securityContext.runAsUser": 0})
    assert [v.split(" (")[0] for v in psa.check("restricted", doc)] == \
        ["host namespaces", "runAsUser=0"]


@pytest.mark.parametrize("labels,expected", [
    ({}, ("privileged", "latest")),
    (None, ("privileged", "latest")),
    ({ENFORCE: "baseline"}, ("baseline", "latest")),
    ({ENFORCE: "restricted", VERSION: "v1.29"}, ("restricted", "v1.29")),
    ({ENFORCE: "Restricted"}, ("restricted", "latest")),      # invalid: fails closed
    ({ENFORCE: "none"}, ("restricted", "latest")),
    ({ENFORCE: "baseline", VERSION: "1.29"}, ("baseline", "latest")),
    ({ENFORCE: "baseline", VERSION: "v1.029"}, ("baseline", "latest")),
    ({"pod-security.kubernetes.io/warn": "restricted"}, ("privileged", "latest")),
])
def test_policy_from_namespace_labels(labels, expected):
    assert psa.policy(labels) == expected


def test_evaluate_uses_the_namespace_labels():
    doc = pod({"spec.hostNetwork": True})
    assert psa.evaluate({ENFORCE: "privileged"}, doc) == []
    assert psa.evaluate({ENFORCE: "baseline"}, doc) == ["host namespaces (hostNetwork=true)"]
    assert psa.evaluate({ENFORCE: "bogus"}, doc) == ["host namespaces (hostNetwork=true)"]


def test_versions_gate_checks_as_kubernetes_does():
    doc = pod({"spec.containers.0.securityContext.runAsUser": 0,
               "spec.containers.0.securityContext.capabilities": {"add": ["CHOWN"]}})
    latest = psa.check("restricted", doc, "latest")
    assert [v.split(" (")[0] for v in latest] == ["unrestricted capabilities", "runAsUser=0"]
    # runAsUser arrived in 1.23, capabilities_restricted in 1.22 (before it, baseline's)
    assert psa.check("restricted", doc, "v1.22") == [latest[0]]
    assert [v.split(" (")[0] for v in psa.check("restricted", doc, "v1.21")] == []
    unconfined = pod({"metadata.annotations": {
        "container.seccomp.security.alpha.kubernetes.io/app": "unconfined"}})
    assert psa.check("baseline", unconfined, "v1.18") == [
        'seccompProfile (forbidden annotation '
        'container.seccomp.security.alpha.kubernetes.io/app="unconfined")']
    assert psa.check("baseline", unconfined, "latest") == []


def test_unknown_level_is_an_error():
    with pytest.raises(ValueError):
        psa.check("strict", GOOD)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_evaluate(path):
    doc = manifest.parse(path.read_text())
    for level in psa.LEVELS:
        assert all(isinstance(v, str) for v in psa.check(level, doc))
    assert psa.check("privileged", doc) == []


junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
                    lambda kids: st.one_of(st.lists(kids, max_size=3),
                                           st.dictionaries(st.sampled_from([
                                               "spec", "metadata", "containers", "securityContext",
                                               "capabilities", "add", "drop", "volumes", "name",
                                               "ports", "hostPort", "seccompProfile", "type",
                                               "hostNetwork", "runAsUser", "livenessProbe",
                                               "httpGet", "host", "annotations"]), kids,
                                               max_size=4)), max_leaves=25)


@settings(max_examples=150, deadline=None)
@given(junk, st.sampled_from(psa.LEVELS))
def test_fuzz_any_shape_gives_a_list_of_strings(doc, level):
    if not isinstance(doc, dict):
        doc = {"spec": doc}
    try:
        out = psa.check(level, doc)
    except (TypeError, AttributeError):
        pytest.fail("a malformed pod must not crash the evaluation")
    assert isinstance(out, list) and all(isinstance(v, str) for v in out)
