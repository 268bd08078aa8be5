"""The cluster API's semantics (podnetd/apiserver: registry.py under api.py), each test run over
both stores of record: a SqliteStore in a temp dir and an EtcdObjectStore against a real etcd
(tests/etcd_local.py: TLS, client certificates, free loopback ports; every test under a key
prefix of its own). No gRPC here (tests/test_apiserver_grpc.py) and no root: the in-process
client (Api.as_user) is what the node's kubelet, scheduler and controllers use.

What is checked is what a kubectl user or a controller relies on: server-set metadata, refusals
with kube-apiserver's reasons and words (nothing stored), optimistic concurrency, list + watch
with exactly-once delivery resumable after a cut, selectors, graceful deletion, finalizers,
bindings, the status subresource, namespace termination, and hostile input."""
import asyncio
import contextlib
import dataclasses
import json
import re
import time
import uuid

import pytest

from etcd_local import LocalEtcd, shared_etcd  # noqa: F401 (a fixture)
from podnetd.apiserver import authn, authz, bootstrap, kinds, objects, rbac
from podnetd.apiserver.api import Api, UserClient
from podnetd.apiserver.objects import (AlreadyExists, BadRequest, Conflict, Forbidden, Gone,
                                       Invalid, NotFound, TooLarge)
from podnetd.apiserver.registry import Registry
from podnetd.apiserver.storage.etcd import EtcdObjectStore
from podnetd.apiserver.storage.watch_cache import WatchCache
from podnetd.apiserver.storage.sqlite import SqliteStore
from testlib import unique

WAIT = 20.0        # a hang guard for one watch event, not a speed check
ADMIN = authn.UserInfo("system:admin", "", ("system:masters", "system:authenticated"))
STALE = ("the object has been modified; please apply your changes to the latest version and "
         "try again")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


# -- the two stores ------------------------------------------------------------------------------

@dataclasses.dataclass
class T:
    """One opened API: the in-process admin client and what lies under it."""
    c: UserClient
    api: Api
    registry: Registry
    store: object
    env: "Env"

    async def compact(self) -> None:
        """Drop the store's history up to now (etcd: compaction; SQLite: its store was opened
        with a small history, which the writes before this call already overflowed)."""
        if self.env.etcd is not None:
            revision = await self.store.revision()
            await asyncio.to_thread(self.env.etcd.ctl, "compact", str(revision))


class Env:
    def __init__(self, kind: str, tmp_path, etcd: LocalEtcd | None):
        self.kind, self.tmp_path, self.etcd = kind, tmp_path, etcd
        self.prefix = f"/podnet-test/{unique()}/registry"

    def store(self, history: int = 10000):
        if self.etcd is None:
            return SqliteStore(str(self.tmp_path / "state" / "objects.db"), history=history)
        # as podnetd opens it: etcd behind the watch cache
        return WatchCache(EtcdObjectStore([self.etcd.url], prefix=self.prefix, tls=self.etcd.tls))

    @contextlib.asynccontextmanager
    async def opened(self, history: int = 10000):
        store = self.store(history)
        await store.start()
        try:
            registry = Registry(store, available=True)
            await bootstrap.ensure(registry, [])
            api = Api(registry, authz.Authorizer(rbac.RbacIndex()))
            yield T(api.as_user(ADMIN), api, registry, store, self)
        finally:
            await store.close()

    def run(self, body, history: int = 10000, timeout: float = 240):
        async def main():
            async with self.opened(history) as t:
                await body(t)
        asyncio.run(asyncio.wait_for(main(), timeout))


@pytest.fixture(params=["sqlite", "etcd"])
def env(request, tmp_path):
    etcd = request.getfixturevalue("shared_etcd") if request.param == "etcd" else None
    return Env(request.param, tmp_path, etcd)


# -- objects -------------------------------------------------------------------------------------

def pod(name: str, ns: str = "default", labels: dict | None = None, **spec) -> dict:
    meta = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "registry.test:5000/busybox:1.36"}],
                     **spec}}


def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def lease(name: str, ns: str = "default", holder: str = "a") -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 40}}


RBAC = "rbac.authorization.k8s.io/v1"
RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]

# resource -> (a valid object named "sample" (namespaced ones in "default"),
#              a change of spec, or None for kinds without one)
SAMPLES = {
    "namespaces": (namespace("sample"), lambda o: o.setdefault("spec", {}).update(
        finalizers=["kubernetes"])),
    "nodes": ({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "sample"},
               "spec": {"podCIDR": "10.1.0.0/24"}},
              lambda o: o["spec"].update(unschedulable=True)),
    "pods": (pod("sample"), lambda o: o["spec"]["tolerations"].append(
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"})),
    "events": ({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "sample", "namespace": "default"},
                "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
                "reason": "Scheduled", "message": "assigned", "type": "Normal", "count": 1},
               None),
    "leases": (lease("sample"), lambda o: o["spec"].update(holderIdentity="b")),
    "roles": ({"apiVersion": RBAC, "kind": "Role",
               "metadata": {"name": "sample", "namespace": "default"}, "rules": RULES}, None),
    "clusterroles": ({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "sample"},
                      "rules": RULES}, None),
    "rolebindings": ({"apiVersion": RBAC, "kind": "RoleBinding",
                      "metadata": {"name": "sample", "namespace": "default"},
                      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "sample"},
                      "subjects": [{"kind": "User", "name": "alice"}]}, None),
    "clusterrolebindings": ({"apiVersion": RBAC, "kind": "ClusterRoleBinding",
                             "metadata": {"name": "sample"},
                             "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                         "kind": "ClusterRole", "name": "sample"},
                             "subjects": [{"kind": "Group", "name": "devs"}]}, None),
}


def test_every_kind_has_a_sample():
    assert set(SAMPLES) == {k.resource for k in kinds.KINDS}


def names(listing: dict) -> list[str]:
    return sorted(o["metadata"]["name"] for o in listing["items"])


