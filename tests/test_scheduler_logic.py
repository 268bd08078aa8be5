"""The scheduler's decision logic (podnetd/scheduler): label selectors, each filter and score
plugin on small node and pod objects, kube-scheduler's unschedulable message, the snapshot's
incremental updates, and properties checked against a naive re-implementation over random
clusters. Pure logic: no root, no daemon."""
import copy
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnetd.scheduler import Snapshot, fit_error_message, queue_sort_key, schedule, \
    wants_scheduling
from podnetd.scheduler import labels as sel
from podnetd.scheduler.objects import DEFAULT_MEMORY, pod_info, pod_requests, InvalidObject

_uids = itertools.count()


def node(name, cpu="4", memory="8Gi", pods="110", labels=None, taints=None, ready="True",
         unschedulable=False, zone=None, extra=None):
    lab = {"kubernetes.io/hostname": name, **(labels or {})}
    if zone:
        lab["topology.kubernetes.io/zone"] = zone
    conditions = [] if ready is None else [{"type": "Ready", "status": ready}]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": lab},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods,
                                       **(extra or {})},
                       "conditions": conditions}}


def pod(name, cpu=None, memory=None, labels=None, ns="default", node_name=None, ports=(),
        owner=None, uid=None, **spec):
    requests = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
    container = {"name": "app", "image": "busybox", "resources": {"requests": requests},
                 "ports": [dict(p) for p in ports]}
    meta = {"name": name, "namespace": ns, "uid": uid or f"uid-{name}-{next(_uids)}",
            "labels": labels if labels is not None else {"app": name}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                    "name": owner, "uid": owner, "controller": True}]
    body = {"containers": [container], **spec}
    if node_name:
        body["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body,
            "status": {"phase": "Running" if node_name else "Pending"}}


def place(snap, p):
    """Schedule and assume, as the loop does; returns the result."""
    r = schedule(p, snap)
    if r.node_name:
        snap.assume(r.pod, r.node_name)
    return r


def anti_affinity(app, key="kubernetes.io/hostname"):
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}}


# -- label selectors -----------------------------------------------------------------------

@pytest.mark.parametrize("text,labels,want", [
    ("a=b", {"a": "b"}, True),
    ("a==b", {"a": "b"}, True),
    ("a!=b", {}, True),                       # NotIn matches a missing key
    ("a!=b", {"a": "b"}, False),
    ("a in (x, y)", {"a": "y"}, True),
    ("a notin (x)", {"b": "x"}, True),
    ("a notin (x)", {"a": "x"}, False),
    ("!a", {"a": "1"}, False),
    (" app = web , tier in (fe,be) , !canary ", {"app": "web", "tier": "be"}, True),
    ("", {"anything": "x"}, True),
])
def test_kubectl_selector_text_compiles_to_the_same_matches(text, labels, want):
    """The scheduler reads selectors with the API server's reader (podnetd.apiserver.selectors)
    and compiles them: the compiled form matches as the reader's own does."""
    from podnetd.apiserver import selectors
    assert sel.parse(text).matches(labels) is want
    assert selectors.parse(text).matches(labels) is want


def test_compiled_selectors_are_normalized_and_print_in_kubectl_syntax():
    a = sel.parse("b in (y,x),a=1,!c")
    assert a == sel.parse("!c, a==1, b in (x,y)")
    assert hash(a) == hash(sel.parse("!c,a=1,b in (x,y)"))
    assert str(a) == "a=1,b in (x,y),!c"
    with pytest.raises(sel.SelectorError):
        sel.parse("a in (x")


def test_label_selector_object():
    s = sel.from_label_selector({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["fe", "be"]},
        {"key": "canary", "operator": "DoesNotExist"}]})
    assert s.matches({"app": "web", "tier": "fe"})
    assert not s.matches({"app": "web", "tier": "fe", "canary": "1"})
    assert not s.matches({"app": "web", "tier": "db"})
    assert sel.from_label_selector({}).matches({"x": "y"})          # empty: everything
    assert not sel.from_label_selector(None).matches({})            # nil: nothing
    with pytest.raises(sel.SelectorError, match=r"matchExpressions\[0\].values: Required"):
        sel.from_label_selector({"matchExpressions": [{"key": "a", "operator": "In"}]})
    with pytest.raises(sel.SelectorError, match="Unsupported value: 'Gt'"):
        sel.from_label_selector({"matchExpressions": [
            {"key": "a", "operator": "Gt", "values": ["1"]}]})
    with pytest.raises(sel.SelectorError, match="Forbidden"):
        sel.from_label_selector({"matchExpressions": [
            {"key": "a", "operator": "Exists", "values": ["1"]}]})


