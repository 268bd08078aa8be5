"""Pod manifest validation: pure logic, no daemon."""
import copy
import pathlib

import pytest
import yaml

from podnetd.runtime import manifest, spec
from podnetd.runtime.manifest import ManifestError

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

BASE = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "busybox"}]}}


def with_(path: str, value):
    doc = copy.deepcopy(BASE)
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return doc


def refused(doc) -> ManifestError:
    with pytest.raises(ManifestError) as e:
        manifest.validate(doc)
    return e.value


def test_minimal_is_accepted():
    manifest.validate(copy.deepcopy(BASE))


@pytest.mark.parametrize("path,value,where,why", [
    ("spec.containers.0.stdin", True, "spec.containers[0].stdin", "not supported"),
    ("spec.dnsConfig", {}, "spec.dnsConfig", "not supported"),
    ("spec.restartPolicy", "Sometimes", "spec.restartPolicy", "unsupported value"),
    ("spec.terminationGracePeriodSeconds", -1, "spec.terminationGracePeriodSeconds", ">= 0"),
    ("spec.containers.0.name", "Bad_Name", "spec.containers[0].name", "DNS label"),
    ("spec.containers.0.resources", {"limits": {"memory": "lots"}},
     "spec.containers[0].resources.limits.memory", "not a quantity"),
    ("spec.containers.0.resources", {"limits": {"cpu": "100m"}, "requests": {"cpu": "1"}},
     "spec.containers[0].resources.requests.cpu", "less than or equal"),
    ("spec.containers.0.ports", [{"containerPort": 70000}],
     "spec.containers[0].ports[0].containerPort", "<= 65535"),
    ("spec.containers.0.volumeMounts", [{"name": "nope", "mountPath": "/x"}],
     "spec.containers[0].volumeMounts[0].name", "no volume named"),
    ("spec.containers.0.livenessProbe", {"exec": {"command": ["true"]}, "tcpSocket": {"port": 1}},
     "spec.containers[0].livenessProbe", "exactly one"),
    ("spec.containers.0.livenessProbe", {"exec": {"command": ["true"]}, "successThreshold": 2},
     "spec.containers[0].livenessProbe.successThreshold", "must be 1"),
    ("spec.containers.0.readinessProbe", {"httpGet": {"port": "web"}},
     "spec.containers[0].readinessProbe.httpGet.port", "no container port named"),
    ("spec.containers.0.securityContext", {"capabilities": {"drop": ["net raw"]}},
     "spec.containers[0].securityContext.capabilities.drop[0]", "not a capability"),
    ("spec.containers.0.securityContext", {"runAsNonRoot": True, "runAsUser": 0},
     "spec.containers[0].securityContext.runAsUser", "runAsNonRoot"),
    ("spec.containers.0.lifecycle", {"postStart": {"exec": {"command": ["x"]}}},
     "spec.containers[0].lifecycle.postStart", "not supported"),
    ("spec.volumes", [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}}],
     "spec.volumes[0]", "exactly one"),
    ("spec.volumes", [{"name": "v", "hostPath": {"path": "relative"}}],
     "spec.volumes[0].hostPath.path", "absolute"),
    ("spec.volumes", [{"name": "v", "secret": {}}], "spec.volumes[0].secret", "not supported"),
    ("spec.containers", [], "spec.containers", "required"),
    ("spec.containers.0.image", "", "spec.containers[0].image", "required"),
    ("kind", "Deployment", ".kind", "unsupported value"),
    ("metadata.name", "UPPER", "metadata.name", "DNS label"),
])
def test_refused_with_path_and_why(path, value, where, why):
    err = refused(with_(path, value))
    assert err.path.lstrip(".") == where.lstrip("."), str(err)
    assert why in err.why, str(err)


def test_duplicate_container_names_across_init_and_app():
    doc = copy.deepcopy(BASE)
    doc["spec"]["initContainers"] = [{"name": "a", "image": "busybox"}]
    err = refused(doc)
    assert err.path == "spec.containers[0].name" and "already used" in err.why


def test_probes_only_in_sidecar_init_containers():
    doc = copy.deepcopy(BASE)
    probe = {"exec": {"command": ["true"]}}
    doc["spec"]["initContainers"] = [{"name": "i", "image": "busybox", "livenessProbe": probe}]
    assert "only in a sidecar" in refused(doc).why
    doc["spec"]["initContainers"][0]["restartPolicy"] = "Always"
    manifest.validate(doc)


def test_load_rejects_garbage_and_multiple_documents():
    with pytest.raises(ManifestError, match="cannot parse"):
        manifest.load("{not json")
    with pytest.raises(ManifestError, match="expected one document"):
        manifest.load("a: 1\n---\nb: 2\n")


def test_quantities_and_defaults():
    assert manifest.quantity("128Mi", "") == 128 * 2**20
    assert manifest.quantity("1G", "") == 10**9
    assert manifest.quantity("500m", "") == 0.5
    c = {"resources": {"limits": {"cpu": "250m", "memory": "64Mi"}, "requests": {"cpu": "0.1"}}}
    assert manifest.cpu_millis(c, "limits") == 250 and manifest.cpu_millis(c, "requests") == 100
    assert manifest.memory_bytes(c) == 64 * 2**20
    assert manifest.restart_policy({}) == "Always" and manifest.grace_period({}) == 30
    assert manifest.grace_period({"terminationGracePeriodSeconds": 0}) == 0


def test_security_merges_pod_and_container():
    pod = {"securityContext": {"runAsUser": 1000, "runAsNonRoot": True}}
    merged = manifest.security(pod, {"securityContext": {"runAsUser": 2000}})
    assert merged["runAsUser"] == 2000 and merged["runAsNonRoot"] is True


def test_capabilities_and_resources_spec():
    caps = spec.capabilities(["NET_ADMIN"], ["NET_RAW", "chown"], False)
    assert "CAP_NET_ADMIN" in caps and "CAP_NET_RAW" not in caps and "CAP_CHOWN" not in caps
    assert spec.capabilities([], ["ALL"], False) == []
    assert "CAP_SYS_ADMIN" in spec.capabilities([], [], True)
    assert spec.capabilities([], [], True, bounding=0b101) == ["CAP_CHOWN", "CAP_DAC_READ_SEARCH"]
    res = spec.resources(500, 250, 64 * 2**20, False)
    assert res["cpu"] == {"shares": 256, "quota": 50000, "period": 100000}
    assert res["memory"]["limit"] == 64 * 2**20


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path):
    manifest.validate(yaml.safe_load(path.read_text()))