async def next_event(stream, timeout: float = WAIT):
    """The next event that is not a BOOKMARK."""
    while True:
        kind, obj = await asyncio.wait_for(stream.__anext__(), timeout)
        if kind != "BOOKMARK":
            return kind, obj


async def take(stream, n: int) -> list[tuple[str, str, int]]:
    out = []
    for _ in range(n):
        kind, obj = await next_event(stream)
        out.append((kind, obj["metadata"]["name"], int(obj["metadata"]["resourceVersion"])))
    return out


async def quiet(stream, seconds: float = 1.0) -> list:
    """Events arriving within `seconds` (there should be none)."""
    with contextlib.suppress(asyncio.TimeoutError):
        return [await next_event(stream, seconds)]
    return []


# -- create / get / list / update / delete, every kind ------------------------------------------

@pytest.mark.parametrize("resource", sorted(SAMPLES))
def test_crud_for_every_kind_with_server_set_metadata(env, resource):
    sample, change_spec = SAMPLES[resource]
    kind = kinds.BY_RESOURCE[resource]
    ns = "default" if kind.namespaced else ""

    async def body(t: T):
        obj = json.loads(json.dumps(sample))
        # what a client sends of the server's fields is not what is stored
        obj["metadata"].update(uid="forged", creationTimestamp="2001-01-01T00:00:00Z",
                               generation=99, resourceVersion="12345")
        created = await t.c.create(resource, ns, obj)
        meta = created["metadata"]
        assert uuid.UUID(meta["uid"]) and meta["uid"] != "forged"
        assert RFC3339.fullmatch(meta["creationTimestamp"])
        assert meta["creationTimestamp"] != "2001-01-01T00:00:00Z"
        assert meta["generation"] == 1
        assert meta["resourceVersion"] == str(await t.store.revision())
        assert ("namespace" in meta) == kind.namespaced
        assert await t.c.get(resource, ns, "sample") == created

        listing = await t.c.list(resource, ns)
        assert "sample" in names(listing)
        assert listing["kind"] == f"{kind.kind}List" and listing["apiVersion"] == kind.api_version
        assert int(listing["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])

        # a metadata-only change keeps generation; the server's fields cannot be changed
        relabelled = json.loads(json.dumps(created))
        relabelled["metadata"].setdefault("labels", {})["tier"] = "gold"
        relabelled["metadata"]["uid"] = "forged"
        relabelled["metadata"]["creationTimestamp"] = "2001-01-01T00:00:00Z"
        updated = await t.c.update(resource, ns, relabelled)
        assert updated["metadata"]["labels"]["tier"] == "gold"
        assert updated["metadata"]["generation"] == 1
        assert updated["metadata"]["uid"] == meta["uid"]
        assert updated["metadata"]["creationTimestamp"] == meta["creationTimestamp"]
        assert int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
        assert updated["metadata"]["resourceVersion"] == str(await t.store.revision())

        # an update that changes nothing writes nothing
        again = await t.c.update(resource, ns, updated)
        assert again["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]

        if change_spec is not None:
            respecced = json.loads(json.dumps(updated))
            change_spec(respecced)
            bumped = await t.c.update(resource, ns, respecced)
            assert bumped["metadata"]["generation"] == 2
            assert bumped["spec"] == respecced["spec"]

        deleted = await t.c.delete(resource, ns, "sample")
        if resource == "namespaces":
            # held by the namespace controller's finalizer: Terminating until it lets go
            assert deleted["metadata"]["deletionTimestamp"]
            assert deleted["status"]["phase"] == "Terminating"
            deleted["metadata"]["finalizers"] = []
            await t.c.update(resource, ns, deleted)
        with pytest.raises(NotFound, match=f'{resource} "sample" not found'):
            await t.c.get(resource, ns, "sample")
        assert "sample" not in names(await t.c.list(resource, ns))
    env.run(body)


def test_generate_name_gives_a_unique_name(env):
    async def body(t: T):
        obj = pod("")
        obj["metadata"] = {"generateName": "web-"}
        a = await t.c.create("pods", "default", obj)
        b = await t.c.create("pods", "default", obj)
        assert a["metadata"]["name"].startswith("web-") and len(a["metadata"]["name"]) == 9
        assert a["metadata"]["name"] != b["metadata"]["name"]
        assert a["metadata"]["generateName"] == "web-"
    env.run(body)


def test_pod_defaults_are_filled_and_replacing_with_the_same_manifest_changes_nothing(env):
    """kubectl replace -f pod.yaml twice: the server's defaults (restartPolicy, imagePullPolicy,
    the default tolerations...) are applied to the update too, so nothing looks changed."""
    async def body(t: T):
        created = await t.c.create("pods", "default", pod("web"))
        spec = created["spec"]
        assert spec["restartPolicy"] == "Always" and spec["schedulerName"] == "default-scheduler"
        assert spec["containers"][0]["imagePullPolicy"] == "IfNotPresent"
        assert {t["key"] for t in spec["tolerations"]} == {"node.kubernetes.io/not-ready",
                                                             "node.kubernetes.io/unreachable"}
        assert created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
        replaced = await t.c.update("pods", "default", pod("web"))
        assert replaced["spec"] == spec
        assert replaced["metadata"]["generation"] == 1
        assert replaced["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    env.run(body)


# -- refusals: with kube-apiserver's words, and nothing stored -----------------------------------

INVALID_PODS = [
    ({"containers": []}, "spec.containers"),
    ({"containers": [{"name": "c"}]}, "spec.containers[0].image"),
    ({"containers": [{"name": "c", "image": "x:1"}], "restartPolicy": "Sometimes"},
     "spec.restartPolicy"),
    ({"containers": [{"name": "c", "image": "x:1"}],
      "tolerations": [{"key": "k", "operator": "Equal", "effect": "Sometimes"}]},
     "spec.tolerations[0].effect"),
    ({"containers": [{"name": "c", "image": "x:1"}],
      "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
          "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Near"}]}]}}}},
     "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
     ".nodeSelectorTerms[0].matchExpressions[0].operator"),
    ({"containers": [{"name": "c", "image": "x:1"}], "bogus": 1}, "spec.bogus"),
]