def test_node_selector_terms_are_ored_and_expressions_anded():
    ns = sel.node_selector({"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["8"]},
                              {"key": "gpu", "operator": "Exists"}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}]},
        {},                                                    # empty term: matches nothing
        {"matchExpressions": [{"key": "x", "operator": "Bogus"}]},   # invalid: matches nothing
    ]})
    assert ns.matches("n1", {"cores": "16", "gpu": "a100"})
    assert not ns.matches("n1", {"cores": "16"})
    assert not ns.matches("n1", {"cores": "4", "gpu": "t4"})
    assert ns.matches("n9", {})
    assert not ns.matches("n1", {"x": "1"})
    lt = sel.node_selector({"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "gen", "operator": "Lt", "values": ["3"]},
        {"key": "zone", "operator": "NotIn", "values": ["a"]}]}]})
    assert lt.matches("n", {"gen": "2", "zone": "b"})
    assert lt.matches("n", {"gen": "2"})
    assert not lt.matches("n", {"gen": "3"})


# -- requests ------------------------------------------------------------------------------

def test_pod_requests_follow_kubernetes():
    spec = {"containers": [
        {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
        {"name": "b", "resources": {"limits": {"cpu": "0.2", "memory": "1Gi"}}}],
        "initContainers": [
            {"name": "big", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}},
            {"name": "side", "restartPolicy": "Always",
             "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}}},
            {"name": "late", "resources": {"requests": {"cpu": "900m"}}}],
        "overhead": {"cpu": "10m", "memory": "1Mi"}}
    r = pod_requests(spec)
    # apps 300m + sidecar 50m = 350m; init peaks: big 1000m, late 900m + sidecar 50m = 950m
    assert r["cpu"] == 1000 + 10
    assert r["memory"] == (64 + 1024 + 32 + 1) * 2**20
    nz = pod_requests({"containers": [{"name": "a"}, {"name": "b",
                                                      "resources": {"requests": {"cpu": "1"}}}]},
                      nonzero=True)
    assert nz == {"cpu": 1100, "memory": 2 * DEFAULT_MEMORY}
    with pytest.raises(InvalidObject, match=r"pod default/bad: spec.containers\[0\].resources"
                                            r".requests.cpu: '1x' is not a quantity"):
        pod_info(pod("bad", cpu="1x"))


# -- filters ---------------------------------------------------------------------------------

def test_unschedulable_node_unless_tolerated():
    snap = Snapshot([node("n1", unschedulable=True)])
    r = schedule(pod("p"), snap)
    assert r.node_name is None
    assert r.message == "0/1 nodes are available: 1 node(s) were unschedulable."
    tolerating = pod("ds", tolerations=[{"key": "node.kubernetes.io/unschedulable",
                                         "operator": "Exists", "effect": "NoSchedule"}])
    assert schedule(tolerating, snap).node_name == "n1"


def test_taints_and_tolerations():
    snap = Snapshot([
        node("n1", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        node("n2", taints=[{"key": "evict", "effect": "NoExecute"}]),
        node("n3", taints=[{"key": "soft", "effect": "PreferNoSchedule"}],
             unschedulable=True)])
    r = schedule(pod("p"), snap)
    assert r.message == ("0/3 nodes are available: 1 node(s) had untolerated taint "
                         "{dedicated: gpu}, 1 node(s) had untolerated taint {evict: }, "
                         "1 node(s) were unschedulable.")
    equal = pod("g", tolerations=[{"key": "dedicated", "operator": "Equal", "value": "gpu"}])
    assert schedule(equal, snap).node_name == "n1"
    wrong_value = pod("w", tolerations=[{"key": "dedicated", "value": "cpu"}])
    assert schedule(wrong_value, snap).node_name is None
    everything = pod("all", tolerations=[{"operator": "Exists"}])
    assert schedule(everything, snap).node_name in ("n1", "n2", "n3")
    effect_only = pod("e", tolerations=[{"operator": "Exists", "effect": "NoExecute"}])
    assert schedule(effect_only, snap).node_name == "n2"


def test_a_node_that_is_not_ready_is_refused_in_kube_schedulers_words():
    snap = Snapshot([node("n1", ready="Unknown"), node("n2", ready="False"),
                     node("n3", ready=None)])
    r = schedule(pod("p"), snap)
    assert r.message == ("0/3 nodes are available: 1 node(s) had untolerated taint "
                         "{node.kubernetes.io/not-ready: }, 2 node(s) had untolerated taint "
                         "{node.kubernetes.io/unreachable: }.")
    # a node already tainted by the lifecycle controller is not tainted twice
    tainted = node("n4", ready="Unknown", taints=[
        {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}])
    snap.set_node(tainted)
    assert schedule(pod("q"), snap).reasons[
        "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"] == 3
    tolerant = pod("t", tolerations=[{"key": "node.kubernetes.io/unreachable",
                                      "operator": "Exists"}])
    assert schedule(tolerant, snap).node_name in ("n1", "n3", "n4")


def test_node_selector_and_required_node_affinity():
    snap = Snapshot([node("n1", labels={"disk": "ssd", "gen": "5"}),
                     node("n2", labels={"disk": "hdd", "gen": "9"}),
                     node("n3", labels={"gen": "7"})])
    assert schedule(pod("a", nodeSelector={"disk": "ssd"}), snap).node_name == "n1"
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "gen", "operator": "Gt", "values": ["6"]},
            {"key": "disk", "operator": "DoesNotExist"}]}]}}}
    assert schedule(pod("b", affinity=affinity), snap).node_name == "n3"
    r = schedule(pod("c", affinity=affinity, nodeSelector={"disk": "ssd"}), snap)
    assert r.message == ("0/3 nodes are available: 3 node(s) didn't match Pod's node "
                         "affinity/selector.")
    by_name = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}
    assert schedule(pod("d", affinity=by_name), snap).node_name == "n2"


