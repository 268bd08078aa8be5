"""Hostile manifests and quantities: pure logic, no daemon. Every input gives a ManifestError
with a path, or a valid document; never another exception, never an unbounded expansion."""
import copy
import json
from decimal import Decimal

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from podnetd.runtime import manifest
from podnetd.runtime.manifest import ManifestError

BASE = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "busybox"}]}}
HEADER = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n"
SPEC = "spec: {containers: [{name: a, image: busybox}]}\n"


def bomb(levels: int) -> str:
    """The billion-laughs shape: each level is ten aliases of the one before."""
    lines = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines)


def parse_error(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as e:
        manifest.parse(text)
    return e.value


# -- reproduced attacks --------------------------------------------------------------------

def test_status_alias_bomb_is_refused_before_it_unfolds():
    text = HEADER + SPEC + "status:\n" + bomb(6)   # 10^7 strings from about 500 bytes
    assert len(text) < 1000
    err = parse_error(text)
    assert err.path == "manifest" and "aliases are expanded" in err.why, err


def test_submitted_status_is_dropped():
    doc = manifest.parse(HEADER + SPEC + "status: {phase: Running, podIP: 10.0.0.1}\n")
    assert "status" not in doc


def test_alias_bomb_inside_spec_is_refused():
    """Where validation would keep it: args is a list of strings, each a 100 KB alias."""
    big = "x" * 100_000
    text = (HEADER + f"  annotations: {{a: &s '{big}'}}\n"
            + "spec:\n  containers:\n  - name: a\n    image: busybox\n    args: ["
            + ", ".join(["*s"] * 50) + "]\n")
    assert "aliases are expanded" in parse_error(text).why


def test_a_few_aliases_are_fine():
    text = (HEADER + "spec:\n  containers:\n  - name: a\n    image: busybox\n"
            "    env: &env [{name: A, value: '1'}]\n  - name: b\n    image: busybox\n"
            "    env: *env\n")
    doc = manifest.parse(text)
    assert doc["spec"]["containers"][1]["env"] == [{"name": "A", "value": "1"}]


def test_alias_free_documents_up_to_the_size_limit_are_not_taken_for_bombs():
    for filler in ("a,", "[],", "'',"):   # the densest shapes: most nodes per byte
        n = manifest.MAX_NODES - 100
        text = HEADER + SPEC + "x: [" + filler * n + "]\n"
        assert len(text) <= manifest.MAX_MANIFEST_BYTES
        assert parse_error(text).path == ".x"   # refused by validation, not by the expansion
    many = HEADER + SPEC + "x: [" + "a," * manifest.MAX_NODES + "]\n"
    assert "more than" in parse_error(many).why
    big = "y" * (manifest.MAX_MANIFEST_BYTES - 300)
    assert parse_error(HEADER + SPEC + f"x: '{big}'\n").path == ".x"


def test_recursive_alias_is_refused():
    err = parse_error(HEADER + SPEC + "status: &a [*a]\n")
    assert "refers to itself" in err.why


@pytest.mark.parametrize("value", ["1e10000000", "1e400", "1E999999999999", "1e-400000"])
def test_huge_exponents_are_exact_and_bounded(value):
    """Kubernetes caps at 2^63-1 and rounds tiny values up to 1n; no float, no overflow."""
    q = manifest.quantity(value, "spec.containers[0].resources.limits.cpu")
    assert q == (Decimal(2**63 - 1) if "-" not in value else Decimal("1e-9"))


def test_huge_exponent_cpu_in_a_manifest():
    doc = copy.deepcopy(BASE)
    doc["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1e400"}}
    manifest.validate(doc)   # capped, as Kubernetes does
    assert manifest.cpu_millis(doc["spec"]["containers"][0], "limits") == (2**63 - 1) * 1000


