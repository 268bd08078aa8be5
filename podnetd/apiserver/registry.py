"""The generic object machinery over the store of record: create, get, list, update (and the
status subresource), delete (graceful for pods, finalizers for every kind) and watch, for any
kind of kinds.py. Authentication and authorization happen above (api.py); this layer keeps the
rules every object obeys: validation with field paths before anything is stored, server-owned
metadata, resourceVersion = the store's revision, optimistic concurrency."""
import asyncio
import contextlib
import copy
import json
import logging
import re
import time
from typing import AsyncIterator

from .. import timestamps
from . import objects, selectors
from .kinds import Kind
from .objects import ApiError, BadRequest, Forbidden, Gone, Invalid, NotFound, Unavailable
from .storage import base as st
from .storage.keys import InvalidKey
from . import validation as v
from .validation import Errors

log = logging.getLogger(__name__)

CAS_RETRIES = 16
BOOKMARK_EVERY = 30.0


def _stored(key: str, value: bytes, revision: int) -> dict:
    """A stored object with its resourceVersion. The store is shared (etcd: anyone holding a
    client certificate may write): a value that is not an object of ours raises Corrupt."""
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        raise objects.Corrupt(f"the stored object at {key[:200]} is not a Kubernetes object "
                              "(written by something else?); delete it to repair")
    obj["metadata"]["resourceVersion"] = str(revision)
    return obj


def _with_rv(kv: st.KeyValue) -> dict:
    return _stored(kv.key, kv.value, kv.mod_revision)


def _readable(kvs) -> list[dict]:
    """The objects of a listing; corrupt ones are left out (logged), never fail the list."""
    out = []
    for kv in kvs:
        try:
            out.append(_with_rv(kv))
        except objects.Corrupt as e:
            log.warning("%s", e)
    return out


MAX_REVISION = 2**63 - 1   # etcd's revisions are int64


def _parse_rv(text: str, what="resourceVersion") -> int | None:
    if text in (None, ""):
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    # ASCII digits only: str.isdigit() takes "²" and "١", which int() then refuses or reads
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,19}", text) \
            or int(text) > MAX_REVISION:
        raise BadRequest(f"{what} {str(text)[:40]!r} is not a resource version of this server")
    return int(text)