def test_resources_fit_against_allocatable_minus_requests():
    snap = Snapshot([node("n1", cpu="2", memory="4Gi"), node("n2", cpu="500m", memory="1Gi"),
                     node("n3", pods="1")],
                    [pod("old", cpu="1500m", memory="1Gi", node_name="n1"),
                     pod("full", node_name="n3")])
    r = schedule(pod("p", cpu="600m", memory="2Gi"), snap)
    assert r.node_name is None
    assert r.message == ("0/3 nodes are available: 1 Insufficient memory, 1 Too many pods, "
                         "2 Insufficient cpu.")
    assert r.node_reasons["n2"] == ("Insufficient cpu", "Insufficient memory")
    assert r.node_reasons["n1"] == ("Insufficient cpu",)
    assert schedule(pod("q", cpu="500m", memory="3Gi"), snap).node_name == "n1"
    # a request of zero is never refused; an extended resource is counted like cpu
    gpu = pod("gpu")
    gpu["spec"]["containers"][0]["resources"] = {"limits": {"example.com/gpu": "1"}}
    assert schedule(gpu, snap).message == (
        "0/3 nodes are available: 1 Too many pods, 3 Insufficient example.com/gpu.")
    snap.set_node(node("n4", extra={"example.com/gpu": "1"}))
    assert place(snap, gpu).node_name == "n4"
    second = copy.deepcopy(gpu)
    second["metadata"].update(name="gpu2", uid="uid-gpu2")
    assert "4 Insufficient example.com/gpu" in schedule(second, snap).message


def test_host_ports_conflict_as_kubernetes():
    snap = Snapshot([node("n1")], [pod("web", node_name="n1", ports=[
        {"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "hostPort": 53,
                                                  "protocol": "UDP", "hostIP": "10.0.0.1"}])])
    clash = pod("b", ports=[{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.2"}])
    r = schedule(clash, snap)
    assert r.message == ("0/1 nodes are available: 1 node(s) didn't have free ports for the "
                         "requested pod ports.")
    assert schedule(pod("c", ports=[{"containerPort": 80, "hostPort": 8080,
                                     "protocol": "UDP"}]), snap).node_name == "n1"
    assert schedule(pod("d", ports=[{"containerPort": 53, "hostPort": 53, "protocol": "UDP",
                                     "hostIP": "10.0.0.3"}]), snap).node_name == "n1"
    assert schedule(pod("e", ports=[{"containerPort": 53, "hostPort": 53, "protocol": "UDP"}]),
                    snap).node_name is None          # 0.0.0.0 clashes with every address
    assert schedule(pod("f", ports=[{"containerPort": 80}]), snap).node_name == "n1"


def test_required_pod_anti_affinity_and_existing_pods_anti_affinity():
    nodes = [node(f"n{i}", zone="a" if i < 3 else "b") for i in range(1, 5)]
    snap = Snapshot(nodes)
    placed = [place(snap, pod(f"db{i}", labels={"app": "db"}, affinity=anti_affinity("db")))
              for i in range(4)]
    assert sorted(r.node_name for r in placed) == ["n1", "n2", "n3", "n4"]
    r = schedule(pod("db4", labels={"app": "db"}, affinity=anti_affinity("db")), snap)
    assert r.message == ("0/4 nodes are available: 4 node(s) didn't match pod anti-affinity "
                         "rules.")
    # a pod without rules of its own is refused by the placed pods' anti-affinity
    r = schedule(pod("intruder", labels={"app": "db"}), snap)
    assert r.message == ("0/4 nodes are available: 4 node(s) didn't satisfy existing pods "
                         "anti-affinity rules.")
    # another namespace is not covered by the placed pods' terms
    assert schedule(pod("elsewhere", labels={"app": "db"}, ns="other"), snap).node_name


def test_anti_affinity_by_zone_and_namespaces():
    snap = Snapshot([node("n1", zone="a"), node("n2", zone="a"), node("n3", zone="b"),
                     node("n4")],
                    [pod("cache", labels={"app": "cache"}, ns="infra", node_name="n1")])
    zone = "topology.kubernetes.io/zone"
    term = {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": zone}
    own_ns = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    # the term looks in the pod's own namespace only: infra's cache does not count
    assert schedule(pod("x", affinity=own_ns), snap).node_name in ("n1", "n2", "n3", "n4")
    named = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        dict(term, namespaces=["infra"])]}}
    r = schedule(pod("y", affinity=named), snap)
    assert r.node_name in ("n3", "n4")          # not zone a; a node without the key is fine
    assert r.node_reasons == {"n1": ("node(s) didn't match pod anti-affinity rules",),
                              "n2": ("node(s) didn't match pod anti-affinity rules",)}
    snap.set_namespace({"metadata": {"name": "infra", "labels": {"team": "platform"}}})
    by_selector = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        dict(term, namespaceSelector={"matchLabels": {"team": "platform"}})]}}
    assert schedule(pod("z", affinity=by_selector), snap).node_name in ("n3", "n4")
    everywhere = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        dict(term, namespaceSelector={})]}}
    assert schedule(pod("w", affinity=everywhere), snap).node_name in ("n3", "n4")