@pytest.mark.parametrize("value,where", [
    ("1e9223372036854775808", "suffix"), ("1" * 101, "longer than"), ("1.2.3", "regular"),
    ("e3", "numeric"), ("1Ki2", "suffix"), ("1 Ki", "regular"), ("0x10", "regular"),
    ("١٢", "regular"), ("1e", "suffix"), ("", "regular"), ("NaN", "regular"),
    (float("nan"), "regular"), (float("inf"), "regular"), (10**500, "longer than"),
    (True, "must be a quantity"), ({"a": 1}, "must be a quantity"),
])
def test_bad_quantities_are_manifest_errors(value, where):
    with pytest.raises(ManifestError) as e:
        manifest.quantity(value, "spec.containers[0].resources.limits.memory")
    assert e.value.path == "spec.containers[0].resources.limits.memory"
    assert where in e.value.why, e.value


@pytest.mark.parametrize("text,value", [
    ("128Mi", 128 * 2**20), ("1G", 10**9), ("500m", Decimal("0.5")), ("0.1m", Decimal("0.0001")),
    ("1.5Gi", 3 * 2**29), (".5", Decimal("0.5")), ("5.", 5), ("+1k", 1000), ("1e+3", 1000),
    ("1E3", 1000), ("1e-3", Decimal("0.001")), ("100n", Decimal("1e-7")), ("3u", Decimal("3e-6")),
    ("0.0000000001", Decimal("1e-9")), ("-1", -1), ("1Ei", 2**60), ("8E", 8 * 10**18),
    ("10E", 2**63 - 1), (" 2 ", 2), (2, 2), (0.25, Decimal("0.25")), (1e16, 10**16),
])
def test_quantities_follow_kubernetes(text, value):
    assert manifest.quantity(text, "q") == Decimal(value)


def test_negative_requests_are_refused():
    doc = copy.deepcopy(BASE)
    doc["spec"]["containers"][0]["resources"] = {"requests": {"memory": "-1Gi"}}
    with pytest.raises(ManifestError, match="greater than or equal to 0"):
        manifest.validate(doc)


# -- further attacks -----------------------------------------------------------------------