@pytest.mark.parametrize("spec, path", INVALID_PODS, ids=[p for _, p in INVALID_PODS])
def test_an_invalid_pod_is_refused_with_its_field_path_and_nothing_is_stored(env, spec, path):
    async def body(t: T):
        before = await t.store.revision()
        obj = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "bad", "namespace": "default"}, "spec": spec}
        with pytest.raises(Invalid) as e:
            await t.c.create("pods", "default", obj)
        assert e.value.message.startswith('Pod "bad" is invalid: ')
        assert path in e.value.message
        assert names(await t.c.list("pods", "")) == []
        assert await t.store.revision() == before
    env.run(body)


@pytest.mark.parametrize("meta, path", [
    ({"name": "Bad_Name"}, "metadata.name"),
    ({}, "metadata.name"),
    ({"name": "ok", "labels": {"a": "b c"}}, "metadata.labels"),
    ({"name": "ok", "labels": {"-a": "b"}}, "metadata.labels"),
    ({"name": "ok", "finalizers": ["nodomain"]}, "metadata.finalizers[0]"),
    ({"name": "ok", "ownerReferences": [{"kind": "X"}]}, "metadata.ownerReferences[0]"),
    ({"name": "ok", "colour": "red"}, "metadata.colour"),
])
def test_invalid_metadata_is_refused_with_its_field_path(env, meta, path):
    async def body(t: T):
        obj = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {**meta, "namespace": "default"}}
        with pytest.raises(Invalid, match=re.escape(path)):
            await t.c.create("leases", "default", obj)
        assert names(await t.c.list("leases", "")) == []
    env.run(body)


def test_unknown_kind_is_not_found_with_the_supported_kinds_listed(env):
    async def body(t: T):
        for call in (t.c.get("widgets", "default", "x"), t.c.list("widgets"),
                     t.c.create("widgets", "default", {"kind": "Widget"})):
            with pytest.raises(NotFound) as e:
                await call
            assert 'the server doesn\'t have a resource type "widgets"' in e.value.message
            for k in kinds.KINDS:
                assert k.resource in e.value.message
        # a kind's other names find it, as kubectl's do
        for name in ("pod", "po", "Pod", "pods"):
            assert (await t.c.list(name, "default"))["kind"] == "PodList"
    env.run(body)


def test_wrong_kind_or_api_version_in_the_body_is_a_bad_request(env):
    async def body(t: T):
        with pytest.raises(BadRequest, match="kind"):
            await t.c.create("pods", "default", namespace("x"))
        obj = pod("web")
        obj["apiVersion"] = "v2"
        with pytest.raises(BadRequest, match="apiVersion"):
            await t.c.create("pods", "default", obj)
        assert names(await t.c.list("pods", "")) == []
    env.run(body)


def test_namespace_in_body_must_match_the_request(env):
    async def body(t: T):
        await t.c.create("namespaces", "", namespace("prod"))
        with pytest.raises(BadRequest, match="does not match the namespace sent on the request"):
            await t.c.create("pods", "default", pod("web", ns="prod"))
        created = await t.c.create("pods", "", pod("web", ns="prod"))  # the body's namespace
        assert created["metadata"]["namespace"] == "prod"
        created["metadata"]["namespace"] = "default"
        with pytest.raises(BadRequest, match="does not match"):
            await t.c.update("pods", "prod", created)
        assert names(await t.c.list("pods", "default")) == []
        assert names(await t.c.list("pods", "prod")) == ["web"]
    env.run(body)


def test_a_cluster_scoped_kind_takes_no_namespace(env):
    async def body(t: T):
        node, _ = SAMPLES["nodes"]
        for call in (t.c.create("nodes", "default", node), t.c.get("nodes", "default", "x"),
                     t.c.list("nodes", "default"), t.c.delete("nodes", "default", "x")):
            with pytest.raises(BadRequest, match="not namespaced"):
                await call
        # a namespace in the body of a cluster-scoped object is dropped, as kube-apiserver does
        in_body = json.loads(json.dumps(node))
        in_body["metadata"]["namespace"] = "default"
        created = await t.c.create("nodes", "", in_body)
        assert "namespace" not in created["metadata"]
        assert "namespace" not in (await t.c.get("nodes", "", "sample"))["metadata"]
    env.run(body)


def test_object_in_a_namespace_that_does_not_exist_is_not_found(env):
    async def body(t: T):
        with pytest.raises(NotFound, match='^namespaces "nowhere" not found$'):
            await t.c.create("pods", "nowhere", pod("web", ns="nowhere"))
        assert names(await t.c.list("pods", "")) == []
    env.run(body)


def test_duplicate_create_already_exists(env):
    async def body(t: T):
        first = await t.c.create("pods", "default", pod("web"))
        with pytest.raises(AlreadyExists, match='^pods "web" already exists$'):
            await t.c.create("pods", "default", pod("web", labels={"other": "x"}))
        assert await t.c.get("pods", "default", "web") == first
    env.run(body)


def test_stale_resource_version_on_update_and_delete_is_a_conflict(env):
    async def body(t: T):
        v1 = await t.c.create("leases", "default", lease("l"))
        v2 = json.loads(json.dumps(v1))
        v2["spec"]["holderIdentity"] = "b"
        v2 = await t.c.update("leases", "default", v2)
        stale = json.loads(json.dumps(v1))
        stale["spec"]["holderIdentity"] = "c"
        with pytest.raises(Conflict) as e:
            await t.c.update("leases", "default", stale)
        assert e.value.message == f'Operation cannot be fulfilled on leases "l": {STALE}'
        with pytest.raises(Conflict, match=re.escape(STALE)):
            await t.c.delete("leases", "default", "l",
                             precondition_rv=v1["metadata"]["resourceVersion"])
        assert await t.c.get("leases", "default", "l") == v2
        await t.c.delete("leases", "default", "l",
                         precondition_rv=v2["metadata"]["resourceVersion"])
        with pytest.raises(NotFound):
            await t.c.get("leases", "default", "l")
    env.run(body)