def test_required_pod_affinity():
    zone = "topology.kubernetes.io/zone"
    snap = Snapshot([node("n1", zone="a"), node("n2", zone="b"), node("n3", zone="b"),
                     node("n4")])
    with_db = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": zone}]}}
    # nothing matches anywhere and the pod does not match its own term: it waits
    r = schedule(pod("web", labels={"app": "web"}, affinity=with_db), snap)
    assert r.message == "0/4 nodes are available: 4 node(s) didn't match pod affinity rules."
    # the first pod of a group with affinity to itself goes where the topology key exists
    first = place(snap, pod("db0", labels={"app": "db"}, affinity=with_db))
    assert first.node_name in ("n1", "n2", "n3")
    db_zone = "a" if first.node_name == "n1" else "b"
    for i in range(4):
        r = place(snap, pod(f"web{i}", labels={"app": "web"}, affinity=with_db))
        assert snap.nodes[r.node_name].labels[zone] == db_zone


def test_topology_spread_do_not_schedule():
    zone = "topology.kubernetes.io/zone"
    snap = Snapshot([node("n1", zone="a"), node("n2", zone="a"), node("n3", zone="b"),
                     node("n4")])
    spread = [{"maxSkew": 1, "topologyKey": zone, "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"app": "web"}}}]
    zones = []
    for i in range(6):
        r = place(snap, pod(f"web{i}", labels={"app": "web"}, topologySpreadConstraints=spread))
        zones.append(snap.nodes[r.node_name].labels[zone])
        assert abs(zones.count("a") - zones.count("b")) <= 1
    assert zones.count("a") == zones.count("b") == 3
    # one more in zone a and zone b full: the next one cannot go to a without a skew of 2
    snap.set_pod(pod("extra", labels={"app": "web"}, node_name="n1"))
    snap.set_node(node("n3", zone="b", pods="3"))
    r = schedule(pod("web6", labels={"app": "web"}, topologySpreadConstraints=spread), snap)
    assert r.node_name is None
    assert r.message == ("0/4 nodes are available: 1 Too many pods, 1 node(s) didn't match pod "
                         "topology spread constraints (missing required label), 2 node(s) "
                         "didn't match pod topology spread constraints.")
    # minDomains above the domains there are: the minimum counts as 0
    min3 = [dict(spread[0], minDomains=3, maxSkew=3)]
    r = schedule(pod("web7", labels={"app": "web"}, topologySpreadConstraints=min3), snap)
    assert r.node_name is None and r.reasons[
        "node(s) didn't match pod topology spread constraints"] == 2


# -- scores ----------------------------------------------------------------------------------

def test_preferred_node_affinity_and_prefer_no_schedule():
    snap = Snapshot([node("n1"), node("n2", labels={"disk": "ssd"}),
                     node("n3", labels={"disk": "ssd"},
                          taints=[{"key": "spot", "effect": "PreferNoSchedule"}])])
    prefer = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [
            {"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}
    for i in range(5):
        assert place(snap, pod(f"p{i}", affinity=prefer)).node_name == "n2"
    r = schedule(pod("t", affinity=prefer, tolerations=[
        {"key": "spot", "operator": "Exists", "effect": "PreferNoSchedule"}]), snap)
    assert r.node_name == "n3"        # n2 is fuller now and the taint is tolerated


def test_least_allocated_prefers_the_emptier_node():
    snap = Snapshot([node("n1"), node("n2")], [pod("busy", cpu="3", memory="6Gi",
                                                   node_name="n1")])
    r = schedule(pod("p", cpu="100m"), snap)
    assert r.node_name == "n2" and r.scores["n2"] > r.scores["n1"]


def test_preferred_pod_anti_affinity_spreads_and_affinity_gathers():
    snap = Snapshot([node(f"n{i}") for i in range(1, 4)])
    soft_anti = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "s"}},
                                            "topologyKey": "kubernetes.io/hostname"}}]}}
    got = {place(snap, pod(f"s{i}", labels={"app": "s"}, affinity=soft_anti)).node_name
           for i in range(3)}
    assert got == {"n1", "n2", "n3"}
    soft = {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "anchor"}},
                                            "topologyKey": "kubernetes.io/hostname"}}]}}
    snap.set_pod(pod("anchor", labels={"app": "anchor"}, node_name="n2"))
    for i in range(3):
        assert place(snap, pod(f"f{i}", labels={"app": "f"}, affinity=soft)).node_name == "n2"


