"""The API's request path, the same for every caller (a remote kubectl-like client over TLS,
root on the local socket, and this node's own kubelet, scheduler and controllers in-process):
find the kind -> authorize (Node authorizer, then RBAC) -> admission -> the registry -> audit.

`Api.as_user(user)` gives an in-process client bound to one identity, so the node's own roles go
through the same authorization as everyone else (a node can only touch what the Node
authorizer lets a node touch)."""
import logging
from typing import AsyncIterator

from .. import timestamps
from . import kinds, objects, rbac
from .authn import NODE_GROUP
from .objects import ApiError, BadRequest, Forbidden, NotFound
from .rbac import Attributes
from .registry import Registry

log = logging.getLogger(__name__)



def _attrs(user, verb: str, kind, subresource: str = "", namespace: str = "", name: str = "",
           field_selector: str = "") -> Attributes:
    resource = kind.resource
    if resource == "namespaces" and name:
        namespace = name      # kube-apiserver: a request on a namespace is "in" that namespace
    return Attributes(user, verb, resource, subresource, namespace, name, kind.group,
                      field_selector)


def _meta(obj) -> dict:
    """The metadata of a request's body for routing (the registry validates it for real)."""
    if not isinstance(obj, dict):
        raise BadRequest("the request's body must be a JSON object")
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _body_namespace(kind: kinds.Kind, namespace: str, obj: dict) -> str:
    if namespace or not kind.namespaced:
        return namespace
    given = _meta(obj).get("namespace", "")
    if not isinstance(given, str):
        raise BadRequest(f"metadata.namespace: must be a string, not {type(given).__name__}")
    return given


def _path_segment(value, what: str) -> str:
    """A name or namespace from the request: kube-apiserver's rules for a path segment (the
    object's own rules are checked where it is stored). Never a key of another object."""
    if not isinstance(value, str):
        raise BadRequest(f"{what}: must be a string, not {type(value).__name__}")
    if not value:
        raise BadRequest(f"{what}: Required value")
    if len(value) > 253:
        raise BadRequest(f"{what}: may not be more than 253 characters")
    for bad, why in (("/", "may not contain '/'"), ("%", "may not contain '%'")):
        if bad in value:
            raise BadRequest(f"{what} {value[:80]!r}: {why}")
    if value in (".", ".."):
        raise BadRequest(f"{what} {value!r}: may not be '{value}'")
    if any(ord(c) < 0x20 or ord(c) == 0x7f or 0xd800 <= ord(c) <= 0xdfff for c in value):
        raise BadRequest(f"{what} {value[:80]!r}: may not contain control characters")
    return value