@pytest.mark.parametrize("rv", ["abc", "-1", "1.5", "²", "9" * 5000, "99999999999999999999999"])
def test_a_malformed_resource_version_is_a_bad_request(env, rv):
    async def body(t: T):
        created = await t.c.create("leases", "default", lease("l"))
        created["metadata"]["resourceVersion"] = rv
        with pytest.raises(BadRequest):
            await t.c.update("leases", "default", created)
        with pytest.raises(BadRequest):
            await t.c.delete("leases", "default", "l", precondition_rv=rv)
        with pytest.raises(BadRequest):
            await anext(t.c.watch("leases", "default", resource_version=rv))
    env.run(body)


@pytest.mark.parametrize("name", ["x" * 2000, "a\x00b", "a/b", "../default/web", "\udcff", ""])
def test_hostile_names_in_the_request_are_refused_not_crashing(env, name):
    async def body(t: T):
        await t.c.create("pods", "default", pod("web"))
        calls = [lambda: t.c.get("pods", "default", name),
                 lambda: t.c.delete("pods", "default", name)]
        if name:   # an empty namespace is the default one (or every one, for a listing)
            calls += [lambda: t.c.get("pods", name, "web"), lambda: t.c.list("pods", name),
                      lambda: anext(t.c.watch("pods", name))]
        for call in calls:
            with pytest.raises((NotFound, BadRequest)):
                await call()
        assert names(await t.c.list("pods", "")) == ["web"]
    env.run(body)


# -- list and watch ------------------------------------------------------------------------------

def test_watch_from_a_list_delivers_every_later_change_exactly_once_in_order(env):
    """Several writers at once; the watch started from the list's resourceVersion sees each
    write's resourceVersion once, in revision order, with the type of the write."""
    writers, rounds = 4, 6

    async def body(t: T):
        await t.c.create("leases", "default", lease("before"))
        listing = await t.c.list("leases", "default")
        stream = t.c.watch("leases", "default",
                           resource_version=listing["metadata"]["resourceVersion"])

        async def writer(w: int) -> list[tuple[str, str, int]]:
            done = []
            for r in range(rounds):
                name = f"w{w}-{r}"
                obj = await t.c.create("leases", "default", lease(name))
                done.append(("ADDED", name, int(obj["metadata"]["resourceVersion"])))
                obj["spec"]["holderIdentity"] = f"h{r}"
                obj = await t.c.update("leases", "default", obj)
                done.append(("MODIFIED", name, int(obj["metadata"]["resourceVersion"])))
                if r % 2:
                    gone = await t.c.delete("leases", "default", name)
                    done.append(("DELETED", name, int(gone["metadata"]["resourceVersion"])))
            return done
        results = await asyncio.gather(*(writer(w) for w in range(writers)))
        expected = sorted((e for done in results for e in done), key=lambda e: e[2])
        seen = await take(stream, len(expected))
        assert seen == expected
        assert await quiet(stream) == []
        await stream.aclose()
    env.run(body)


def test_a_watch_cut_mid_stream_resumes_without_gap_or_duplicate(env):
    async def body(t: T):
        for i in range(3):
            await t.c.create("leases", "default", lease(f"old{i}"))
        start = (await t.c.list("leases", "default"))["metadata"]["resourceVersion"]
        expected = []

        async def write(kind, coro):
            obj = await coro
            expected.append((kind, obj["metadata"]["name"], int(obj["metadata"]["resourceVersion"])))
        stream = t.c.watch("leases", "default", resource_version=start)
        await write("ADDED", t.c.create("leases", "default", lease("a")))
        await write("DELETED", t.c.delete("leases", "default", "old0"))
        first = await take(stream, 2)
        await stream.aclose()            # the client's connection drops here
        # while it is away: creations, updates and deletions of objects it holds
        await write("ADDED", t.c.create("leases", "default", lease("b")))
        await write("DELETED", t.c.delete("leases", "default", "old1"))
        await write("DELETED", t.c.delete("leases", "default", "a"))
        held = await t.c.get("leases", "default", "old2")
        held["spec"]["holderIdentity"] = "z"
        await write("MODIFIED", t.c.update("leases", "default", held))
        resumed = t.c.watch("leases", "default", resource_version=str(first[-1][2]))
        await write("ADDED", t.c.create("leases", "default", lease("c")))
        rest = await take(resumed, len(expected) - len(first))
        assert first + rest == expected
        assert await quiet(resumed) == []
        await resumed.aclose()
    env.run(body)


def test_a_selector_watch_resumed_learns_what_left_the_selector_while_it_was_away(env):
    """The client held "a" and "b" (app=web); while it was away "a" was relabelled and "b"
    deleted: the resumed watch says both are gone, and that "c" entered."""
    async def body(t: T):
        for name in "ab":
            await t.c.create("pods", "default", pod(name, labels={"app": "web"}))
        listing = await t.c.list("pods", "default", label_selector="app=web")
        assert names(listing) == ["a", "b"]
        a = await t.c.get("pods", "default", "a")
        a["metadata"]["labels"]["app"] = "db"
        await t.c.update("pods", "default", a)
        await t.c.delete("pods", "default", "b")
        await t.c.create("pods", "default", pod("c", labels={"app": "web"}))
        stream = t.c.watch("pods", "default", label_selector="app=web",
                           resource_version=listing["metadata"]["resourceVersion"])
        got = [(k, n) for k, n, _ in await take(stream, 3)]
        assert got == [("DELETED", "a"), ("DELETED", "b"), ("ADDED", "c")]
        assert await quiet(stream) == []
        await stream.aclose()
    env.run(body)


