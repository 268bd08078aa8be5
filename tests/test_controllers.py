"""The control loops against the real API machinery over a real SQLite store (no root, no
network): leader election hand-over, the scheduler loop binding and refusing pods in
kube-scheduler's words, the node lifecycle controller's Unknown/taint/eviction, the namespace
controller. Timings are short flags, never asserted speeds."""
import asyncio
import time

import pytest

from podnetd.apiserver import bootstrap, objects, rbac
from podnetd.apiserver.access import Access
from podnetd.apiserver.api import Api
from podnetd.apiserver.authn import UserInfo
from podnetd.apiserver.registry import Registry
from podnetd.apiserver.storage.sqlite import SqliteStore
from podnetd.controllers import tolerations
from podnetd.controllers.clusterrole_aggregation import ClusterRoleAggregationController
from podnetd.controllers.leader import LeaderElector
from podnetd.controllers.namespaces import NamespaceController
from podnetd.controllers.node_lifecycle import NodeLifecycleController
from podnetd.controllers.scheduling import SchedulerLoop
from podnetd.controllers.wire import CONTROLLER_USER, SCHEDULER_USER
from podnetd.kubelet.wire import node_user

ADMIN = UserInfo("admin", "", ("system:masters", "system:authenticated"))


async def wait_for(check, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def cluster(tmp_path):
    """An Api over a SQLite store with the bootstrap policy and RBAC fed as in podnetd."""
    async def make():
        store = SqliteStore(str(tmp_path / "objects.db"))
        await store.start()
        registry = Registry(store, available=True)
        await bootstrap.ensure(registry, rbac.bootstrap_objects())
        access = Access()
        api = Api(registry, access.authorizer)
        await access.start(api)
        return api, access, store
    return make


def node(name, ready="True", taints=(), labels=None, cpu="2", memory="4Gi"):
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                  **(labels or {})}},
            "spec": {"taints": list(taints)} if taints else {},
            "status": {"conditions": [{"type": "Ready", "status": ready}],
                       "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "capacity": {"cpu": cpu, "memory": memory, "pods": "110"}}}


def pod(name, **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}], **spec}}


async def add_node(admin, n):
    status = n.pop("status")
    created = await admin.create("nodes", "", n)
    created["status"] = status
    await admin.update("nodes", "", created, "status")


def test_toleration_matching_as_kubernetes():
    taint = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    other_effect = {"key": taint["key"], "operator": "Exists", "effect": "NoSchedule"}
    assert tolerations.toleration_seconds([taint], [other_effect]) == 0.0
    assert tolerations.toleration_seconds([taint], [{"key": "other", "operator": "Exists"}]) == 0.0
    assert tolerations.toleration_seconds([taint], []) == 0.0
    assert tolerations.toleration_seconds(
        [taint], [{"key": taint["key"], "operator": "Exists", "effect": "NoExecute",
                   "tolerationSeconds": 7}]) == 7.0
    assert tolerations.toleration_seconds([taint], [{"operator": "Exists"}]) is None


def test_scheduler_binds_and_explains_refusals(cluster):
    async def run():
        api, access, store = await cluster()
        admin = api.as_user(ADMIN)
        for n in (node("n1", labels={"disk": "ssd"}), node("n2"),
                  node("n3", taints=[{"key": "gpu", "effect": "NoSchedule"}])):
            await add_node(admin, n)
        loop = SchedulerLoop(api.as_user(SCHEDULER_USER),
                             lambda obj, t, reason, msg: events.append((reason, msg)))
        events = []
        task = asyncio.create_task(loop.run())
        await admin.create("pods", "default", pod("ssd", nodeSelector={"disk": "ssd"}))
        await admin.create("pods", "default", pod("nowhere", nodeSelector={"disk": "nvme"}))
        spread = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"tier": "web"}},
             "topologyKey": "kubernetes.io/hostname"}]}}
        for i in range(2):
            p = pod(f"web{i}", affinity=spread)
            p["metadata"]["labels"]["tier"] = "web"
            await admin.create("pods", "default", p)

        async def placed():
            pods = {p["metadata"]["name"]: p for p in
                    (await admin.list("pods", "default"))["items"]}
            if all(pods[n]["spec"].get("nodeName") for n in ("ssd", "web0", "web1")):
                return pods
        pods = await wait_for(placed, what="pods bound")
        assert pods["ssd"]["spec"]["nodeName"] == "n1"
        assert {pods["web0"]["spec"]["nodeName"], pods["web1"]["spec"]["nodeName"]} == \
            {"n1", "n2"}                                     # n3's taint is not tolerated
        scheduled = [c for c in pods["ssd"]["status"]["conditions"]
                     if c["type"] == "PodScheduled"]
        assert scheduled and scheduled[0]["status"] == "True"

        async def refused():
            p = await admin.get("pods", "default", "nowhere")
            conds = [c for c in (p.get("status") or {}).get("conditions") or []
                     if c["type"] == "PodScheduled"]
            return conds[0] if conds else None
        cond = await wait_for(refused, what="PodScheduled=False")
        assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
        assert cond["message"] == ("0/3 nodes are available: 1 node(s) had untolerated taint "
                                   "{gpu: }, 2 node(s) didn't match Pod's node "
                                   "affinity/selector.")
        assert ("FailedScheduling", cond["message"]) in events
        assert ("Scheduled", "Successfully assigned default/ssd to n1") in events
        # a node that fits appears: the pod is tried again and placed
        await add_node(admin, node("n4", labels={"disk": "nvme"}))

        async def rescheduled():
            p = await admin.get("pods", "default", "nowhere")
            return p["spec"].get("nodeName")
        assert await wait_for(rescheduled, what="retry after a node change") == "n4"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await access.stop()
        await store.close()
    asyncio.run(run())