class Registry:
    def __init__(self, store: st.ObjectStore, available: bool = False):
        self.store = store
        self.available = available   # set once the store has been reached (component.py)
        # name -> Namespace, kept by an informer (access.py) once the API serves; None: none
        self.namespace_cache: dict | None = None

    # -- reads --------------------------------------------------------------------------

    async def get(self, kind: Kind, namespace: str, name: str) -> dict:
        try:
            return _with_rv(await self._call(self.store.get(kind.key(namespace, name))))
        except st.KeyNotFound:
            raise objects.not_found(kind, name) from None

    async def list(self, kind: Kind, namespace: str = "", label_selector: str = "",
                   field_selector: str = "") -> tuple[list[dict], str]:
        labels, fields = self._selectors(kind, label_selector, field_selector)
        kvs, revision = await self._call(self.store.list(kind.prefix(namespace)))
        items = [o for o in _readable(kvs)
                 if labels.matches(o["metadata"].get("labels")) and fields.matches(o)]
        return items, str(revision)

    def _selectors(self, kind: Kind, label_selector: str, field_selector: str):
        try:
            return (selectors.parse(label_selector),
                    selectors.parse_fields(field_selector, kind.field_selectors))
        except selectors.SelectorError as e:
            raise BadRequest(f"unable to parse requirement: {e}") from None

    # -- create -------------------------------------------------------------------------

    async def create(self, kind: Kind, namespace: str, obj: dict,
                     validate_namespace=True) -> dict:
        meta = self._client_metadata(kind, obj)
        namespace = self._namespace_of(kind, namespace, meta)
        obj = copy.deepcopy(obj)
        obj["metadata"] = objects.new_metadata(kind, meta, namespace)
        obj.pop("status", None) if kind.status_subresource else None
        name = obj["metadata"].get("name", "")
        kind.default(obj)     # as kube-apiserver: defaults first, then validation
        self._validate(kind, obj, name)
        kind.prepare_create(obj)
        if validate_namespace and kind.namespaced:
            await self._namespace_accepts(namespace)
        data = objects.encode(obj)
        if len(data) > objects.MAX_OBJECT_BYTES:
            raise objects.TooLarge(f"{kind.kind} {name!r}: {len(data)} bytes is more than the "
                                   f"{objects.MAX_OBJECT_BYTES} an object may have")
        try:
            revision = await self._call(self.store.create(kind.key(namespace, name), data))
        except st.KeyExists:
            raise objects.AlreadyExists(f'{kind.resource} "{name}" already exists') from None
        obj["metadata"]["resourceVersion"] = str(revision)
        return obj

    @staticmethod
    def _client_metadata(kind: Kind, obj: dict) -> dict:
        """The body's metadata, its shape checked before anything is copied out of it: fields
        this server does not know are refused (as strict field validation), not dropped."""
        if not isinstance(obj, dict):
            raise BadRequest(f"{kind.kind}: the object must be a JSON object")
        objects.check_depth(obj, kind.kind)
        objects.check_kind(obj, kind)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise Invalid(f"{kind.kind} is invalid: metadata: Required value")
        name = meta.get("name") or meta.get("generateName") or ""
        e = Errors()
        v.only(e, meta, "metadata", objects.CLIENT_FIELDS | objects.SERVER_FIELDS)
        if e:
            raise objects.invalid(kind, name if isinstance(name, str) else "", e)
        return meta

    def _namespace_of(self, kind: Kind, namespace: str, meta: dict) -> str:
        if not kind.namespaced:
            return ""   # a namespace in the body of a cluster-scoped object is dropped
        given = meta.get("namespace")
        if given and namespace and given != namespace:
            raise BadRequest("the namespace of the provided object does not match the "
                             "namespace sent on the request")
        return namespace or given or "default"

    def _validate(self, kind: Kind, obj: dict, name: str) -> None:
        e = Errors()
        objects.validate_metadata(e, kind, obj["metadata"])
        if not e:
            kind.validate(obj, e)
        if e:
            raise objects.invalid(kind, name, e)

    async def _namespace_accepts(self, namespace: str) -> None:
        """NamespaceLifecycle: the namespace exists and is not being deleted. Read from the
        namespaces' informer cache when it has the namespace (a create costs no extra read of
        the store); a namespace the cache does not hold yet is read from the store."""
        ns = self.namespace_cache.get(namespace) if self.namespace_cache is not None else None
        if ns is None:
            try:
                ns = json.loads((await self._call(
                    self.store.get(f"/namespaces/{namespace}"))).value)
            except st.KeyNotFound:
                raise NotFound(f'namespaces "{namespace}" not found') from None
        if ns.get("metadata", {}).get("deletionTimestamp"):
            raise Forbidden(f"unable to create new content in namespace {namespace} because it "
                            "is being terminated")

    # -- update -------------------------------------------------------------------------

    async def update(self, kind: Kind, namespace: str, obj: dict, subresource: str = "") -> dict:
        """Replace the object (or only its status), refused with Conflict when
        metadata.resourceVersion is given and stale."""
        meta = self._client_metadata(kind, obj)
        if not meta.get("name") or not isinstance(meta["name"], str):
            raise Invalid(f"{kind.kind} is invalid: metadata.name: Required value")
        namespace = self._namespace_of(kind, namespace, meta)
        name = meta["name"]
        expected = _parse_rv(meta.get("resourceVersion"))
        if subresource not in ("", "status"):
            raise BadRequest(f"{kind.resource}/{subresource}: not updatable")
        if subresource == "status" and not kind.status_subresource:
            raise NotFound(f"{kind.resource} has no status subresource")

        def change(current: dict) -> dict:
            return self._merge_update(kind, current, obj, subresource)
        return await self.mutate(kind, namespace, name, change, expected)

    def _merge_update(self, kind: Kind, current: dict, new: dict, subresource: str) -> dict:
        cur_meta, new_meta = current["metadata"], new["metadata"]
        if subresource == "status":
            out = copy.deepcopy(current)
            out["status"] = copy.deepcopy(new.get("status") or {})
            return out
        out = copy.deepcopy(new)
        meta = {k: new_meta[k] for k in objects.CLIENT_FIELDS if k in new_meta}
        if cur_meta.get("deletionTimestamp") and isinstance(meta.get("finalizers"), list):
            added = [f for f in meta["finalizers"] if f not in (cur_meta.get("finalizers") or [])]
            if added:
                raise Invalid(f'{kind.kind} "{cur_meta["name"]}" is invalid: metadata.finalizers: '
                              "Forbidden: no new finalizers can be added if the object is being "
                              f"deleted, found new finalizers {v.show(added)}")
        for k in ("uid", "creationTimestamp", "generation", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generateName"):
            if k in cur_meta:
                meta[k] = cur_meta[k]
        meta.pop("namespace", None)
        if kind.namespaced:
            meta["namespace"] = cur_meta.get("namespace", "")
        out["metadata"] = meta
        if kind.status_subresource:
            out.pop("status", None)
            if "status" in current:
                out["status"] = copy.deepcopy(current["status"])
        # the defaults the server filled in at creation, filled in the same way here: replacing
        # an object with the manifest it was created from changes nothing
        kind.default(out)
        for field in kind.immutable_top:
            if out.get(field) != current.get(field):
                raise Invalid(f'{kind.kind} "{cur_meta["name"]}" is invalid: {field}: Invalid '
                              f"value: {v.show(out.get(field))}: cannot change {field}")
        if out.get("spec") != current.get("spec"):
            meta["generation"] = int(cur_meta.get("generation", 1)) + 1
            for field in kind.immutable_spec:
                if (out.get("spec") or {}).get(field) != (current.get("spec") or {}).get(field):
                    raise Invalid(f'{kind.kind} "{cur_meta["name"]}" is invalid: spec.{field}: '
                                  "Forbidden: field is immutable")
            if kind.resource == "pods" and (out.get("spec") or {}).get("nodeName") != \
                    (current.get("spec") or {}).get("nodeName"):
                raise Invalid(f'Pod "{cur_meta["name"]}" is invalid: spec.nodeName: Forbidden: '
                              "set by binding (pods/binding), not by update")
        return out

    async def mutate(self, kind: Kind, namespace: str, name: str, change,
                     expected_revision: int | None = None) -> dict:
        """Read, change(current) -> new, write back if nobody wrote meanwhile (retried when
        the caller gave no resourceVersion of its own)."""
        key = kind.key(namespace, name)
        # The first try may start from the watch cache's copy (kube-apiserver's GuaranteedUpdate
        # does the same): the write is guarded by its revision, so a stale copy costs a retry
        # from the store, never a lost update. Whatever would answer the client without a
        # write (a conflict with the caller's resourceVersion, no change) is read again.
        guess = self.store.peek(key)
        if guess is not None and expected_revision is not None \
                and guess.mod_revision != expected_revision:
            guess = None
        for _ in range(CAS_RETRIES):
            kv, guess = guess, None
            if kv is None:
                try:
                    kv = await self._call(self.store.get(key))
                except st.KeyNotFound:
                    raise objects.not_found(kind, name) from None
                cached = False
            else:
                cached = True
            if expected_revision is not None and kv.mod_revision != expected_revision:
                raise objects.conflict(kind, name)
            try:
                current = _with_rv(kv)
            except objects.Corrupt:
                if cached:
                    continue
                raise
            try:
                new = change(copy.deepcopy(current))
                if new is not None:
                    new["metadata"].pop("resourceVersion", None)
                    current["metadata"].pop("resourceVersion", None)
                    if new != current:
                        self._validate(kind, new, name)
            except ApiError:
                if cached:       # judged against a copy that may be stale: read, judge again
                    continue
                raise
            if new is None or new == current:
                if cached:
                    continue
                if new is None:
                    return current
                current["metadata"]["resourceVersion"] = str(kv.mod_revision)
                return current
            meta = new["metadata"]
            if meta.get("deletionTimestamp") and not meta.get("finalizers") \
                    and not (kind.graceful_delete and meta.get("deletionGracePeriodSeconds")):
                # the last finalizer went: the deletion the object waited for happens now
                deleted = await self._delete_key(kind, key, name, kv.mod_revision)
                if deleted is not None:
                    return deleted
                continue
            data = objects.encode(new)
            if len(data) > objects.MAX_OBJECT_BYTES:
                raise objects.TooLarge(f"{kind.kind} {name!r}: larger than "
                                       f"{objects.MAX_OBJECT_BYTES} bytes")
            try:
                revision = await self._call(self.store.update(key, data, kv.mod_revision))
            except st.Conflict:
                if expected_revision is not None:
                    raise objects.conflict(kind, name) from None
                continue
            except st.KeyNotFound:
                raise objects.not_found(kind, name) from None
            new["metadata"]["resourceVersion"] = str(revision)
            return new
        raise objects.conflict(kind, name)

    # -- delete -------------------------------------------------------------------------

    async def delete(self, kind: Kind, namespace: str, name: str, grace: int | None = None,
                     precondition_rv: str = "") -> dict:
        """Kubernetes' deletion: an object with finalizers, or a pod still bound to a node
        with a grace period, gets deletionTimestamp (+ deletionGracePeriodSeconds) and stays
        until its finalizers are gone / its kubelet deletes it with grace 0; others go now."""
        key = kind.key(namespace, name)
        expected = _parse_rv(precondition_rv)
        for _ in range(CAS_RETRIES):
            try:
                kv = await self._call(self.store.get(key))
            except st.KeyNotFound:
                raise objects.not_found(kind, name) from None
            if expected is not None and kv.mod_revision != expected:
                raise objects.conflict(kind, name)
            try:
                obj = _with_rv(kv)
            except objects.Corrupt:
                # not an object of ours: deleting it is the repair (no grace, no finalizers)
                return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {
                    "name": name, "namespace": namespace,
                    "resourceVersion": str((await self._call(
                        self.store.delete(key, kv.mod_revision))).mod_revision)}}
            meta = obj["metadata"]
            if name in kind.undeletable:
                raise Forbidden(f'{kind.resource} "{name}" is forbidden: this {kind.kind.lower()} '
                                "may not be deleted")
            seconds = kind.graceful_delete(obj, grace) if kind.graceful_delete else 0
            if meta.get("deletionTimestamp"):
                # already terminating: only a shorter grace period changes anything
                held = int(meta.get("deletionGracePeriodSeconds") or 0)
                if seconds >= held and not (seconds == 0 and held == 0 and not
                                            meta.get("finalizers")):
                    return obj
            if not meta.get("finalizers") and seconds == 0:
                deleted = await self._delete_key(kind, key, name, kv.mod_revision)
                if deleted is not None:
                    return deleted
                continue
            meta.pop("resourceVersion")
            meta["deletionTimestamp"] = timestamps.rfc3339(time.time() + seconds)
            meta["deletionGracePeriodSeconds"] = seconds
            kind.terminating(obj)
            try:
                revision = await self._call(self.store.update(key, objects.encode(obj),
                                                              kv.mod_revision))
            except st.Conflict:
                continue
            meta["resourceVersion"] = str(revision)
            return obj
        raise objects.conflict(kind, name)

    async def _delete_key(self, kind: Kind, key: str, name: str, revision: int) -> dict | None:
        try:
            kv = await self._call(self.store.delete(key, revision))
        except st.Conflict:
            return None
        except st.KeyNotFound:
            raise objects.not_found(kind, name) from None
        return _with_rv(kv)

    # -- watch --------------------------------------------------------------------------

    async def watch(self, kind: Kind, namespace: str = "", label_selector: str = "",
                    field_selector: str = "", resource_version: str = ""
                    ) -> AsyncIterator[tuple[str, dict]]:
        """("ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK", object) for every change after
        resource_version; "" or "0" starts with the current objects as ADDED. An object that
        stops matching the selectors is reported DELETED, one that starts matching ADDED.

        Whether the client holds an object (so whether a change is ADDED, MODIFIED, DELETED or
        nothing) is known from the listing at revision R made here, and from the events: a
        DELETE carries the object as it was, a PUT that created the key had nothing before.
        Only the first change of a key in (resource_version, R] that is neither has an unknown
        past; it is reported as the client may have held it (a DELETED for an object the
        client does not hold is harmless, a missed one is not)."""
        labels, fields = self._selectors(kind, label_selector, field_selector)

        def matches(o: dict) -> bool:
            return labels.matches(o["metadata"].get("labels")) and fields.matches(o)
        everything = labels.empty() and not fields.requirements
        after = _parse_rv(resource_version, "resourceVersion")
        kvs, listed = await self._call(self.store.list(kind.prefix(namespace)))
        listed_objects: dict[str, dict] = {}
        for kv in kvs:
            try:
                listed_objects[kv.key] = _with_rv(kv)
            except objects.Corrupt as e:
                log.warning("watch %s: %s", kind.resource, e)
        held = {key: matches(o) for key, o in listed_objects.items()}   # at revision `listed`
        if not after:
            after = listed
            for key, obj in listed_objects.items():
                if held[key]:
                    yield "ADDED", obj
        known: set[str] = set()      # keys whose state since `after` the events have told
        stream = self.store.watch(kind.prefix(namespace), after)
        last = after
        # The next event is awaited in a task of its own that a quiet period does not cancel
        # (cancelling __anext__ would end the store's watch generator): asyncio.wait only
        # stops waiting, and a BOOKMARK tells the client the revision it has reached.
        pending: asyncio.Task | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(stream.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=BOOKMARK_EVERY)
                if not done:
                    yield "BOOKMARK", {"kind": kind.kind, "apiVersion": kind.api_version,
                                       "metadata": {"resourceVersion": str(last)}}
                    continue
                task, pending = pending, None
                try:
                    event = task.result()
                except StopAsyncIteration:
                    return
                except st.TooOld:
                    raise Gone(f"too old resource version: {after}") from None
                except st.StoreUnavailable as e:
                    raise Unavailable(f"watch {kind.resource}: store unavailable: {e}") from None
                last = event.revision
                try:
                    obj = _stored(event.key, event.value, event.revision)
                except objects.Corrupt as e:
                    log.warning("watch %s: %s", kind.resource, e)
                    continue
                now = event.type != "DELETE" and matches(obj)
                if event.type == "DELETE":
                    before = matches(obj)
                elif event.created:
                    before = False
                elif event.key in known or event.revision > listed:
                    before = held.get(event.key, False)
                elif everything:
                    before = True         # it existed, and everything matches
                else:
                    before = None         # changed before the listing: the past is unknown
                held[event.key] = now
                known.add(event.key)
                if now:
                    yield ("ADDED" if before is False else "MODIFIED"), obj
                elif before is not False:
                    yield "DELETED", obj
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await stream.aclose()

    # -- the store's failures -----------------------------------------------------------

    async def _call(self, coro):
        if not self.available:
            coro.close()
            raise Unavailable("the cluster API is starting: its store has not been reached yet")
        try:
            return await coro
        except st.StoreUnavailable as e:
            raise Unavailable(f"the store of record is unavailable: {e}") from None
        except InvalidKey as e:   # api.py checks names first; this is the last line
            raise BadRequest(f"not a name of this server: {e}") from None


__all__ = ["Registry", "ApiError"]