def test_a_watch_from_an_empty_resource_version_starts_with_the_current_objects(env):
    async def body(t: T):
        await t.c.create("leases", "default", lease("x"))
        await t.c.create("leases", "default", lease("y"))
        stream = t.c.watch("leases", "default")
        first = await take(stream, 2)
        assert [(k, n) for k, n, _ in first] == [("ADDED", "x"), ("ADDED", "y")]
        z = await t.c.create("leases", "default", lease("z"))
        assert await take(stream, 1) == [("ADDED", "z", int(z["metadata"]["resourceVersion"]))]
        await stream.aclose()
    env.run(body)


def test_a_resource_version_too_old_is_gone(env):
    async def body(t: T):
        start = (await t.c.list("leases", "default"))["metadata"]["resourceVersion"]
        for i in range(12):
            await t.c.create("leases", "default", lease(f"l{i}"))
        await t.compact()
        stream = t.c.watch("leases", "default", resource_version=start)
        with pytest.raises(Gone, match=f"too old resource version: {start}"):
            await next_event(stream)
        # the client lists again and watches from there
        listing = await t.c.list("leases", "default")
        assert len(listing["items"]) == 12
        fresh = t.c.watch("leases", "default",
                          resource_version=listing["metadata"]["resourceVersion"])
        obj = await t.c.create("leases", "default", lease("after"))
        assert await take(fresh, 1) == [("ADDED", "after",
                                         int(obj["metadata"]["resourceVersion"]))]
        await fresh.aclose()
    env.run(body, history=5)


SELECTED = {"a": {"app": "web", "tier": "fe"}, "b": {"app": "web", "tier": "be"},
            "c": {"app": "db"}, "d": None}


@pytest.mark.parametrize("selector, expected", [
    ("app=web", "ab"), ("app==web", "ab"), ("app!=web", "cd"), ("app in (web, db)", "abc"),
    ("app notin (web)", "cd"), ("tier", "ab"), ("!tier", "cd"), ("app=web,tier=fe", "a"),
    ("app=web,!tier", ""), ("", "abcd"),
])
def test_label_selectors(env, selector, expected):
    async def body(t: T):
        for name, labels in SELECTED.items():
            await t.c.create("pods", "default", pod(name, labels=labels))
        assert "".join(names(await t.c.list("pods", "default", label_selector=selector))) \
            == expected
        stream = t.c.watch("pods", "default", label_selector=selector)
        got = await take(stream, len(expected)) if expected else []
        assert "".join(sorted(n for _, n, _ in got)) == expected
        assert await quiet(stream, 0.5) == []
        await stream.aclose()
    env.run(body)


@pytest.mark.parametrize("selector", ["app in (web", "a=b=c,(", "app in ()x", "bad key!=1",
                                      "a=" + "x" * 70])
def test_a_bad_label_selector_is_a_bad_request(env, selector):
    async def body(t: T):
        with pytest.raises(BadRequest):
            await t.c.list("pods", "default", label_selector=selector)
        with pytest.raises(BadRequest):
            await anext(t.c.watch("pods", "default", label_selector=selector))
    env.run(body)


def test_field_selectors_on_pods(env):
    async def body(t: T):
        for name in "abc":
            await t.c.create("pods", "default", pod(name))
        await t.c.create("pods", "default", {**pod("a"), "kind": "Binding",
                                             "target": {"kind": "Node", "name": "n1"}},
                         subresource="binding", name="a")
        assert names(await t.c.list("pods", "", field_selector="spec.nodeName=n1")) == ["a"]
        assert names(await t.c.list("pods", "", field_selector="spec.nodeName=")) == ["b", "c"]
        assert names(await t.c.list("pods", "", field_selector="spec.nodeName!=n1")) == ["b", "c"]
        assert names(await t.c.list("pods", "", field_selector="metadata.name=b")) == ["b"]
        assert names(await t.c.list(
            "pods", "", field_selector="metadata.namespace=default,metadata.name!=b")) == ["a", "c"]
        for bad in ("spec.containers=x", "status.nothing=1", "nodeName"):
            with pytest.raises(BadRequest, match="field label not supported|invalid field"):
                await t.c.list("pods", "", field_selector=bad)
        with pytest.raises(BadRequest, match="field label not supported: spec.nodeName"):
            await t.c.list("nodes", "", field_selector="spec.nodeName=n1")
    env.run(body)


def test_a_watch_with_a_selector_reports_objects_leaving_and_entering_it(env):
    async def body(t: T):
        await t.c.create("pods", "default", pod("in", labels={"app": "web"}))
        await t.c.create("pods", "default", pod("out", labels={"app": "db"}))
        listing = await t.c.list("pods", "default", label_selector="app=web")
        assert names(listing) == ["in"]
        stream = t.c.watch("pods", "default", label_selector="app=web",
                           resource_version=listing["metadata"]["resourceVersion"])
        # once this arrives the watch is running (the changes below come after its start)
        marker = await t.c.create("pods", "default", pod("marker", labels={"app": "web"}))
        assert await take(stream, 1) == [("ADDED", "marker",
                                          int(marker["metadata"]["resourceVersion"]))]
        obj = await t.c.get("pods", "default", "in")
        obj["metadata"]["labels"]["app"] = "db"
        left = await t.c.update("pods", "default", obj)
        obj = await t.c.get("pods", "default", "out")
        obj["metadata"]["labels"]["app"] = "web"
        entered = await t.c.update("pods", "default", obj)
        entered["metadata"]["labels"]["x"] = "y"
        modified = await t.c.update("pods", "default", entered)
        gone = await t.c.delete("pods", "default", "out")
        assert await take(stream, 4) == [
            ("DELETED", "in", int(left["metadata"]["resourceVersion"])),
            ("ADDED", "out", int(entered["metadata"]["resourceVersion"])),
            ("MODIFIED", "out", int(modified["metadata"]["resourceVersion"])),
            ("DELETED", "out", int(gone["metadata"]["resourceVersion"]))]
        # a change to an object outside the selector is not reported
        obj = await t.c.get("pods", "default", "in")
        obj["metadata"]["labels"]["z"] = "1"
        await t.c.update("pods", "default", obj)
        assert await quiet(stream) == []
        await stream.aclose()
    env.run(body)