def test_leader_election_hands_over_when_the_leader_stops_renewing(cluster):
    async def run():
        api, access, store = await cluster()
        client = api.as_user(SCHEDULER_USER)
        leading = []

        def work(name):
            async def lead():
                leading.append(name)
                await asyncio.Event().wait()
            return lead
        a = LeaderElector(client, "kube-scheduler", "a", lease_duration=1.0, renew_deadline=0.6,
                          retry_period=0.1, lead=work("a"))
        b = LeaderElector(client, "kube-scheduler", "b", lease_duration=1.0, renew_deadline=0.6,
                          retry_period=0.1, lead=work("b"))
        await a.start()
        await wait_for(lambda: _true(a.leading), what="a leads")
        await b.start()
        await asyncio.sleep(1.5)                   # longer than the lease: a keeps renewing
        assert leading == ["a"] and not b.leading
        a._task.cancel()                           # a dies without releasing the lease
        await asyncio.gather(a._task, return_exceptions=True)
        a.leading = False
        started = time.monotonic()
        await wait_for(lambda: _true(b.leading), timeout=5, what="b takes over")
        assert time.monotonic() - started < 1.0 + 2.0   # lease duration + retry slack
        lease = await api.as_user(ADMIN).get("leases", "kube-system", "kube-scheduler")
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
        await b.stop()
        released = await api.as_user(ADMIN).get("leases", "kube-system", "kube-scheduler")
        assert released["spec"]["holderIdentity"] == ""       # handed back at a clean stop
        await access.stop()
        await store.close()
    asyncio.run(run())


async def _true(value):
    return value


def test_node_lifecycle_marks_silent_nodes_and_evicts_on_toleration_expiry(cluster):
    async def run():
        api, access, store = await cluster()
        admin = api.as_user(ADMIN)
        await add_node(admin, node("n1"))
        kubelet = api.as_user(node_user("n1"))
        short = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                  "effect": "NoExecute", "tolerationSeconds": 1}]
        await admin.create("pods", "default", pod("brief", nodeName="n1", tolerations=short))
        await admin.create("pods", "default", pod("patient", nodeName="n1"))  # 300 s default
        status_pod = await admin.get("pods", "default", "patient")
        status_pod["status"] = {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}]}
        await kubelet.update("pods", "default", status_pod, "status")
        ctl = NodeLifecycleController(api.as_user(CONTROLLER_USER), grace_period=1.0)
        task = asyncio.create_task(ctl.run())

        async def unknown():
            n = await admin.get("nodes", "", "n1")
            ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"][0]
            taints = n["spec"].get("taints") or []
            if ready["status"] == "Unknown" and any(
                    t["key"] == "node.kubernetes.io/unreachable" for t in taints):
                return ready
        ready = await wait_for(unknown, what="Ready=Unknown and the unreachable taint")
        assert ready["reason"] == "NodeStatusUnknown"

        async def not_ready_pod():
            p = await admin.get("pods", "default", "patient")
            return any(c["type"] == "Ready" and c["status"] == "False"
                       for c in p["status"]["conditions"])
        await wait_for(not_ready_pod, what="the node's pods Ready=False")

        async def evicted():
            p = await admin.get("pods", "default", "brief")
            return p["metadata"].get("deletionTimestamp")
        await wait_for(evicted, what="the short-tolerating pod marked for deletion")
        patient = await admin.get("pods", "default", "patient")
        assert not patient["metadata"].get("deletionTimestamp")   # tolerates 300 s
        # the node comes back: a renewed lease and its own Ready=True lift the taint
        await kubelet.create("leases", "kube-node-lease", {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "n1", "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": "n1", "renewTime": "2026-12-02T00:00:00.000000Z"}})
        n = await kubelet.get("nodes", "", "n1")
        n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        await kubelet.update("nodes", "", n, "status")

        async def untainted():
            n = await admin.get("nodes", "", "n1")
            return not any(t["key"] == "node.kubernetes.io/unreachable"
                           for t in n["spec"].get("taints") or [])
        await wait_for(untainted, what="the taint lifted")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await access.stop()
        await store.close()
    asyncio.run(run())


