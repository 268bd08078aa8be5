"""get -w: a watch that survives its stream being cut.

A cut stream (UNAVAILABLE, a server going away, the server closing it) is resumed from the last
resourceVersion seen, on the cluster's next server, so no change is missed or repeated; a
resourceVersion the store no longer has (OUT_OF_RANGE, "too old") is answered by listing again
and reporting what changed meanwhile, as client-go's reflector does.
"""
import time
from typing import Callable

import grpc

from ..api.podnet.api.v1 import api_pb2
from .apiclient import ApiClient, ApiError, decode, rpc_error

TYPES = {api_pb2.WATCH_EVENT_TYPE_ADDED: "ADDED", api_pb2.WATCH_EVENT_TYPE_MODIFIED: "MODIFIED",
         api_pb2.WATCH_EVENT_TYPE_DELETED: "DELETED"}
# Codes after which the same watch can go on: the connection or the server went away.
RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
GIVE_UP_AFTER = 120.0       # seconds without any server answering


def _key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


def _rv(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class Watcher:
    def __init__(self, client: ApiClient, resource: str, namespace: str = "",
                 label_selector: str = "", field_selector: str = "",
                 emit: Callable[[str, dict], None] = lambda t, o: None,
                 sleep: Callable[[float], None] = time.sleep):
        self.client, self.resource, self.namespace = client, resource, namespace
        self.label_selector, self.field_selector = label_selector, field_selector
        self.emit, self.sleep = emit, sleep
        self.known: dict[tuple[str, str], str] = {}   # object -> resourceVersion
        self.resource_version = ""

    def seed(self, items: list[dict], resource_version: str) -> None:
        """What the first list showed (already printed)."""
        self.known = {_key(o): _rv(o) for o in items}
        self.resource_version = resource_version

    def relist(self) -> None:
        listed = self.client.list(self.resource, self.namespace, self.label_selector,
                                  self.field_selector)
        items = listed.get("items") or []
        now = {_key(o): o for o in items}
        for key, obj in now.items():
            if key not in self.known:
                self.emit("ADDED", obj)
            elif self.known[key] != _rv(obj):
                self.emit("MODIFIED", obj)
        for key in self.known.keys() - now.keys():
            ns, name = key
            self.emit("DELETED", {"metadata": {"namespace": ns, "name": name}})
        self.seed(items, str((listed.get("metadata") or {}).get("resourceVersion", "")))

    def _deliver(self, answer) -> None:
        obj = decode(answer.object)
        if _rv(obj):
            self.resource_version = _rv(obj)
        if answer.type == api_pb2.WATCH_EVENT_TYPE_BOOKMARK:
            return
        kind = TYPES.get(answer.type)
        if kind is None:
            return
        if kind == "DELETED":
            self.known.pop(_key(obj), None)
        else:
            self.known[_key(obj)] = _rv(obj)
        self.emit(kind, obj)

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Watch until `until()` says stop (checked after each event) or an error that no
        resumption fixes."""
        backoff, failing_since = 0.2, None
        while True:
            request = api_pb2.WatchObjectsRequest(
                resource=self.resource, namespace=self.namespace,
                label_selector=self.label_selector, field_selector=self.field_selector,
                resource_version=self.resource_version)
            try:
                stream = self.client.stream("ObjectService", "WatchObjects", request)
                got = False
                for answer in stream:
                    backoff, failing_since, got = 0.2, None, True
                    self._deliver(answer)
                    if until():
                        stream.cancel()
                        return
                if not got:                   # ended at once: do not spin on such a server
                    self.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                continue                      # the server ended the stream: resume
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    self.relist()
                    continue
                if e.code() not in RESUMABLE:
                    raise rpc_error(e, self.client.server) from None
                error = rpc_error(e, self.client.server)
            except ApiError as e:             # no server of the cluster connects
                if e.code != grpc.StatusCode.UNAVAILABLE:
                    raise
                error = e
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > GIVE_UP_AFTER:
                raise error
            self.client.next_server()
            self.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