@pytest.mark.parametrize("text,why", [
    (HEADER + SPEC + "spec: {}\n", "duplicate key 'spec'"),
    ('{"apiVersion": "v1", "apiVersion": "v1"}', "duplicate key 'apiVersion'"),
    (HEADER + "  labels: {1: a}\n" + SPEC, "is not a string"),
    (HEADER + "  labels: {[a]: b}\n" + SPEC, "cannot parse"),
    (HEADER + SPEC + "x: !!python/object/apply:os.system ['true']\n", "cannot parse"),
    (HEADER + SPEC + "x: !!binary aGVsbG8=\n", "not allowed in a manifest"),
    (HEADER + SPEC + "x: !!set {a, b}\n", "not allowed in a manifest"),
    ('{"apiVersion": NaN}', "NaN is not valid JSON"),
    ('{"a": Infinity}', "Infinity is not valid JSON"),
    ("[" * 100_000, "nest"),
    ('{"a":' * 100_000, "nested deeper"),
    ('{"a":' * 65 + "1" + "}" * 65, "nested deeper"),
    ("a: " + "[" * 100 + "]" * 100, "nested deeper"),
    ("a:\n" + "".join(" " * i + "- \n" for i in range(1, 200)), "nested deeper"),
    ("x" * (manifest.MAX_MANIFEST_BYTES + 1), "larger than"),
    ("é" * (manifest.MAX_MANIFEST_BYTES // 2 + 1), "larger than"),
    ("a: \x00", "cannot parse"),
    ("a: *nope", "not defined"),
    ("a: 1\n---\nb: 2\n", "expected one document"),
    ("---\n" * 1000, "expected one document"),
    ("   \n\t", "empty document"),
])
def test_hostile_texts(text, why):
    err = parse_error(text)
    assert err.path == "manifest" and why in err.why, err


def test_non_text_is_refused():
    with pytest.raises(ManifestError, match="must be text"):
        manifest.load(b"apiVersion: v1")


def test_yaml_nan_and_infinity_are_values_that_fail_validation():
    err = parse_error(HEADER + "spec: {terminationGracePeriodSeconds: .nan, containers: "
                      "[{name: a, image: b}]}\n")
    assert err.path == "spec.terminationGracePeriodSeconds" and "integer" in err.why
    err = parse_error(HEADER + "spec: {containers: [{name: a, image: b, resources: "
                      "{limits: {cpu: .inf}}}]}\n")
    assert err.path == "spec.containers[0].resources.limits.cpu", err


def test_timestamps_stay_strings():
    doc = manifest.parse(HEADER + "  labels: {day: 2024-01-02}\n" + SPEC)
    assert doc["metadata"]["labels"]["day"] == "2024-01-02"


@pytest.mark.parametrize("path,value,where,why", [
    ("metadata.name", "p\n", "metadata.name", "DNS label"),        # $ matched before \n
    ("metadata.namespace", "default\n", "metadata.namespace", "DNS label"),
    ("metadata.name", "ｐ", "metadata.name", "DNS label"),
    ("metadata.name", "x" * 64, "metadata.name", "DNS label"),
    ("metadata.labels", {"app": "a b"}, "metadata.labels.app", "label value"),
    ("metadata.labels", {"app": "x" * 64}, "metadata.labels.app", "label value"),
    ("metadata.labels", {"a/b/c": "x"}, "metadata.labels.'a/b/c'", "prefix part"),
    ("metadata.labels", {"-a": "x"}, "metadata.labels.'-a'", "name part"),
    ("metadata.annotations", {"a": "x" * 300_000}, "metadata.annotations", "Too long"),
    ("spec.containers.0.env", [{"name": "A\n"}], "spec.containers[0].env[0].name", "variable"),
    ("spec.containers.0.securityContext", {"runAsUser": 2**63},
     "spec.containers[0].securityContext.runAsUser", "<= 2147483647"),
    ("spec.containers.0.securityContext", {"runAsUser": -1},
     "spec.containers[0].securityContext.runAsUser", ">= 0"),
    ("spec.containers.0.securityContext", {"runAsUser": 1.5},
     "spec.containers[0].securityContext.runAsUser", "integer"),
    ("spec.containers.0.securityContext", {"capabilities": {"add": ["NET_ADMIN\n"]}},
     "spec.containers[0].securityContext.capabilities.add[0]", "capability"),
    ("spec.containers.0.workingDir", "/a\x00b", "spec.containers[0].workingDir", "NUL"),
    ("spec.containers.0.volumeMounts", [{"name": "v", "mountPath": "/v", "subPath": "a\x00"}],
     "spec.containers[0].volumeMounts[0].subPath", "relative path"),
    ("spec.terminationGracePeriodSeconds", 1e300,
     "spec.terminationGracePeriodSeconds", "integer"),
    ("spec.volumes", [{"name": "v", "emptyDir": None}], "spec.volumes[0]", "exactly one"),
    ("spec.containers.0.securityContext", {"seccompProfile": {"type": "Localhost"}},
     "spec.containers[0].securityContext.seccompProfile.localhostProfile", "must be set"),
    ("spec.securityContext", {"seccompProfile": {"type": "Localhost",
                                                 "localhostProfile": "../x.json"}},
     "spec.securityContext.seccompProfile.localhostProfile", "'..'"),
    ("spec.securityContext", {"seccompProfile": {"type": "Localhost",
                                                 "localhostProfile": "/etc/x.json"}},
     "spec.securityContext.seccompProfile.localhostProfile", "relative"),
    ("spec.securityContext", {"seccompProfile": {"type": "RuntimeDefault",
                                                 "localhostProfile": "x.json"}},
     "spec.securityContext.seccompProfile.localhostProfile", "only be set"),
    ("spec.securityContext", {"seccompProfile": {"type": "unconfined"}},
     "spec.securityContext.seccompProfile.type", "unsupported value"),
    ("spec.securityContext", {"seccompProfile": {}},
     "spec.securityContext.seccompProfile.type", "required"),
])
def test_hostile_fields(path, value, where, why):
    doc = copy.deepcopy(BASE)
    node, keys = doc, path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    node[keys[-1]] = value
    with pytest.raises(ManifestError) as e:
        manifest.parse(json.dumps(doc))
    assert e.value.path == where and why in e.value.why, e.value


def test_seccomp_profiles_are_accepted():
    doc = copy.deepcopy(BASE)
    doc["spec"]["securityContext"] = {"seccompProfile": {"type": "Localhost",
                                                         "localhostProfile": "profiles/a.json"}}
    doc["spec"]["containers"][0]["securityContext"] = {"seccompProfile": {"type": "Unconfined"}}
    manifest.validate(doc)
    merged = manifest.security(doc["spec"], {})
    assert merged["seccompProfile"]["type"] == "Localhost"
    merged = manifest.security(doc["spec"], doc["spec"]["containers"][0])
    assert merged["seccompProfile"] == {"type": "Unconfined"}


def test_nulls_mean_unset():
    doc = manifest.parse(HEADER + "spec:\n  containers:\n  - {name: a, image: busybox, "
                         "securityContext: null, resources: {limits: null}}\n")
    assert "securityContext" not in doc["spec"]["containers"][0]


def test_long_values_are_cut_in_messages():
    doc = copy.deepcopy(BASE)
    doc["spec"]["restartPolicy"] = "x" * 500_000
    with pytest.raises(ManifestError) as e:
        manifest.validate(doc)
    assert len(str(e.value)) < 300


# -- fuzzing -------------------------------------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                      st.text(max_size=20), st.sampled_from(["", "v1", "Pod", "a", "1Gi", "1e400"]))
KEYS = st.sampled_from(["apiVersion", "kind", "metadata", "spec", "status", "name", "containers",
                        "image", "resources", "limits", "cpu", "memory", "securityContext",
                        "seccompProfile", "type", "volumes", "ports", "env", "labels", "x"])
trees = st.recursive(json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), kids,
                                                max_size=5)), max_leaves=30)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_or_error(text):
    try:
        doc = manifest.parse(text)
    except ManifestError as e:
        assert e.path and e.why
        return None
    json.dumps(doc)   # whatever is accepted can be persisted
    assert "status" not in doc
    return doc