def test_a_watch_with_a_field_selector_follows_binding(env):
    """The kubelet's watch: spec.nodeName=n1 sees a pod ADDED when it is bound there and
    DELETED when it goes."""
    async def body(t: T):
        await t.c.create("pods", "default", pod("web"))
        stream = t.c.watch("pods", "", field_selector="spec.nodeName=n1")
        await bind(t, "web", "n1")
        kind, obj = await next_event(stream)
        assert kind == "ADDED" and obj["spec"]["nodeName"] == "n1"
        await t.c.delete("pods", "default", "web", grace=0)
        kind, obj = await next_event(stream)
        assert kind == "DELETED" and obj["metadata"]["name"] == "web"
        await stream.aclose()
    env.run(body)


def test_a_watch_on_status_phase_sees_a_pod_leave_and_come_back(env):
    async def body(t: T):
        created = await t.c.create("pods", "default", pod("web"))
        stream = t.c.watch("pods", "default", field_selector="status.phase=Pending")
        assert (await next_event(stream))[0] == "ADDED"
        running = dict(created, status={"phase": "Running"})
        running = await t.c.update("pods", "default", running, subresource="status")
        kind, obj = await next_event(stream)
        assert (kind, obj["status"]["phase"]) == ("DELETED", "Running")
        pending = dict(running, status={"phase": "Pending"})
        await t.c.update("pods", "default", pending, subresource="status")
        kind, obj = await next_event(stream)
        assert (kind, obj["status"]["phase"]) == ("ADDED", "Pending")
        await stream.aclose()
    env.run(body)


# -- deletion ------------------------------------------------------------------------------------

async def bind(t: T, name: str, node: str, ns: str = "default"):
    return await t.c.create("pods", ns, {"apiVersion": "v1", "kind": "Binding",
                                         "metadata": {"name": name, "namespace": ns},
                                         "target": {"apiVersion": "v1", "kind": "Node",
                                                    "name": node}},
                            subresource="binding", name=name)


