"""podnetctl's pure logic for the cluster verbs: kubectl's columns and ages, pod and node STATUS,
apply's document splitting and merge, kind names, label and taint specs, drain's filters, and
selectors passed through untouched."""
import json

import pytest

from podnetd.ctl import manifests, merge, printers
from podnetd.ctl.apiclient import KubectlError
from podnetd.ctl.edit import parse_labels, relabel
from podnetd.ctl.get import _fetch
from podnetd.ctl.nodeops import classify, parse_taint, retaint
from podnetd.ctl.resources import Kind, Kinds, split_args

NOW = 1_700_000_000.0


def ts(seconds_ago: float) -> str:
    import datetime
    t = datetime.datetime.fromtimestamp(NOW - seconds_ago, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (5, "5s"), (119, "119s"), (120, "2m"), (182, "3m2s"), (599, "9m59s"),
    (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"), (4 * 3600 + 5 * 60, "4h5m"),
    (8 * 3600, "8h"), (47 * 3600, "47h"), (2 * 86400, "2d"), (2 * 86400 + 3 * 3600, "2d3h"),
    (8 * 86400, "8d"), (400 * 86400, "400d"), (3 * 365 * 86400, "3y"), (-1, "0s"),
    (-5, "<invalid>"),
])
def test_ages_as_kubectl_prints_them(seconds, text):
    assert printers.human_duration(seconds) == text


def test_timestamps_with_fractions_and_offsets():
    assert printers.parse_time("2024-05-01T10:00:00Z") == printers.parse_time(
        "2024-05-01T12:00:00.000+02:00")
    assert printers.parse_time("garbage") is None and printers.age(None, NOW) == "<unknown>"


def pod(name="web", phase="Running", statuses=None, **extra) -> dict:
    p = {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": name, "namespace": "default", "creationTimestamp": ts(300)},
         "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
         "status": {"phase": phase, "podIP": "10.1.0.5", "containerStatuses": statuses or []}}
    for key, value in extra.items():
        p[key].update(value) if isinstance(value, dict) else p.__setitem__(key, value)
    return p


RUNNING = {"running": {"startedAt": ts(200)}}


def test_pod_columns_and_wide_columns():
    p = pod(statuses=[{"name": "a", "ready": True, "restartCount": 2, "state": RUNNING,
                       "lastState": {"terminated": {"exitCode": 1, "finishedAt": ts(65)}}},
                      {"name": "b", "ready": False, "restartCount": 1, "state": RUNNING}])
    lines = printers.table("Pod", [p], now=NOW).splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split() == ["web", "1/2", "Running", "3", "(65s", "ago)", "5m"]
    wide = printers.table("Pod", [p], wide=True, now=NOW).splitlines()
    assert wide[0].split()[5:] == ["IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"]
    assert wide[1].split()[-4:] == ["10.1.0.5", "n1", "<none>", "<none>"]
    assert "   " in lines[0]                      # three spaces between columns, as kubectl


def test_all_namespaces_adds_the_namespace_column_and_several_kinds_prefix_names():
    lines = printers.table("Pod", [pod()], namespace_column=True, name_prefix="pod",
                           now=NOW).splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert lines[1].split()[:2] == ["default", "pod/web"]