def test_existing_pods_required_affinity_attracts_the_pods_it_names():
    snap = Snapshot([node("n1"), node("n2"), node("n3")])
    likes_cache = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}},
         "topologyKey": "kubernetes.io/hostname"}]}}
    snap.set_pod(pod("app", labels={"app": "app"}, node_name="n3", affinity=likes_cache))
    r = schedule(pod("cache", labels={"app": "cache"}), snap)
    assert r.node_name == "n3"


def test_schedule_anyway_spread_across_zones():
    zone = "topology.kubernetes.io/zone"
    snap = Snapshot([node("n1", zone="a"), node("n2", zone="a"), node("n3", zone="a"),
                     node("n4", zone="b")])
    soft = [{"maxSkew": 1, "topologyKey": zone, "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": {"app": "api"}}}]
    zones = [snap.nodes[place(snap, pod(f"api{i}", labels={"app": "api"},
                                        topologySpreadConstraints=soft)).node_name].labels[zone]
             for i in range(4)]
    assert zones.count("b") == 2


def test_pods_of_one_owner_spread_over_nodes():
    snap = Snapshot([node(f"n{i}") for i in range(1, 5)])
    got = [place(snap, pod(f"rs-{i}", labels={"app": "rs"}, owner="rs-uid")).node_name
           for i in range(8)]
    assert all(got.count(n) == 2 for n in ("n1", "n2", "n3", "n4"))


def test_ties_are_broken_by_the_pods_uid():
    snap = Snapshot([node(f"n{i}") for i in range(1, 6)])
    same = [schedule(pod("p", uid="fixed"), snap).node_name for _ in range(3)]
    assert len(set(same)) == 1
    spread_over = {schedule(pod("p", uid=f"u{i}"), snap).node_name for i in range(40)}
    assert len(spread_over) >= 3


# -- messages and inputs -----------------------------------------------------------------------

def test_fit_error_message_sorts_the_counted_reasons_as_kube_scheduler():
    assert fit_error_message(3, {"Insufficient memory": 2,
                                 "node(s) didn't match Pod's node affinity/selector": 1}) == (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "2 Insufficient memory.")
    # sort.Strings over "N reason": "12 ..." sorts before "2 ..."
    assert fit_error_message(14, {"b": 2, "a": 12}) == "0/14 nodes are available: 12 a, 2 b."


def test_the_issues_example_message():
    snap = Snapshot([node("n1", memory="1Gi", labels={"disk": "ssd"}),
                     node("n2", memory="1Gi", labels={"disk": "ssd"}),
                     node("n3", memory="8Gi", labels={"disk": "hdd"})])
    r = schedule(pod("p", memory="2Gi", nodeSelector={"disk": "ssd"}), snap)
    assert r.message == ("0/3 nodes are available: 1 node(s) didn't match Pod's node "
                         "affinity/selector, 2 Insufficient memory.")
    assert r.reason == "Unschedulable"