def test_graceful_pod_deletion(env):
    async def body(t: T):
        await t.c.create("pods", "default", pod("unbound"))
        gone = await t.c.delete("pods", "default", "unbound")
        assert "deletionTimestamp" not in gone["metadata"]
        with pytest.raises(NotFound):
            await t.c.get("pods", "default", "unbound")

        await t.c.create("pods", "default", pod("bound", terminationGracePeriodSeconds=20))
        await bind(t, "bound", "n1")
        before = time.time()
        marked = await t.c.delete("pods", "default", "bound")
        meta = marked["metadata"]
        assert meta["deletionGracePeriodSeconds"] == 20
        deadline = time.mktime(time.strptime(meta["deletionTimestamp"][:19],
                                             "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert before + 20 - 2 <= deadline <= time.time() + 20 + 2
        assert await t.c.get("pods", "default", "bound") == marked
        # deleting again with a longer grace changes nothing; a shorter one shortens it
        assert (await t.c.delete("pods", "default", "bound", grace=60)) == marked
        shorter = await t.c.delete("pods", "default", "bound", grace=5)
        assert shorter["metadata"]["deletionGracePeriodSeconds"] == 5
        # the kubelet, once the containers are stopped: grace 0 removes it
        await t.c.delete("pods", "default", "bound", grace=0,
                         precondition_rv=shorter["metadata"]["resourceVersion"])
        with pytest.raises(NotFound):
            await t.c.get("pods", "default", "bound")

        await t.c.create("pods", "default", pod("now"))
        await bind(t, "now", "n1")
        await t.c.delete("pods", "default", "now", grace=0)
        with pytest.raises(NotFound):
            await t.c.get("pods", "default", "now")
    env.run(body)


def test_finalizers_hold_an_object_until_removed_by_update(env):
    async def body(t: T):
        obj = lease("held")
        obj["metadata"]["finalizers"] = ["example.com/a", "example.com/b"]
        await t.c.create("leases", "default", obj)
        marked = await t.c.delete("leases", "default", "held")
        assert marked["metadata"]["deletionTimestamp"]
        assert marked["metadata"]["deletionGracePeriodSeconds"] == 0
        assert (await t.c.get("leases", "default", "held"))["metadata"]["deletionTimestamp"]
        # deletionTimestamp cannot be cleared by an update
        undo = json.loads(json.dumps(marked))
        del undo["metadata"]["deletionTimestamp"]
        undo["metadata"]["finalizers"] = ["example.com/a"]
        one_left = await t.c.update("leases", "default", undo)
        assert one_left["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
        # a finalizer cannot be added to an object being deleted (Kubernetes forbids it)
        more = json.loads(json.dumps(one_left))
        more["metadata"]["finalizers"] = ["example.com/a", "example.com/new"]
        with pytest.raises(Invalid, match="metadata.finalizers"):
            await t.c.update("leases", "default", more)
        one_left["metadata"]["finalizers"] = []
        await t.c.update("leases", "default", one_left)
        with pytest.raises(NotFound):
            await t.c.get("leases", "default", "held")
    env.run(body)


# -- pods/binding, immutable fields, the status subresource -------------------------------------

def test_binding_sets_node_name_and_pod_scheduled_once(env):
    async def body(t: T):
        await t.c.create("pods", "default", pod("web"))
        result = await bind(t, "web", "n1")
        assert result["kind"] == "Status" and result["status"] == "Success"
        bound = await t.c.get("pods", "default", "web")
        assert bound["spec"]["nodeName"] == "n1"
        [cond] = [c for c in bound["status"]["conditions"] if c["type"] == "PodScheduled"]
        assert cond["status"] == "True" and RFC3339.fullmatch(cond["lastTransitionTime"])
        with pytest.raises(Conflict, match='pod web is already assigned to node "n1"'):
            await bind(t, "web", "n2")
        assert (await t.c.get("pods", "default", "web"))["spec"]["nodeName"] == "n1"
        with pytest.raises(NotFound, match='pods "nobody" not found'):
            await bind(t, "nobody", "n1")
        with pytest.raises(BadRequest):
            await t.c.create("pods", "default", {"kind": "Binding", "target": {"name": 5}},
                             subresource="binding", name="web")
    env.run(body)


def test_pod_spec_immutable_fields_and_node_name(env):
    async def body(t: T):
        created = await t.c.create("pods", "default", pod("web"))
        for change, field in [
                (lambda s: s["containers"][0].update(image="other:2"), "spec.containers"),
                (lambda s: s.update(restartPolicy="Never"), "spec.restartPolicy"),
                (lambda s: s.update(nodeSelector={"zone": "a"}), "spec.nodeSelector"),
                (lambda s: s.update(hostNetwork=True), "spec.hostNetwork")]:
            obj = json.loads(json.dumps(created))
            change(obj["spec"])
            with pytest.raises(Invalid, match=f"{re.escape(field)}: .*field is immutable"):
                await t.c.update("pods", "default", obj)
        obj = json.loads(json.dumps(created))
        obj["spec"]["nodeName"] = "n1"
        with pytest.raises(Invalid, match="spec.nodeName"):
            await t.c.update("pods", "default", obj)
        assert await t.c.get("pods", "default", "web") == created
    env.run(body)


def test_the_status_subresource(env):
    async def body(t: T):
        created = await t.c.create("pods", "default", pod("web"))
        # an update of the object keeps the stored status
        obj = json.loads(json.dumps(created))
        obj["status"] = {"phase": "Running"}
        obj["metadata"]["labels"] = {"a": "b"}
        updated = await t.c.update("pods", "default", obj)
        assert updated["status"] == created["status"] and updated["metadata"]["labels"]
        # an update of /status keeps spec and metadata
        obj = json.loads(json.dumps(updated))
        obj["status"] = {"phase": "Running", "podIP": "10.1.0.5"}
        obj["spec"]["activeDeadlineSeconds"] = 5
        obj["metadata"]["labels"] = {"c": "d"}
        status = await t.c.update("pods", "default", obj, subresource="status")
        assert status["status"] == {"phase": "Running", "podIP": "10.1.0.5"}
        assert status["spec"] == updated["spec"]
        assert status["metadata"]["labels"] == {"a": "b"}
        assert status["metadata"]["generation"] == 1
        obj["status"] = {"phase": "Sleeping"}
        del obj["metadata"]["resourceVersion"]
        with pytest.raises(Invalid, match="status.phase"):
            await t.c.update("pods", "default", obj, subresource="status")
        with pytest.raises(NotFound):
            await t.c.update("leases", "default", lease("l"), subresource="status")
    env.run(body)


def test_an_object_too_large_is_refused(env):
    async def body(t: T):
        obj = lease("big")
        obj["metadata"]["annotations"] = {f"k{i}": "v" * 60000 for i in range(30)}
        with pytest.raises((TooLarge, Invalid)):
            await t.c.create("leases", "default", obj)
        assert names(await t.c.list("leases", "")) == []
    env.run(body)


# -- namespaces ----------------------------------------------------------------------------------

def test_namespace_deletion_terminates_then_goes_when_its_finalizer_does(env):
    async def body(t: T):
        created = await t.c.create("namespaces", "", namespace("team"))
        assert created["metadata"]["finalizers"] == ["kubernetes.io/namespace-content"]
        assert created["status"] == {"phase": "Active"}
        assert created["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team"}
        await t.c.create("pods", "team", pod("web", ns="team"))
        stream = t.c.watch("namespaces", "", field_selector="metadata.name=team",
                           resource_version=created["metadata"]["resourceVersion"])
        marked = await t.c.delete("namespaces", "", "team")
        assert marked["metadata"]["deletionTimestamp"]
        assert marked["status"]["phase"] == "Terminating"
        kind, seen = await next_event(stream)
        assert kind == "MODIFIED" and seen["status"]["phase"] == "Terminating"
        assert names(await t.c.list("namespaces", "", field_selector="status.phase=Terminating")) \
            == ["team"]
        with pytest.raises(Forbidden, match="unable to create new content in namespace team "
                                            "because it is being terminated"):
            await t.c.create("pods", "team", pod("late", ns="team"))
        # what the namespace controller does: empty it, then let go of the finalizer
        await t.c.delete("pods", "team", "web")
        ns = await t.c.get("namespaces", "", "team")
        assert ns["status"]["phase"] == "Terminating"
        ns["metadata"]["finalizers"] = []
        await t.c.update("namespaces", "", ns)
        kind, seen = await next_event(stream)
        assert kind == "DELETED"
        with pytest.raises(NotFound):
            await t.c.get("namespaces", "", "team")
        await stream.aclose()
    env.run(body)


def test_system_namespaces_exist_and_cannot_be_deleted(env):
    async def body(t: T):
        assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= set(
            names(await t.c.list("namespaces")))
        for name in ("default", "kube-system", "kube-public"):
            with pytest.raises(Forbidden, match=f'namespaces "{name}" is forbidden: this '
                                                 "namespace may not be deleted"):
                await t.c.delete("namespaces", "", name)
        assert (await t.c.get("namespaces", "", "default"))["status"]["phase"] == "Active"
    env.run(body)


# -- hostile input -------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e400}', b"[" * 100000 + b"]" * 100000,
    b'{"x":' * 900 + b"1" + b"}" * 900, b"[1, 2]", b'"text"', b"null", b"\xff\xfe{}",
    b'{"a": "\xc3\x28"}', b"", b"{", b'{"a": 1' + b"0" * 5000 + b"}",
])
def test_hostile_json_is_a_bad_request(data):
    with pytest.raises(BadRequest):
        objects.decode(data)


def test_a_request_over_3_mib_is_refused_with_the_limit():
    data = json.dumps({"kind": "Pod", "pad": "x" * (3 * 1024 * 1024)}).encode()
    with pytest.raises(TooLarge, match="^Request entity too large: limit is 3145728$"):
        objects.decode(data)


@pytest.mark.parametrize("obj", [
    {"apiVersion": "v1", "kind": "Pod", "metadata": [1]},
    {"apiVersion": "v1", "kind": "Pod", "metadata": "web"},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": 5, "namespace": "default"},
     "spec": {}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": {"a": 1}}, "spec": []},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": 7}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": ["x"]}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": []},
     "spec": {"containers": "c"}},
    {"apiVersion": ["v1"], "kind": {"Pod": 1}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
     "spec": {"containers": [{"name": "c", "image": "x:1"}]},
     "status": {"containerStatuses": [{"x": json.loads("[" * 900 + "]" * 900)}]}},
])
def test_hostile_objects_are_refused_cleanly_on_every_verb(env, obj):
    async def body(t: T):
        await t.c.create("pods", "default", pod("web"))
        before = await t.c.get("pods", "default", "web")
        for call in (lambda: t.c.create("pods", "default", obj),
                     lambda: t.c.create("pods", "", obj),
                     lambda: t.c.update("pods", "default", obj),
                     lambda: t.c.update("pods", "default", obj, subresource="status"),
                     lambda: t.c.create("pods", "default", obj, subresource="binding",
                                        name="web"),
                     lambda: t.c.create("pods", "default", obj, subresource="eviction",
                                        name="web")):
            with contextlib.suppress(objects.ApiError):
                await call()
        # whatever was accepted, the pod "web" is intact and nothing else is stored
        after = await t.c.get("pods", "default", "web")
        assert after["spec"] == before["spec"]
        assert set(names(await t.c.list("pods", ""))) <= {"web"}
    env.run(body)


