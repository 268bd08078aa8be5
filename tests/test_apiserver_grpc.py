"""The cluster API (podnet.api.v1 ObjectService/AccessService) through gRPC on a real podnetd's
unix socket, as root (`system:admin` in `system:masters`): the gRPC status code of each refusal,
WatchObjects streaming, and the API over etcd when etcd is away at start and comes later.

The semantics themselves are tests/test_apiserver_semantics.py; here it is the wire: codes,
messages, the 3 MiB limit reaching the handler, streams."""
import json
import os
import shutil
import tempfile
import threading

import grpc
import pytest

from etcd_local import LocalEtcd
from podnetd.api.podnet.api.v1 import api_pb2, api_pb2_grpc
from testlib import Daemon, Netns, unique, wait_for

pytestmark = pytest.mark.root

CALL = 20   # seconds: a hang guard for one call, not a speed check
STALE = ("the object has been modified; please apply your changes to the latest version and "
         "try again")


class Client:
    def __init__(self, socket: str):
        self.channel = grpc.insecure_channel(f"unix://{socket}", options=[
            ("grpc.max_send_message_length", 16 << 20),
            ("grpc.max_receive_message_length", 16 << 20)])
        self.objects = api_pb2_grpc.ObjectServiceStub(self.channel)
        self.access = api_pb2_grpc.AccessServiceStub(self.channel)

    def create(self, resource, namespace, obj, **kw) -> dict:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        r = self.objects.CreateObject(api_pb2.CreateObjectRequest(
            resource=resource, namespace=namespace, object=data, **kw), timeout=CALL)
        return json.loads(r.object)

    def get(self, resource, namespace, name) -> dict:
        r = self.objects.GetObject(api_pb2.GetObjectRequest(
            resource=resource, namespace=namespace, name=name), timeout=CALL)
        return json.loads(r.object)

    def list(self, resource, namespace="", **kw) -> dict:
        r = self.objects.ListObjects(api_pb2.ListObjectsRequest(
            resource=resource, namespace=namespace, **kw), timeout=CALL)
        return json.loads(r.list)

    def update(self, resource, namespace, obj, **kw) -> dict:
        r = self.objects.UpdateObject(api_pb2.UpdateObjectRequest(
            resource=resource, namespace=namespace, object=json.dumps(obj).encode(), **kw),
            timeout=CALL)
        return json.loads(r.object)

    def delete(self, resource, namespace, name, **kw) -> dict:
        r = self.objects.DeleteObject(api_pb2.DeleteObjectRequest(
            resource=resource, namespace=namespace, name=name, **kw), timeout=CALL)
        return json.loads(r.object)

    def watch(self, resource, namespace="", **kw):
        return self.objects.WatchObjects(api_pb2.WatchObjectsRequest(
            resource=resource, namespace=namespace, **kw), timeout=120)

    def close(self):
        self.channel.close()


def refused(code: grpc.StatusCode, fn, *args, **kw) -> str:
    """The details of the call's refusal, which must carry `code`."""
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, **kw)
    assert e.value.code() == code, e.value.details()
    return e.value.details()


def lease(name: str, ns: str, holder: str = "a") -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 40}}


def next_event(stream) -> tuple[int, dict]:
    for event in stream:
        if event.type != api_pb2.WATCH_EVENT_TYPE_BOOKMARK:
            return event.type, json.loads(event.object)
    raise AssertionError("the watch ended")