def test_namespace_deletion_empties_then_removes_the_namespace(cluster):
    async def run():
        api, access, store = await cluster()
        admin = api.as_user(ADMIN)
        await admin.create("namespaces", "", {"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": "team"}})
        await admin.create("pods", "team", pod("a"))
        await admin.create("leases", "team", {"apiVersion": "coordination.k8s.io/v1",
                                              "kind": "Lease", "metadata": {"name": "l"},
                                              "spec": {}})
        ctl = NamespaceController(api.as_user(CONTROLLER_USER))
        task = asyncio.create_task(ctl.run())
        marked = await admin.delete("namespaces", "", "team")
        assert marked["metadata"].get("deletionTimestamp")
        with pytest.raises(objects.Forbidden):
            await admin.create("pods", "team", pod("late"))

        async def gone():
            try:
                await admin.get("namespaces", "", "team")
            except objects.NotFound:
                return True
        await wait_for(gone, what="the namespace deleted")
        assert (await admin.list("pods", "team"))["items"] == []
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await access.stop()
        await store.close()
    asyncio.run(run())


def test_deleted_node_has_its_claim_released_and_its_pods_collected(cluster):
    async def run():
        api, access, store = await cluster()
        admin = api.as_user(ADMIN)
        await add_node(admin, node("n1"))
        await add_node(admin, node("n2"))
        await admin.create("pods", "default", pod("on-n2", nodeName="n2"))
        await admin.create("pods", "default", pod("on-n1", nodeName="n1"))
        released = []

        async def release(name):
            released.append(name)
            return ["10.244.2.0/24"]
        ctl = NodeLifecycleController(api.as_user(CONTROLLER_USER), grace_period=1.0,
                                      release_claim=release)
        task = asyncio.create_task(ctl.run())
        await asyncio.sleep(0.3)
        await admin.delete("nodes", "", "n2")

        async def collected():
            names = {p["metadata"]["name"] for p in (await admin.list("pods", "default"))["items"]}
            return "on-n2" not in names and names
        names = await wait_for(collected, what="the deleted node's pod collected")
        assert names == {"on-n1"}
        assert released == ["n2"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await access.stop()
        await store.close()
    asyncio.run(run())


def test_pressure_conditions_taint_the_node_and_keep_best_effort_pods_off(cluster):
    """TaintNodesByCondition: MemoryPressure=True gives node.kubernetes.io/memory-pressure
    NoSchedule (gone when it clears); the scheduler keeps best-effort pods off such a node while
    pods with requests tolerate it, as Kubernetes does."""
    async def run():
        api, access, store = await cluster()
        admin = api.as_user(ADMIN)
        pressed = node("n1")
        pressed["status"]["conditions"].append({"type": "MemoryPressure", "status": "True"})
        await add_node(admin, pressed)
        await add_node(admin, node("n2", taints=[{"key": "other", "effect": "NoSchedule"}]))
        ctl = NodeLifecycleController(api.as_user(CONTROLLER_USER), grace_period=60.0)
        for name in ("n1", "n2"):        # leases, so the controller does not mark them Unknown
            await admin.create("leases", "kube-node-lease", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name}})
        tasks = [asyncio.create_task(ctl.run())]

        async def taints_of(name):
            n = await admin.get("nodes", "", name)
            return {(t["key"], t["effect"]) for t in n["spec"].get("taints") or []}

        async def tainted():
            return ("node.kubernetes.io/memory-pressure", "NoSchedule") in await taints_of("n1")
        await wait_for(tainted, what="the memory-pressure taint")
        assert await taints_of("n2") == {("other", "NoSchedule")}    # no condition, no taint
        loop = SchedulerLoop(api.as_user(SCHEDULER_USER))
        tasks.append(asyncio.create_task(loop.run()))
        await admin.create("pods", "default", pod("besteffort"))
        burstable = pod("burstable")
        burstable["spec"]["containers"][0]["resources"] = {"requests": {"memory": "16Mi"}}
        await admin.create("pods", "default", burstable)

        async def bound(name):
            return (await admin.get("pods", "default", name))["spec"].get("nodeName")
        assert await wait_for(lambda: bound("burstable"), what="burstable bound") == "n1"

        async def refused():
            p = await admin.get("pods", "default", "besteffort")
            return [c for c in (p.get("status") or {}).get("conditions") or []
                    if c["type"] == "PodScheduled" and c["status"] == "False"]
        [cond] = await wait_for(refused, what="the best-effort pod refused")
        assert "untolerated taint {node.kubernetes.io/memory-pressure: }" in cond["message"]
        # the pressure clears: the taint goes and the pending pod is placed
        n1 = await admin.get("nodes", "", "n1")
        n1["status"]["conditions"] = [{"type": "Ready", "status": "True"},
                                      {"type": "MemoryPressure", "status": "False"}]
        await admin.update("nodes", "", n1, "status")

        async def untainted():
            return ("node.kubernetes.io/memory-pressure", "NoSchedule") not in \
                await taints_of("n1")
        await wait_for(untainted, what="the taint lifted")
        assert await wait_for(lambda: bound("besteffort"), what="besteffort bound") == "n1"
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await access.stop()
        await store.close()
    asyncio.run(run())