def test_no_nodes_and_unreadable_pods():
    assert schedule(pod("p"), Snapshot()).message == "no nodes available to schedule pods"
    snap = Snapshot([node("n1")])
    bad = pod("bad", affinity={"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
             "topologyKey": "kubernetes.io/hostname"}]}})
    r = schedule(bad, snap)
    assert r.node_name is None and r.error and r.reason == "SchedulerError"
    assert r.message.startswith("pod default/bad: spec.affinity.podAntiAffinity."
                                "requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector"
                                ".matchExpressions[0].operator: Unsupported value: 'Near'")
    for junk in (None, [], {"metadata": "x"}, {"metadata": {"name": 3}}):
        assert schedule(junk, snap).error
    # a bound pod with an unreadable term still counts its requests
    bad["spec"]["nodeName"] = "n1"
    bad["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "4"}
    snap.set_pod(bad)
    assert schedule(pod("q", cpu="1"), snap).message == \
        "0/1 nodes are available: 1 Insufficient cpu."


def test_wants_scheduling_and_queue_order():
    assert wants_scheduling(pod("p"))
    assert not wants_scheduling(pod("p", node_name="n1"))
    assert not wants_scheduling(pod("p", schedulerName="other"))
    assert wants_scheduling(pod("p", schedulerName="other"), "other")
    assert not wants_scheduling(pod("p", schedulingGates=[{"name": "wait"}]))
    gone = pod("p")
    gone["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert not wants_scheduling(gone)
    old, new, vip = pod("old"), pod("new"), pod("vip", priority=1000)
    old["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    new["metadata"]["creationTimestamp"] = "2024-01-02T00:00:00Z"
    vip["metadata"]["creationTimestamp"] = "2024-01-03T00:00:00Z"
    assert [p["metadata"]["name"] for p in sorted([new, vip, old], key=queue_sort_key)] == \
        ["vip", "old", "new"]


# -- the snapshot's updates --------------------------------------------------------------------

def test_snapshot_follows_watch_events():
    snap = Snapshot([node("n1", cpu="2")])
    p = pod("a", cpu="1500m", labels={"app": "a"})
    assert schedule(p, snap).node_name == "n1"
    snap.set_pod(p)                                   # pending: not counted
    assert snap.nodes["n1"].requested == {}
    info = snap.assume(p, "n1")
    assert info.node_name == "n1" and snap.nodes["n1"].requested["cpu"] == 1500
    assert "nodeName" not in p["spec"]                 # the caller's object is not changed
    bound = copy.deepcopy(p)
    bound["spec"]["nodeName"] = "n1"
    snap.set_pod(bound)                                # the watch confirms: counted once
    assert snap.nodes["n1"].requested["cpu"] == 1500 and len(snap.nodes["n1"].pods) == 1
    assert schedule(pod("b", cpu="1"), snap).node_name is None
    done = copy.deepcopy(bound)
    done["status"]["phase"] = "Succeeded"
    snap.set_pod(done)                                 # finished pods free their node
    assert snap.nodes["n1"].requested.get("cpu", 0) == 0
    snap.set_pod(bound)
    snap.remove_pod(bound)
    assert not snap.pods and not snap.nodes["n1"].pods
    # a failed binding is forgotten
    snap.assume(p, "n1")
    snap.forget(p["metadata"]["uid"])
    assert snap.nodes["n1"].requested.get("cpu", 0) == 0
    # a pod bound to a node not seen yet counts once the node arrives
    snap.set_pod(pod("early", cpu="2", node_name="n2"))
    assert [n.name for n in snap.schedulable_nodes()] == ["n1"]
    snap.set_node(node("n2", cpu="2"))
    assert schedule(pod("c", cpu="1", nodeSelector={"kubernetes.io/hostname": "n2"}),
                    snap).message == "0/2 nodes are available: 1 Insufficient cpu, " \
                                     "1 node(s) didn't match Pod's node affinity/selector."
    # a removed node with pods is no candidate but its pods still count
    snap.remove_node("n2")
    assert [n.name for n in snap.schedulable_nodes()] == ["n1"] and "n2" in snap.nodes
    snap.remove_pod(snap.pods[next(iter(snap.pods))].uid)
    assert "n2" not in snap.nodes
    # node updates (labels, cordon) apply to the next decision
    snap.set_node(node("n1", cpu="2", unschedulable=True))
    assert schedule(pod("d"), snap).message == \
        "0/1 nodes are available: 1 node(s) were unschedulable."


def test_snapshot_indexes_drop_with_the_pods():
    snap = Snapshot([node("n1"), node("n2")])
    pods = [pod(f"p{i}", labels={"app": "x", "i": str(i)}, affinity=anti_affinity("x"),
                owner="o") for i in range(2)]
    for p in pods:
        place(snap, p)
    assert sum(snap.terms["required_anti_affinity"][t]["n1"] + snap.terms[
        "required_anti_affinity"][t]["n2"] for t in snap.terms["required_anti_affinity"]) == 2
    for p in pods:
        snap.remove_pod(p)
    assert not snap.terms["required_anti_affinity"] and not snap._by_label \
        and not snap._by_owner and not snap._by_ns
    assert snap.nodes["n1"].requested == {"pods": 0} or not any(
        snap.nodes["n1"].requested.values())


# -- properties -----------------------------------------------------------------------------------

ZONES = ("a", "b", "c")


@st.composite
def clusters(draw):
    n = draw(st.integers(1, 6))
    nodes = []
    for i in range(n):
        taints = []
        if draw(st.booleans()) and draw(st.booleans()):
            taints.append({"key": "team", "value": draw(st.sampled_from(["x", "y"])),
                           "effect": draw(st.sampled_from(["NoSchedule", "NoExecute",
                                                           "PreferNoSchedule"]))})
        nodes.append(node(
            f"n{i}", cpu=str(draw(st.integers(1, 4))),
            memory=f"{draw(st.integers(1, 4))}Gi", pods=str(draw(st.integers(1, 8))),
            labels={"disk": draw(st.sampled_from(["ssd", "hdd"]))},
            zone=draw(st.sampled_from(ZONES + (None,))),
            taints=taints, unschedulable=draw(st.booleans()) and draw(st.booleans()),
            ready=draw(st.sampled_from(["True", "True", "True", "False"]))))
    pods = []
    for i in range(draw(st.integers(1, 25))):
        spec = {}
        app = draw(st.sampled_from(["a", "b", "c"]))
        if draw(st.booleans()) and draw(st.booleans()):
            spec["nodeSelector"] = {"disk": draw(st.sampled_from(["ssd", "hdd"]))}
        if draw(st.booleans()):
            spec["tolerations"] = [{"key": "team", "value": draw(st.sampled_from(["x", "y"]))}]
        if draw(st.booleans()) and draw(st.booleans()):
            spec["affinity"] = anti_affinity(app, draw(st.sampled_from(
                ["kubernetes.io/hostname", "topology.kubernetes.io/zone"])))
        if draw(st.booleans()) and draw(st.booleans()):
            spec["topologySpreadConstraints"] = [{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": draw(st.sampled_from(["DoNotSchedule", "ScheduleAnyway"])),
                "labelSelector": {"matchLabels": {"app": app}}}]
        ports = [{"containerPort": 80, "hostPort": 80}] if draw(st.integers(0, 5)) == 0 else []
        pods.append(pod(f"p{i}", cpu=f"{draw(st.integers(0, 1500))}m" or None,
                        memory=f"{draw(st.integers(0, 1500))}Mi", labels={"app": app},
                        ports=ports, uid=f"u{i}", **spec))
    return nodes, pods


def naive_fits(p: dict, n: dict, placed: list[tuple[dict, str]], nodes: dict) -> bool:
    """An independent, slow reading of the filters the random clusters exercise."""
    spec, labels = p["spec"], n["metadata"]["labels"]
    name = n["metadata"]["name"]
    tol = spec.get("tolerations", [])
    ready = n["status"]["conditions"][0]["status"] == "True"
    if n["spec"]["unschedulable"] or not ready:
        return False
    for t in n["spec"]["taints"]:
        if t["effect"] != "PreferNoSchedule" and not any(
                x["key"] == t["key"] and x["value"] == t["value"] for x in tol):
            return False
    if any(labels.get(k) != v for k, v in spec.get("nodeSelector", {}).items()):
        return False
    here = [q for q, where in placed if where == name]
    if len(here) + 1 > int(n["status"]["allocatable"]["pods"]):
        return False
    cpu = lambda q: int(q["spec"]["containers"][0]["resources"]["requests"]["cpu"][:-1])  # noqa
    mem = lambda q: int(q["spec"]["containers"][0]["resources"]["requests"]["memory"][:-2])  # noqa
    if cpu(p) and cpu(p) + sum(cpu(q) for q in here) > \
            int(n["status"]["allocatable"]["cpu"]) * 1000:
        return False
    if mem(p) and mem(p) + sum(mem(q) for q in here) > \
            int(n["status"]["allocatable"]["memory"][:-2]) * 1024:
        return False
    if p["spec"]["containers"][0]["ports"] and any(q["spec"]["containers"][0]["ports"]
                                                   for q in here):
        return False
    app = p["metadata"]["labels"]["app"]
    for q, where in placed:         # anti-affinity both ways, per topology key
        qlabels = nodes[where]["metadata"]["labels"]
        for a, b, term_owner in ((p, q, p), (q, p, q)):
            terms = (term_owner["spec"].get("affinity") or {}).get("podAntiAffinity", {}).get(
                "requiredDuringSchedulingIgnoredDuringExecution", [])
            for t in terms:
                other = q if term_owner is p else p
                key = t["topologyKey"]
                if other["metadata"]["labels"]["app"] == t["labelSelector"]["matchLabels"]["app"] \
                        and key in labels and qlabels.get(key) == labels[key]:
                    return False
    for c in spec.get("topologySpreadConstraints", []):
        if c["whenUnsatisfiable"] != "DoNotSchedule":
            continue
        key = c["topologyKey"]
        if key not in labels:
            return False
        eligible = [m for m in nodes.values() if key in m["metadata"]["labels"] and all(
            m["metadata"]["labels"].get(k) == v for k, v in spec.get("nodeSelector", {}).items())]
        domains = {m["metadata"]["labels"][key]: 0 for m in eligible}
        for q, where in placed:
            d = nodes[where]["metadata"]["labels"].get(key)
            if q["metadata"]["labels"]["app"] == app and d in domains and nodes[where] in eligible:
                domains[d] += 1
        if domains.get(labels[key], 0) + 1 - min(domains.values()) > c["maxSkew"]:
            return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_placements_agree_with_a_naive_reading_of_the_filters(cluster):
    nodes, pods = cluster
    by_name = {n["metadata"]["name"]: n for n in nodes}
    snap = Snapshot(nodes)
    placed: list[tuple[dict, str]] = []
    for p in pods:
        r = schedule(p, snap)
        fits = [name for name, n in by_name.items() if naive_fits(p, n, placed, by_name)]
        if r.node_name is None:
            assert fits == [], (r.message, fits)
            assert r.message.startswith(f"0/{len(nodes)} nodes are available: ")
            assert sum(r.reasons.values()) >= len(nodes)
            continue
        assert r.node_name in fits, (r.node_name, fits)
        snap.assume(p, r.node_name)
        placed.append((p, r.node_name))
    # after every placement no node holds more than it has
    for name, info in snap.nodes.items():
        alloc = info.spec.allocatable
        assert len(info.pods) <= alloc["pods"]
        assert info.requested.get("cpu", 0) <= alloc["cpu"]
        assert info.requested.get("memory", 0) <= alloc["memory"]
        assert info.requested == _sum_requests(p for p, where in placed if where == name)


def _sum_requests(pods) -> dict:
    out: dict = {}
    for p in pods:
        for k, v in pod_info(p).requests.items():
            out[k] = out.get(k, 0) + v
    return {k: v for k, v in out.items()}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True)
    | st.sampled_from(["", "1", "-1", "1Gi", "x", "In", "Exists", "Always", "n1", "a=b"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(
        ["metadata", "spec", "status", "name", "uid", "labels", "containers", "resources",
         "requests", "limits", "cpu", "memory", "nodeName", "affinity", "podAntiAffinity",
         "requiredDuringSchedulingIgnoredDuringExecution", "labelSelector", "topologyKey",
         "matchExpressions", "key", "operator", "values", "taints", "effect", "allocatable",
         "tolerations", "topologySpreadConstraints", "maxSkew", "whenUnsatisfiable", "ports",
         "hostPort", "nodeSelector", "initContainers", "restartPolicy", "overhead"]),
        inner, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_hostile_objects_give_clear_errors_not_tracebacks(junk_pod, junk_node):
    snap = Snapshot([node("n1")])
    for call in (lambda: snap.set_node(junk_node), lambda: snap.set_pod(junk_pod),
                 lambda: snap.remove_pod(junk_pod if isinstance(junk_pod, dict) else "x")):
        try:
            call()
        except InvalidObject as e:
            assert str(e)
    r = schedule(junk_pod, snap)
    assert r.message and (r.node_name is None or r.node_name in snap.nodes)


def test_negative_requests_are_refused():
    r = schedule(pod("neg", cpu="-1"), Snapshot([node("n1")]))
    assert r.error and "must be greater than or equal to 0" in r.message


def test_node_selector_requirements_are_checked():
    term = {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "gen", "operator": "Gt", "values": ["1", "2"]}]}]}
    with pytest.raises(sel.SelectorError, match=r"values: for 'Gt', 'Lt' operators, exactly one"):
        sel.node_selector_term(term["nodeSelectorTerms"][0])
    with pytest.raises(sel.SelectorError, match=r"matchFields\[0\].key: Invalid value"):
        sel.node_selector_term({"matchFields": [
            {"key": "spec.nodeName", "operator": "In", "values": ["n1"]}]})
    assert not sel.node_selector(term).matches("n", {"gen": "5"})   # the bad term matches nothing
    # no terms at all: no node matches
    assert sel.node_selector({"nodeSelectorTerms": []}).terms == ()