@pytest.fixture(scope="module")
def node():
    """One podnetd with the default (SQLite) store, its API client and a namespace of this
    module's own."""
    spaces = Netns()
    daemon = None
    try:
        daemon = Daemon(spaces.add("ap"), "10.79.0.0/24").start()
        client = Client(daemon.socket)
        wait_for(lambda: _serving(client), 60, interval=0.2, what="the cluster API serving")
        ns = unique("ns")
        client.create("namespaces", "", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": ns}})
        yield client, ns, daemon
        client.close()
    finally:
        if daemon is not None:
            daemon.cleanup()
        spaces.cleanup()


def _serving(client: Client) -> bool:
    try:
        client.list("namespaces")
        return True
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False


def test_who_am_i_is_the_local_admin(node):
    client, _, _ = node
    me = client.access.WhoAmI(api_pb2.WhoAmIRequest(), timeout=CALL)
    assert me.username == "system:admin"
    assert "system:masters" in me.groups


def test_crud_and_the_status_codes_of_refusals(node):
    client, ns, _ = node
    created = client.create("leases", ns, lease("l1", ns))
    assert created["metadata"]["uid"] and created["metadata"]["resourceVersion"]
    assert client.get("leases", ns, "l1") == created
    assert "l1" in [o["metadata"]["name"] for o in client.list("leases", ns)["items"]]

    details = refused(grpc.StatusCode.ALREADY_EXISTS, client.create, "leases", ns, lease("l1", ns))
    assert details == 'leases "l1" already exists'
    details = refused(grpc.StatusCode.NOT_FOUND, client.get, "leases", ns, "nobody")
    assert details == 'leases "nobody" not found'
    details = refused(grpc.StatusCode.NOT_FOUND, client.list, "widgets", ns)
    assert 'the server doesn\'t have a resource type "widgets"' in details and "pods" in details
    details = refused(grpc.StatusCode.NOT_FOUND, client.create, "pods", "nowhere",
                      {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "web", "namespace": "nowhere"},
                       "spec": {"containers": [{"name": "c", "image": "x:1"}]}})
    assert details == 'namespaces "nowhere" not found'

    bad = lease("l2", ns)
    bad["spec"]["leaseDurationSeconds"] = "long"
    details = refused(grpc.StatusCode.INVALID_ARGUMENT, client.create, "leases", ns, bad)
    assert details.startswith('Lease "l2" is invalid: spec.leaseDurationSeconds: ')
    refused(grpc.StatusCode.NOT_FOUND, client.get, "leases", ns, "l2")   # nothing stored
    details = refused(grpc.StatusCode.INVALID_ARGUMENT, client.create, "leases", "default",
                      lease("l3", ns))
    assert "does not match the namespace sent on the request" in details
    refused(grpc.StatusCode.INVALID_ARGUMENT, client.get, "nodes", ns, "x")
    details = refused(grpc.StatusCode.INVALID_ARGUMENT, client.list, "pods", ns,
                      field_selector="spec.image=x")
    assert "field label not supported: spec.image" in details

    newer = dict(created, spec={**created["spec"], "holderIdentity": "b"})
    newer = client.update("leases", ns, newer)
    stale = dict(created, spec={**created["spec"], "holderIdentity": "c"})
    details = refused(grpc.StatusCode.ABORTED, client.update, "leases", ns, stale)
    assert details == f'Operation cannot be fulfilled on leases "l1": {STALE}'
    refused(grpc.StatusCode.ABORTED, client.delete, "leases", ns, "l1",
            resource_version=created["metadata"]["resourceVersion"])
    client.delete("leases", ns, "l1", resource_version=newer["metadata"]["resourceVersion"])
    refused(grpc.StatusCode.NOT_FOUND, client.get, "leases", ns, "l1")


def test_a_request_over_3_mib_reaches_the_server_and_is_refused_clearly(node):
    client, ns, _ = node
    big = lease("big", ns)
    big["metadata"]["annotations"] = {"pad": "x" * (3 * 1024 * 1024 + 10)}
    details = refused(grpc.StatusCode.RESOURCE_EXHAUSTED, client.create, "leases", ns, big)
    assert details == "Request entity too large: limit is 3145728"
    refused(grpc.StatusCode.NOT_FOUND, client.get, "leases", ns, "big")


@pytest.mark.parametrize("data", [b"{", b'{"a": NaN}', b"[1]", b"\xff{}", b'{"a": 1e999}',
                                  b'{"a":' * 5000 + b"1" + b"}" * 5000,
                                  b'{"kind": "Lease", "x":' + b"[" * 900 + b"]" * 900 + b"}"])
def test_hostile_json_is_invalid_argument_never_an_internal_error(node, data):
    client, ns, _ = node
    refused(grpc.StatusCode.INVALID_ARGUMENT, client.create, "leases", ns, data)
    assert client.list("leases", ns)["kind"] == "LeaseList"    # still serving