class Api:
    def __init__(self, registry: Registry, authorizer, audit=None):
        """authorizer: authz.Authorizer (its authorize(attrs, obj, old) -> Verdict and
        decide(attrs) -> Decision); audit: audit.AuditLog or None."""
        self.registry = registry
        self.authorizer = authorizer
        self.audit = audit

    # -- the request path ---------------------------------------------------------------

    def kind(self, resource: str) -> kinds.Kind:
        kind = kinds.BY_RESOURCE.get(resource) or kinds.lookup(resource)
        if kind is None:
            raise NotFound(f'the server doesn\'t have a resource type "{resource}" (supported: '
                           f"{kinds.supported()})")
        return kind

    def _namespace(self, kind: kinds.Kind, namespace: str, verb: str) -> str:
        if not kind.namespaced:
            if namespace:
                raise BadRequest(f"{kind.resource} is not namespaced: no namespace may be given")
            return ""
        if not namespace and verb not in ("list", "watch"):
            return "default"
        if namespace:
            _path_segment(namespace, "namespace")
        return namespace

    def _check(self, attrs: Attributes, obj: dict | None = None, old: dict | None = None) -> None:
        verdict = self.authorizer.authorize(attrs, obj, old)
        if not verdict.allowed:
            self._audit(attrs, False, "PERMISSION_DENIED", verdict.reason)
            raise Forbidden(verdict.message)

    def authorize(self, attrs: Attributes) -> None:
        """A request outside the object verbs (pods/log, pods/exec: podio.py), authorized (and
        audited when denied) as every other: raises Forbidden with kube-apiserver's message."""
        self._check(attrs)

    def record(self, attrs: Attributes, allowed: bool, code: str, reason: str = "") -> None:
        """The audit line of such a request once it is done."""
        self._audit(attrs, allowed, code, reason)

    async def _check_named(self, attrs: Attributes, obj: dict | None) -> None:
        """As _check; but a node refused a pod it names is asked again with the stored pod:
        the Node authorizer's pod -> node index is fed by a watch and may not have seen a pod
        bound a moment ago (the kubelet's first status write would be refused)."""
        verdict = self.authorizer.authorize(attrs, obj)
        if verdict.allowed:
            return
        old = None
        if attrs.resource == "pods" and attrs.name and \
                NODE_GROUP in getattr(attrs.user, "groups", ()):
            try:
                old = await self.registry.get(kinds.BY_RESOURCE["pods"], attrs.namespace,
                                              attrs.name)
            except ApiError:
                old = None
        self._check(attrs, obj, old)

    def _audit(self, attrs: Attributes, allowed: bool, code: str, reason: str = "") -> None:
        if self.audit is not None:
            self.audit.record(attrs, allowed, code, reason=reason,
                              requester=getattr(attrs.user, "requester", None))

    async def _run(self, attrs: Attributes, obj: dict | None, coro_fn):
        await self._check_named(attrs, obj)
        try:
            result = await coro_fn()
        except ApiError as e:
            self._audit(attrs, True, _code_name(e))
            raise
        self._audit(attrs, True, "OK")
        return result

    # -- verbs --------------------------------------------------------------------------

    async def create(self, user, resource: str, namespace: str, obj: dict,
                     subresource: str = "", name: str = "") -> dict:
        kind = self.kind(resource)
        namespace = self._namespace(kind, _body_namespace(kind, namespace, obj), "create")
        if subresource in ("binding", "eviction") and kind.resource == "pods":
            target = _path_segment(name or _meta(obj).get("name", ""), "name")
            req = _attrs(user, "create", kind, subresource, namespace, target)
            act = self._bind if subresource == "binding" else self._evict
            return await self._run(req, obj, lambda: act(namespace, target, obj))
        if subresource:
            raise BadRequest(f"{kind.resource}/{subresource} cannot be created")
        req = _attrs(user, "create", kind, "", namespace)
        return await self._run(req, obj, lambda: self.registry.create(kind, namespace, obj))

    async def get(self, user, resource: str, namespace: str, name: str) -> dict:
        kind = self.kind(resource)
        namespace = self._namespace(kind, namespace, "get")
        _path_segment(name, "name")
        req = _attrs(user, "get", kind, "", namespace, name)
        return await self._run(req, None, lambda: self.registry.get(kind, namespace, name))

    async def list(self, user, resource: str, namespace: str = "", label_selector: str = "",
                   field_selector: str = "") -> dict:
        kind = self.kind(resource)
        namespace = self._namespace(kind, namespace, "list")
        self._check(_attrs(user, "list", kind, "", namespace, "", field_selector))
        items, rv = await self.registry.list(kind, namespace, label_selector, field_selector)
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": rv}, "items": items}

    async def update(self, user, resource: str, namespace: str, obj: dict,
                     subresource: str = "") -> dict:
        kind = self.kind(resource)
        namespace = self._namespace(kind, _body_namespace(kind, namespace, obj), "update")
        name = _path_segment(_meta(obj).get("name", ""), "metadata.name")
        req = _attrs(user, "update", kind, subresource, namespace, name)
        return await self._run(req, obj, lambda: self.registry.update(kind, namespace, obj,
                                                                      subresource))

    async def delete(self, user, resource: str, namespace: str, name: str,
                     grace: int | None = None, precondition_rv: str = "") -> dict:
        kind = self.kind(resource)
        namespace = self._namespace(kind, namespace, "delete")
        _path_segment(name, "name")
        req = _attrs(user, "delete", kind, "", namespace, name)
        return await self._run(req, None, lambda: self.registry.delete(
            kind, namespace, name, grace, precondition_rv))

    async def watch(self, user, resource: str, namespace: str = "", label_selector: str = "",
                    field_selector: str = "", resource_version: str = ""
                    ) -> AsyncIterator[tuple[str, dict]]:
        kind = self.kind(resource)
        namespace = self._namespace(kind, namespace, "watch")
        self._check(_attrs(user, "watch", kind, "", namespace, "", field_selector))
        async for item in self.registry.watch(kind, namespace, label_selector, field_selector,
                                              resource_version):
            yield item

    def can(self, user, verb: str, resource: str, namespace: str = "",
            name: str = "") -> tuple[bool, str]:
        """`auth can-i`: the authorizers' answer for a request not made."""
        resource, subresource, group = rbac.parse_resource(resource)
        kind = kinds.lookup(resource)
        if kind is not None:
            resource, group = kind.resource, kind.group
            if not kind.namespaced:
                namespace = ""
        decision = self.authorizer.decide(Attributes(user, verb, resource, subresource,
                                                     namespace, name, group))
        return decision.allowed, decision.reason

    def as_user(self, user) -> "UserClient":
        return UserClient(self, user)

    # -- pods/binding and pods/eviction ------------------------------------------------

    async def _bind(self, namespace: str, name: str, binding: dict) -> dict:
        target = binding.get("target")
        target = target if isinstance(target, dict) else {}
        node = target.get("name")
        if binding.get("kind") != "Binding" or not isinstance(node, str) or not node \
                or target.get("kind", "Node") != "Node":
            raise BadRequest("a Binding needs target.kind Node and target.name")
        _path_segment(node, "target.name")
        pods = kinds.BY_RESOURCE["pods"]
        refused = f'Operation cannot be fulfilled on pods/binding "{name}": '

        def bind(pod: dict) -> dict:
            spec = pod["spec"]
            if spec.get("nodeName"):
                raise objects.Conflict(f"{refused}pod {name} is already assigned to node "
                                       f'"{spec["nodeName"]}"')
            if pod["metadata"].get("deletionTimestamp"):
                raise objects.Conflict(f"{refused}pod {name} is being deleted, cannot be "
                                       "assigned to a host")
            spec["nodeName"] = node
            status = pod.setdefault("status", {})
            conditions = [c for c in status.get("conditions") or []
                          if c.get("type") != "PodScheduled"]
            conditions.append({"type": "PodScheduled", "status": "True",
                               "lastTransitionTime": timestamps.rfc3339()})
            status["conditions"] = conditions
            return pod
        await self.registry.mutate(pods, namespace, name, bind)
        return {"apiVersion": "v1", "kind": "Status", "status": "Success"}

    async def _evict(self, namespace: str, name: str, eviction: dict) -> dict:
        if eviction.get("kind") != "Eviction":
            raise BadRequest(f"pods/eviction takes an Eviction (policy/v1), not "
                             f"{str(eviction.get('kind'))[:80]!r}")
        opts = eviction.get("deleteOptions") or {}
        if not isinstance(opts, dict):
            raise BadRequest("deleteOptions must be an object")
        grace = opts.get("gracePeriodSeconds")
        if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int)):
            raise BadRequest("deleteOptions.gracePeriodSeconds must be an integer")
        await self.registry.delete(kinds.BY_RESOURCE["pods"], namespace, name, grace)
        return {"apiVersion": "v1", "kind": "Status", "status": "Success"}


def _code_name(e: ApiError) -> str:
    from .service import CODES
    return CODES.get(type(e), "INTERNAL")


class UserClient:
    """The API as one user sees it, in-process (no gRPC): the node's kubelet, the scheduler
    and the controllers call it."""

    def __init__(self, api: Api, user):
        self.api, self.user = api, user

    async def create(self, resource, namespace, obj, subresource="", name=""):
        return await self.api.create(self.user, resource, namespace, obj, subresource, name)

    async def get(self, resource, namespace, name):
        return await self.api.get(self.user, resource, namespace, name)

    async def list(self, resource, namespace="", label_selector="", field_selector=""):
        return await self.api.list(self.user, resource, namespace, label_selector,
                                   field_selector)

    async def update(self, resource, namespace, obj, subresource=""):
        return await self.api.update(self.user, resource, namespace, obj, subresource)

    async def delete(self, resource, namespace, name, grace=None, precondition_rv=""):
        return await self.api.delete(self.user, resource, namespace, name, grace,
                                     precondition_rv)

    def watch(self, resource, namespace="", label_selector="", field_selector="",
              resource_version=""):
        return self.api.watch(self.user, resource, namespace, label_selector, field_selector,
                              resource_version)