def test_a_leaders_work_that_fails_is_logged_and_started_again(cluster, caplog):
    """A bug in the scheduler or a controller must not leave a leader that holds the lease and
    does nothing: the failure is logged with its traceback and the work runs again."""
    async def run():
        api, access, store = await cluster()
        runs = []

        async def lead():
            runs.append(time.monotonic())
            if len(runs) == 1:
                raise TypeError("a bug in the first run")
            await asyncio.Event().wait()
        elector = LeaderElector(api.as_user(SCHEDULER_USER), "kube-scheduler", "a",
                                lease_duration=2.0, renew_deadline=1.5, retry_period=0.1,
                                lead=lead)
        await elector.start()
        await wait_for(lambda: _true(len(runs) >= 2), what="the work started again")
        assert elector.leading
        await elector.stop()
        await access.stop()
        await store.close()
    with caplog.at_level("ERROR", logger="podnetd.controllers.leader"):
        asyncio.run(run())
    failed = [r for r in caplog.records if "the leader's work failed" in r.getMessage()]
    assert failed and failed[0].exc_info and "a bug in the first run" in str(failed[0].exc_info[1])


def test_clusterrole_aggregation_extends_view_edit_and_admin(cluster):
    """A ClusterRole labelled aggregate-to-view flows into view, and through view into edit and
    admin; a user bound to view gains it, and loses it when the label goes. An aggregated role
    takes cluster-admin privileges to create, as in Kubernetes."""
    async def run():
        api, access, store = await cluster()
        admin = api.as_user(ADMIN)
        ctl = ClusterRoleAggregationController(api.as_user(CONTROLLER_USER))
        task = asyncio.create_task(ctl.run())
        await admin.create("namespaces", "", {"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": "team"}})
        await admin.create("rolebindings", "team", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "viewers", "namespace": "team"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "vera"}]})
        vera = UserInfo("vera", "", ("system:authenticated",))
        extra = {"apiGroups": ["stable.example.com"], "resources": ["crontabs"],
                 "verbs": ["get", "list"]}
        assert not api.can(vera, "get", "crontabs.stable.example.com", "team")[0]
        await admin.create("clusterroles", "", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "crontab-viewer",
                         "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
            "rules": [extra]})

        async def in_all():
            roles = {n: await admin.get("clusterroles", "", n) for n in ("view", "edit", "admin")}
            return all(extra in r["rules"] for r in roles.values())
        await wait_for(in_all, what="the rule aggregated into view, edit and admin")
        await wait_for(lambda: _true(api.can(vera, "get", "crontabs.stable.example.com",
                                             "team")[0]), what="vera may get crontabs")
        role = await admin.get("clusterroles", "", "crontab-viewer")
        role["metadata"]["labels"] = {}
        await admin.update("clusterroles", "", role)

        async def gone():
            view = await admin.get("clusterroles", "", "view")
            return extra not in view["rules"] and any(r.get("resources") == ["pods"] or
                                                      "pods" in r.get("resources", [])
                                                      for r in view["rules"])
        await wait_for(gone, what="the rule gone with the label")
        # only who may escalate may create an aggregated role
        await admin.create("clusterrolebindings", "", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "role-writer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "role-writer"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "rita"}]})
        await admin.create("clusterroles", "", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "role-writer"},
            "rules": [{"apiGroups": ["rbac.authorization.k8s.io"],
                       "resources": ["clusterroles"], "verbs": ["create"]}]})
        rita = api.as_user(UserInfo("rita", "", ("system:authenticated",)))

        async def refused():
            try:
                await rita.create("clusterroles", "", {
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": "grab-all"},
                    "aggregationRule": {"clusterRoleSelectors": [{}]}})
            except objects.Forbidden as e:   # before the binding is in effect: RBAC's words
                return e.message if "aggregationRule" in e.message else None
            raise AssertionError("an aggregated role was created without escalate")
        message = await wait_for(refused, what="rita's role-writer binding in effect")
        assert "must have cluster-admin privileges to use the aggregationRule" in message
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await access.stop()
        await store.close()
    asyncio.run(run())