def test_watch_streams_added_modified_deleted(node):
    client, ns, _ = node
    listing = client.list("leases", ns)
    stream = client.watch("leases", ns, resource_version=listing["metadata"]["resourceVersion"])
    try:
        created = client.create("leases", ns, lease("w", ns))
        created["spec"]["holderIdentity"] = "b"
        updated = client.update("leases", ns, created)
        gone = client.delete("leases", ns, "w")
        seen = [next_event(stream) for _ in range(3)]
        assert [(t, o["metadata"]["name"], o["metadata"]["resourceVersion"]) for t, o in seen] \
            == [(api_pb2.WATCH_EVENT_TYPE_ADDED, "w", created["metadata"]["resourceVersion"]),
                (api_pb2.WATCH_EVENT_TYPE_MODIFIED, "w", updated["metadata"]["resourceVersion"]),
                (api_pb2.WATCH_EVENT_TYPE_DELETED, "w", gone["metadata"]["resourceVersion"])]
        assert seen[1][1]["spec"]["holderIdentity"] == "b"
    finally:
        stream.cancel()
    details = refused(grpc.StatusCode.INVALID_ARGUMENT, lambda: next_event(
        client.watch("leases", ns, label_selector="a in (")))
    assert "unable to parse requirement" in details


# -- over etcd, with etcd away when podnetd starts ------------------------------------------------

def test_the_api_over_etcd_waits_for_etcd_and_then_serves():
    spaces = Netns()
    etcd = daemon = client = None
    workdir = tempfile.mkdtemp(prefix=f"{unique('ae')}-")
    try:
        ns = spaces.add("ae")
        etcd = LocalEtcd(netns=ns)          # made (certificates, ports) but not started
        daemon = Daemon(ns, "10.80.0.0/24", workdir=workdir, extra=[
            "--cluster-cidr", "10.80.0.0/16", "--node-ip", "127.0.0.1", "--store", "etcd",
            "--etcd-endpoints", etcd.url, "--etcd-cafile", etcd.ca,
            "--etcd-certfile", etcd.client_cert, "--etcd-keyfile", etcd.client_key])
        daemon.start(timeout=60)            # the node is up (CNI STATUS answers) without etcd
        client = Client(daemon.socket)
        details = refused(grpc.StatusCode.UNAVAILABLE, client.list, "namespaces")
        assert "store" in details
        refused(grpc.StatusCode.UNAVAILABLE, client.create, "namespaces", "",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
        assert daemon.proc.poll() is None, daemon.log()

        etcd.start()
        wait_for(lambda: _serving(client), 90, interval=0.5, what="the API once etcd is up")
        assert daemon.proc.poll() is None
        assert "default" in [o["metadata"]["name"] for o in client.list("namespaces")["items"]]
        created = client.create("leases", "default", lease("e1", "default"))
        # the object is in etcd, under the registry's prefix
        got = etcd.ctl("get", "/podnet/registry/leases/default/e1", "--print-value-only").stdout
        assert json.loads(got)["metadata"]["uid"] == created["metadata"]["uid"]

        # a resourceVersion etcd has compacted away: OUT_OF_RANGE, "too old"
        start = client.list("leases", "default")["metadata"]["resourceVersion"]
        for i in range(3):
            client.create("leases", "default", lease(f"c{i}", "default"))
        revision = json.loads(etcd.ctl("endpoint", "status", "-w", "json").stdout)[0][
            "Status"]["header"]["revision"]
        etcd.ctl("compact", str(revision))
        details = refused(grpc.StatusCode.OUT_OF_RANGE, lambda: next_event(
            client.watch("leases", "default", resource_version=start)))
        assert details.startswith(f"too old resource version: {start}")

        # etcd stopped under a running API: UNAVAILABLE, and back once etcd is
        etcd.stop()
        wait_for(lambda: _unavailable(client), 60, interval=0.5, what="UNAVAILABLE without etcd")
        etcd.start()
        wait_for(lambda: _serving(client), 90, interval=0.5, what="the API once etcd is back")
        assert client.get("leases", "default", "e1")["metadata"]["uid"] == \
            created["metadata"]["uid"]
        assert daemon.proc.poll() is None
    finally:
        if client is not None:
            client.close()
        if daemon is not None:
            daemon.cleanup()
        if etcd is not None:
            etcd.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        spaces.cleanup()


def _unavailable(client: Client) -> bool:
    try:
        client.get("leases", "default", "e1")
        return False
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
        return True