@pytest.mark.parametrize("statuses, extra, want", [
    ([{"state": {"waiting": {"reason": "ImagePullBackOff"}}}], {}, "ImagePullBackOff"),
    ([{"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}], {}, "OOMKilled"),
    ([{"state": {"terminated": {"exitCode": 3}}}], {}, "ExitCode:3"),
    ([{"state": {"terminated": {"exitCode": 0, "signal": 9}}}], {}, "Signal:9"),
    ([{"state": RUNNING, "ready": True}], {"metadata": {"deletionTimestamp": ts(1)}},
     "Terminating"),
    ([], {"status": {"phase": "Pending"}}, "Pending"),
    ([], {"status": {"phase": "Failed", "reason": "Evicted"}}, "Evicted"),
])
def test_pod_status_says_what_kubectl_says(statuses, extra, want):
    assert printers.pod_status(pod(statuses=statuses, **extra)) == want


def test_init_containers_show_progress():
    p = pod(statuses=[], spec={"initContainers": [{"name": "i1"}, {"name": "i2"}]},
            status={"phase": "Pending", "initContainerStatuses": [
                {"name": "i1", "state": {"terminated": {"exitCode": 0}}},
                {"name": "i2", "state": {"running": {}}}]})
    assert printers.pod_status(p) == "Init:1/2"
    p["status"]["initContainerStatuses"][1]["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    assert printers.pod_status(p) == "Init:CrashLoopBackOff"


def node(ready="True", unschedulable=False, labels=None) -> dict:
    n = {"kind": "Node", "metadata": {"name": "n1", "creationTimestamp": ts(7200),
                                      "labels": labels or {}},
         "spec": {"unschedulable": True} if unschedulable else {},
         "status": {"conditions": [{"type": "Ready", "status": ready}] if ready else [],
                    "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                    "nodeInfo": {"kubeletVersion": "podnet/0.1.0", "osImage": "Debian",
                                 "kernelVersion": "6.1", "containerRuntimeVersion": "runc://1"}}}
    return n


@pytest.mark.parametrize("ready, cordoned, want", [
    ("True", False, "Ready"), ("False", False, "NotReady"), ("Unknown", False, "NotReady"),
    (None, False, "Unknown"), ("True", True, "Ready,SchedulingDisabled"),
])
def test_node_status(ready, cordoned, want):
    assert printers.node_status(node(ready, cordoned)) == want


def test_node_columns_roles_and_wide():
    n = node(labels={"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "edge"})
    lines = printers.table("Node", [n], wide=True, now=NOW).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP",
                                "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert lines[1].split() == ["n1", "Ready", "control-plane,edge", "120m", "podnet/0.1.0",
                                "10.0.0.1", "<none>", "Debian", "6.1", "runc://1"]


def test_other_kinds_columns():
    ns = {"metadata": {"name": "prod", "creationTimestamp": ts(30)}, "status": {"phase": "Active"}}
    assert printers.table("Namespace", [ns], now=NOW).splitlines()[1].split() == \
        ["prod", "Active", "30s"]
    ev = {"type": "Warning", "reason": "FailedScheduling", "lastTimestamp": ts(4),
          "involvedObject": {"kind": "Pod", "name": "web"},
          "message": "0/3 nodes are available: 3 Insufficient memory.", "metadata": {"name": "e"}}
    lines = printers.table("Event", [ev], now=NOW).splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert lines[1].split()[:4] == ["4s", "Warning", "FailedScheduling", "pod/web"]
    lease = {"metadata": {"name": "n1", "creationTimestamp": ts(10)},
             "spec": {"holderIdentity": "n1"}}
    assert printers.table("Lease", [lease], now=NOW).splitlines()[1].split() == ["n1", "n1", "10s"]
    role = {"metadata": {"name": "r", "creationTimestamp": "2024-01-01T00:00:00Z"}}
    assert printers.table("ClusterRole", [role], now=NOW).splitlines() == [
        "NAME   CREATED AT", "r      2024-01-01T00:00:00Z"]
    binding = {"metadata": {"name": "b", "creationTimestamp": ts(3)},
               "roleRef": {"kind": "Role", "name": "reader"},
               "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"}]}
    assert printers.table("RoleBinding", [binding], wide=True, now=NOW).splitlines()[1].split() \
        == ["b", "Role/reader", "3s", "alice", "devs"]
    assert printers.table("Widget", [lease], now=NOW).splitlines()[0].split() == ["NAME", "AGE"]


KINDS = Kinds([
    Kind("Pod", "pods", "v1", True, ("po",)), Kind("Node", "nodes", "v1", False, ("no",)),
    Kind("Namespace", "namespaces", "v1", False, ("ns",)), Kind("Event", "events", "v1", True,
                                                                ("ev",)),
    Kind("ClusterRole", "clusterroles", "rbac.authorization.k8s.io/v1", False),
])


@pytest.mark.parametrize("name, resource", [
    ("pods", "pods"), ("pod", "pods"), ("po", "pods"), ("Pod", "pods"), ("no", "nodes"),
    ("ns", "namespaces"), ("ev", "events"), ("clusterrole", "clusterroles"),
    ("clusterroles.rbac.authorization.k8s.io", "clusterroles"), ("pods.v1", "pods"),
])
def test_kinds_by_every_name_kubectl_takes(name, resource):
    assert KINDS.lookup(name).resource == resource


def test_unknown_kind_in_kubectls_words():
    with pytest.raises(KubectlError, match='the server doesn\'t have a resource type "widgets"'):
        KINDS.lookup("widgets")


def test_type_name_forms():
    assert [(k.resource, n) for k, n in split_args(KINDS, ["po", "a", "b"])] == \
        [("pods", ["a", "b"])]
    assert [(k.resource, n) for k, n in split_args(KINDS, ["pod/a", "no/n1", "po/b"])] == \
        [("pods", ["a", "b"]), ("nodes", ["n1"])]
    assert [k.resource for k, _ in split_args(KINDS, ["pods,nodes"])] == ["pods", "nodes"]
    with pytest.raises(KubectlError):
        split_args(KINDS, ["pods", "pod/a"])
    assert KINDS.lookup("clusterrole").qualified == "clusterrole.rbac.authorization.k8s.io"
    assert printers.name_of("pod", pod()) == "pod/web"


def test_documents_split_yaml_streams_json_and_lists(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\n"
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: n}}\n"
        "- {apiVersion: v1, kind: Pod, metadata: {name: b}}\n")
    (tmp_path / "b.json").write_text(json.dumps({"apiVersion": "v1", "kind": "PodList", "items": [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c"}}]}))
    (tmp_path / "notes.txt").write_text("not a manifest")
    names = [(m.source.rsplit("/", 1)[1], m.obj["metadata"]["name"])
             for m in manifests.load([str(tmp_path)])]
    assert names == [("a.yaml", "a"), ("a.yaml", "n"), ("a.yaml", "b"), ("b.json", "c")]


@pytest.mark.parametrize("text, error", [
    ("kind: Pod\nmetadata: {name: a}", "apiVersion not set"),
    ("apiVersion: v1\nkind: Pod\n", "metadata not set"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {labels: {}}", "metadata.name not set"),
    ("- a\n- b", "must be a mapping"),
    ("a: &x [1]\nb: *x", "aliases"),
    ("apiVersion: v1\nkind: List\nitems: 5", "items: must be a list"),
    ("key: [unclosed", "error parsing"),
])
def test_bad_manifests_are_refused_before_anything_is_sent(tmp_path, text, error):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(KubectlError, match=error):
        manifests.load([str(path)])


def test_a_missing_path_and_an_empty_file():
    with pytest.raises(KubectlError, match='the path "/nonexistent/x.yaml" does not exist'):
        manifests.load(["/nonexistent/x.yaml"])


def live_pod() -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1",
                         "resourceVersion": "42", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "restartPolicy": "Always",
                     "containers": [{"name": "app", "image": "busybox:1",
                                     "imagePullPolicy": "IfNotPresent"}]},
            "status": {"phase": "Running"}}


def desired_pod(**labels) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web", **labels}},
            "spec": {"containers": [{"name": "app", "image": "busybox:1"}]}}


def test_apply_of_the_same_manifest_is_unchanged_despite_server_defaults():
    once = merge.applied(live_pod(), desired_pod())[0]   # as stored after the first apply
    assert once["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert merge.applied(once, desired_pod()) == (once, False)
    assert merge.applied(once, desired_pod(tier="x"))[1]


def test_apply_keeps_what_the_server_set_and_sends_the_resource_version():
    merged, changed = merge.applied(live_pod(), desired_pod(tier="front"))
    assert changed
    assert merged["metadata"]["resourceVersion"] == "42" and merged["metadata"]["uid"] == "u1"
    assert merged["spec"]["nodeName"] == "n1" and merged["status"] == {"phase": "Running"}
    assert merged["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert merged["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert json.loads(merged["metadata"]["annotations"][merge.LAST_APPLIED]) == \
        desired_pod(tier="front")


def test_apply_removes_what_the_last_apply_set_and_this_one_dropped():
    live = merge.applied(live_pod(), desired_pod(tier="front"))[0]
    merged, changed = merge.applied(live, desired_pod())
    assert changed and merged["metadata"]["labels"] == {"app": "web"}
    # a label someone else added (not in the last apply) stays
    live["metadata"]["labels"]["owner"] = "ops"
    assert merge.applied(live, desired_pod(tier="front"))[0]["metadata"]["labels"] == \
        {"app": "web", "tier": "front", "owner": "ops"}


def test_contains_compares_types_strictly():
    assert merge.contains({"a": 1, "b": 2}, {"a": 1})
    assert not merge.contains({"a": True}, {"a": 1})
    assert not merge.contains({"a": [1, 2]}, {"a": [1]})
    assert merge.contains({"a": 1.0}, {"a": 1})


def test_label_specs():
    assert parse_labels(["a=b", "c-", "x.io/y=", "k8s.io/z=1"]) == (
        {"a": "b", "x.io/y": "", "k8s.io/z": "1"}, ["c"])
    for bad in ["a", "-a=b", "a=b c", "a=" + "x" * 64, "a=b=c"]:
        with pytest.raises(KubectlError, match="invalid label spec"):
            parse_labels([bad])
    with pytest.raises(KubectlError, match="both modify and remove"):
        parse_labels(["a=b", "a-"])
    obj = {"metadata": {"labels": {"a": "1"}}}
    with pytest.raises(KubectlError,
                       match="'a' already has a value \\(1\\), and --overwrite is false"):
        relabel(obj, {"a": "2"}, [], overwrite=False)
    assert relabel(obj, {"a": "2"}, [], overwrite=True) and obj["metadata"]["labels"] == {"a": "2"}
    assert not relabel(obj, {"a": "2"}, [], overwrite=False)


def test_taint_specs_and_changes():
    assert parse_taint("k=v:NoSchedule") == \
        ("add", {"key": "k", "value": "v", "effect": "NoSchedule"})
    assert parse_taint("k:NoExecute") == ("add", {"key": "k", "effect": "NoExecute"})
    assert parse_taint("k-") == ("remove", {"key": "k", "effect": ""})
    assert parse_taint("k:NoSchedule-") == ("remove", {"key": "k", "effect": "NoSchedule"})
    for bad in ["k=v", "k=v:Sometimes", ":NoSchedule", "k=v-"]:
        with pytest.raises(KubectlError, match="invalid taint spec"):
            parse_taint(bad)
    n = {"metadata": {"name": "n1"}, "spec": {}}
    assert retaint(n, [parse_taint("k=v:NoSchedule")[1]], [], False)
    with pytest.raises(KubectlError, match="node n1 already has k taint"):
        retaint(n, [parse_taint("k=w:NoSchedule")[1]], [], False)
    assert retaint(n, [parse_taint("k=w:NoSchedule")[1]], [], True)
    assert n["spec"]["taints"] == [{"key": "k", "value": "w", "effect": "NoSchedule"}]
    assert retaint(n, [], [parse_taint("k-")[1]], False) and "taints" not in n["spec"]
    with pytest.raises(KubectlError, match='taint "k" not found'):
        retaint(n, [], [parse_taint("k-")[1]], False)


def _drain_pod(name, owner=None, mirror=False, phase="Running", volumes=None):
    p = pod(name, phase=phase)
    if owner:
        p["metadata"]["ownerReferences"] = [{"kind": owner, "name": "o", "controller": True}]
    if mirror:
        p["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "x"}
    if volumes:
        p["spec"]["volumes"] = volumes
    return p


def test_drain_refuses_what_kubectl_refuses():
    pods = [_drain_pod("rs", owner="ReplicaSet"), _drain_pod("bare"),
            _drain_pod("ds", owner="DaemonSet"), _drain_pod("static", mirror=True),
            _drain_pod("done", phase="Succeeded"),
            _drain_pod("scratch", owner="ReplicaSet", volumes=[{"name": "t", "emptyDir": {}}])]
    delete, fatal, warn = classify(pods, force=False, ignore_daemonsets=False,
                                   delete_emptydir_data=False)
    assert [p["metadata"]["name"] for p in delete] == ["rs", "done"]
    assert fatal == {
        "cannot delete Pods declare no controller (use --force to override)": ["default/bare"],
        "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)": ["default/ds"],
        "cannot delete Pods with local storage (use --delete-emptydir-data to override)":
            ["default/scratch"]}
    delete, fatal, warn = classify(pods, force=True, ignore_daemonsets=True,
                                   delete_emptydir_data=True)
    assert [p["metadata"]["name"] for p in delete] == ["rs", "bare", "done", "scratch"]
    assert not fatal and warn["ignoring DaemonSet-managed Pods"] == ["default/ds"]
    assert warn["deleting Pods that declare no controller"] == ["default/bare"]


class RecordingClient:
    """Records ListObjects/GetObject arguments (pure: what get sends, not what a server does)."""

    def __init__(self):
        self.calls = []

    def list(self, *args):
        self.calls.append(("list", args))
        return {"items": [], "metadata": {"resourceVersion": "7"}}


class Args:
    all_namespaces = False
    selector = "app in (web,api),!canary"
    field_selector = "spec.nodeName=n1,status.phase!=Failed"


def test_selectors_reach_the_server_untouched():
    from podnetd.ctl.session import Session
    s = Session.__new__(Session)
    s.client = RecordingClient()
    s.target = type("T", (), {"namespace": "prod"})()
    objects, rv, errors = _fetch(s, KINDS.lookup("pods"), [], Args, Args.field_selector)
    assert s.client.calls == [("list", ("pods", "prod", "app in (web,api),!canary",
                                        "spec.nodeName=n1,status.phase!=Failed"))]
    assert (objects, rv, errors) == ([], "7", [])
    Args.all_namespaces = True
    _fetch(s, KINDS.lookup("pods"), [], Args, "")
    assert s.client.calls[-1][1][1] == ""         # -A: every namespace
    _fetch(s, KINDS.lookup("nodes"), [], Args, "")
    assert s.client.calls[-1][1][1] == ""         # cluster-scoped: no namespace