# -- the Node authorizer's view of a pod bound a moment ago ------------------------------------

def test_a_node_may_write_the_status_of_a_pod_bound_to_it_a_moment_ago(env):
    """The Node authorizer's pod -> node index is fed by a watch; the request path asks the
    store when the index has not caught up, so the kubelet's first write is not refused."""
    from podnetd.apiserver.access import Access

    async def body(t: T):
        access = Access()
        api = Api(t.registry, access.authorizer)
        await access.start(api)
        try:
            admin = api.as_user(ADMIN)
            n1 = api.as_user(authn.UserInfo("system:node:n1", "", ("system:nodes",)))
            for i in range(5):
                await admin.create("pods", "default", pod(f"p{i}", nodeName="n1"))
                current = await admin.get("pods", "default", f"p{i}")
                current["status"] = {"phase": "Running"}
                done = await n1.update("pods", "default", current, subresource="status")
                assert done["status"]["phase"] == "Running"
            await admin.create("pods", "default", pod("elsewhere", nodeName="n2"))
            other = await admin.get("pods", "default", "elsewhere")
            other["status"] = {"phase": "Running"}
            with pytest.raises(Forbidden, match="system:node:n1"):
                await n1.update("pods", "default", other, subresource="status")
        finally:
            await access.stop()
    env.run(body)


def test_a_bindings_role_ref_cannot_change(tmp_path):
    """As Kubernetes: a RoleBinding's roleRef is fixed at creation (delete and create to
    point it elsewhere), so a grant cannot be widened by an update of the binding."""
    async def run():
        store = SqliteStore(str(tmp_path / "o.db"))
        await store.start()
        registry = Registry(store, available=True)
        await bootstrap.ensure(registry, rbac.bootstrap_objects())
        kind = kinds.BY_RESOURCE["rolebindings"]
        binding = await registry.create(kind, "default", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "b"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"}]})
        binding["roleRef"]["name"] = "cluster-admin"
        with pytest.raises(objects.Invalid) as refused:
            await registry.update(kind, "default", binding)
        assert 'RoleBinding "b" is invalid: roleRef: Invalid value:' in refused.value.message
        assert "cannot change roleRef" in refused.value.message
        stored = await registry.get(kind, "default", "b")
        assert stored["roleRef"]["name"] == "view"
        await store.close()
    asyncio.run(run())


def test_a_corrupt_stored_value_never_breaks_list_watch_or_get(tmp_path):
    """The store is shared (etcd: whoever holds a client certificate writes any key): a value
    under the API's keys that is not one of its objects is left out of lists and watches
    (logged), refused on get as INTERNAL with the key named, and deleting it repairs."""
    async def run():
        store = SqliteStore(str(tmp_path / "o.db"))
        await store.start()
        registry = Registry(store, available=True)
        await bootstrap.ensure(registry, rbac.bootstrap_objects())
        pods = kinds.BY_RESOURCE["pods"]
        good = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "good"},
                "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}
        await registry.create(pods, "default", good)
        _, rv = await registry.list(pods, "default")
        stream = registry.watch(pods, "default", "", "", rv)
        for value in (b"\xff\xfe not json", b"[1, 2]", b'{"metadata": 5}', b"{" * 100_000):
            await store.create("/pods/default/junk", value)
            items, _ = await registry.list(pods, "default")
            assert [o["metadata"]["name"] for o in items] == ["good"]
            with pytest.raises(objects.Corrupt) as corrupt:
                await registry.get(pods, "default", "junk")
            assert "/pods/default/junk is not a Kubernetes object" in corrupt.value.message
            await registry.delete(pods, "default", "junk")              # the repair
            with pytest.raises(objects.NotFound):
                await registry.get(pods, "default", "junk")
        good = await registry.get(pods, "default", "good")
        good["metadata"]["labels"] = {"after": "junk"}
        await registry.update(pods, "default", good)
        kind_, obj = await asyncio.wait_for(stream.__anext__(), 10)   # the junk was skipped
        assert (kind_, obj["metadata"]["name"], obj["metadata"]["labels"]) == \
            ("MODIFIED", "good", {"after": "junk"})
        await stream.aclose()
        await store.close()
    asyncio.run(run())