def test_image_locality_prefers_the_node_that_holds_a_large_image():
    """ImageLocality: a node holding the pod's image scores by its size, scaled by how many
    nodes hold it; images under 23 MB count for nothing; Docker Hub names match either way."""
    from podnetd.scheduler import scores
    from podnetd.scheduler.objects import image_name
    assert image_name("busybox") == image_name("docker.io/library/busybox:latest") == \
        "busybox:latest"
    assert image_name("10.0.0.1:5000/web") == "10.0.0.1:5000/web:latest"

    def holding(name, images):
        n = node(name)
        n["status"]["images"] = [{"names": names, "sizeBytes": size} for names, size in images]
        return n
    big, small = 600 * 2**20, 5 * 2**20
    snap = Snapshot([holding("n1", []), holding("n2", [(["docker.io/library/busybox:latest"],
                                                        big)]),
                     holding("n3", [(["busybox:latest"], small)])])
    p = pod("web")
    assert place(snap, p).node_name == "n2"
    info = pod_info(pod("again"))
    feasible = sorted(snap.schedulable_nodes(), key=lambda n: n.name)
    got = scores.image_locality(info, snap, feasible)
    # n2: 600 MB held by 2 of 3 nodes -> 400 MB, of the 23 MB..1000 MB range; n3's 5 MB and n1's
    # nothing are below the threshold
    assert got == [0, 100 * (400 * 2**20 - scores.IMAGE_MIN) // (scores.IMAGE_MAX_PER_CONTAINER
                                                                 - scores.IMAGE_MIN), 0]