@FUZZ
@given(trees)
def test_fuzz_json_trees(tree):
    _parse_or_error(json.dumps(tree) if isinstance(tree, dict) else "{" + json.dumps(tree))
    _parse_or_error(yaml.safe_dump(tree))


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_any_text(text):
    _parse_or_error(text)


@FUZZ
@given(st.text(alphabet="{}[]&*!:-,'\"\n #|>?%@`ab1.e", max_size=200))
def test_fuzz_yaml_syntax(text):
    _parse_or_error(text)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([
    "metadata.name", "metadata.labels", "spec.containers.0.name", "spec.containers.0.image",
    "spec.containers.0.resources", "spec.containers.0.resources.limits",
    "spec.containers.0.resources.limits.cpu", "spec.containers.0.resources.requests.memory",
    "spec.containers.0.securityContext", "spec.containers.0.securityContext.seccompProfile",
    "spec.containers.0.ports", "spec.containers.0.env", "spec.volumes", "spec.hostNetwork",
    "spec.containers.0.livenessProbe", "spec.containers.0.volumeMounts", "spec.securityContext",
    "spec.initContainers", "spec.containers.0.lifecycle", "spec.containers.0.command",
]), trees), min_size=1, max_size=3))
def test_fuzz_fields(changes):
    doc = copy.deepcopy(BASE)
    for path, value in changes:
        node, keys = doc, path.split(".")
        for k in keys[:-1]:
            if isinstance(node, list):
                node = node[int(k)] if node and isinstance(node[0], dict) else None
            elif isinstance(node, dict):
                node = node.setdefault(k, {}) if isinstance(node.get(k, {}), (dict, list)) \
                    else None
            if node is None:
                break
        else:
            if isinstance(node, dict):
                node[keys[-1]] = value
    _parse_or_error(json.dumps(doc))


QUANTITY_TEXT = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[+-]?[0-9]{0,30}(\.[0-9]{0,30})?([eE][+-]?[0-9]{1,25}|[numkMGTPE]|[KMGTPE]i)?",
                  fullmatch=True),
    st.integers(), st.floats(), st.booleans(), st.none())


@FUZZ
@given(QUANTITY_TEXT)
def test_fuzz_quantities(value):
    try:
        q = manifest.quantity(value, "spec.x")
    except ManifestError as e:
        assert e.path == "spec.x" and e.why
        return
    assert isinstance(q, Decimal) and abs(q) <= 2**63 - 1
    assert q == 0 or abs(q) >= Decimal("1e-9")
