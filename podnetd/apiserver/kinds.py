"""The kinds the cluster API stores. A kind is data: its names, scope, the fields a field
selector may use, a validation of spec (and status) with field paths, and optional hooks; the
generic machinery (registry.py) does the rest, so adding a kind is one `Kind(...)` entry here
(or in a module of its own, registered in KINDS).

Metadata (name, namespace, labels, annotations, uid, resourceVersion, generation, timestamps,
finalizers, ownerReferences) is validated for every kind by objects.py, not here.
"""
import dataclasses
from typing import Callable

from ..runtime import manifest
from . import pod_kind, rbac
from . import validation as v
from .validation import Errors

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclasses.dataclass(frozen=True)
class Kind:
    kind: str
    resource: str                       # plural, lower-case: what RBAC rules and keys use
    namespaced: bool
    api_version: str = "v1"
    short_names: tuple[str, ...] = ()
    # validate(obj, errors): spec (and, for kinds without a status subresource, status)
    validate: Callable[[dict, Errors], None] = lambda obj, e: None
    # the status subresource: updates of the object keep the stored status, and updates of
    # .../status keep everything else
    status_subresource: bool = False
    field_selectors: frozenset[str] = frozenset({"metadata.name", "metadata.namespace"})
    # default(obj): the defaults the server fills in (e.g. a Pod's restartPolicy), on create
    # and on update alike, before validation (so: idempotent, and leaving anything of the
    # wrong shape to the validation that follows)
    default: Callable[[dict], None] = lambda obj: None
    # prepare_create(obj): what only a new object gets (its first status, finalizers)
    prepare_create: Callable[[dict], None] = lambda obj: None
    # terminating(obj): the object has just been marked for deletion (deletionTimestamp set)
    terminating: Callable[[dict], None] = lambda obj: None
    # names that may never be deleted (the system namespaces)
    undeletable: frozenset[str] = frozenset()
    # graceful_delete(obj, requested grace or None) -> seconds to wait (0: delete now), for
    # kinds whose deletion is a process (Pods: the kubelet stops them first)
    graceful_delete: Callable[[dict, int | None], int] | None = None
    # fields of spec that may not change after creation (paths under spec)
    immutable_spec: tuple[str, ...] = ()
    # top-level fields that may not change after creation (a binding's roleRef, as Kubernetes)
    immutable_top: tuple[str, ...] = ()
    # metadata.name: "label" (DNS label, 63), "subdomain" (DNS subdomain, 253) or "path" (any
    # path segment: RBAC names such as system:kube-scheduler)
    name_rule: str = "subdomain"

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def key(self, namespace: str, name: str) -> str:
        if self.namespaced:
            return f"/{self.resource}/{namespace}/{name}"
        return f"/{self.resource}/{name}"

    def prefix(self, namespace: str = "") -> str:
        if self.namespaced and namespace:
            return f"/{self.resource}/{namespace}/"
        return f"/{self.resource}/"


# -- Namespace ---------------------------------------------------------------------------------

def _validate_namespace(obj: dict, e: Errors) -> None:
    spec = v.mapping(e, obj, "spec", "")
    v.only(e, spec, "spec", {"finalizers"})
    status = v.mapping(e, obj, "status", "")
    v.only(e, status, "status", {"phase", "conditions"})
    v.enum(e, status, "phase", "status", ("Active", "Terminating"))


NAMESPACE_FINALIZER = "kubernetes.io/namespace-content"


def _namespace_defaults(obj: dict) -> None:
    """A new namespace is Active, and held by the namespace controller's finalizer: deleting it
    makes it Terminating until the controller has deleted what is in it and lets go."""
    obj["status"] = {"phase": "Active"}
    meta = obj["metadata"]
    meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    finalizers = meta.setdefault("finalizers", [])
    if NAMESPACE_FINALIZER not in finalizers:
        finalizers.append(NAMESPACE_FINALIZER)


def _namespace_terminating(obj: dict) -> None:
    obj.setdefault("status", {})["phase"] = "Terminating"


# -- Node --------------------------------------------------------------------------------------

def validate_taints(e: Errors, spec: dict, path: str) -> None:
    seen = set()
    for i, taint in enumerate(v.sequence(e, spec, "taints", path, 100)):
        where = f"{path}.taints[{i}]"
        if not isinstance(taint, dict):
            e.add(where, "Invalid value: must be an object")
            continue
        v.only(e, taint, where, {"key", "value", "effect", "timeAdded"})
        key = v.string(e, taint, "key", where, required=True, maxlen=316)
        if key is not None and manifest.key_problem(key):
            e.add(f"{where}.key", f"Invalid value: {v.show(key)}: {manifest.key_problem(key)}")
        v.string(e, taint, "value", where, maxlen=63)
        effect = v.enum(e, taint, "effect", where, TAINT_EFFECTS, required=True)
        v.timestamp(e, taint, "timeAdded", where)
        if (key, effect) in seen:
            e.add(where, f"Duplicate value: {v.show(key)} with effect {v.show(effect)}")
        seen.add((key, effect))


def _validate_node(obj: dict, e: Errors) -> None:
    spec = v.mapping(e, obj, "spec", "")
    v.only(e, spec, "spec", {"podCIDR", "podCIDRs", "unschedulable", "taints", "providerID"})
    v.string(e, spec, "podCIDR", "spec", maxlen=64)
    if "unschedulable" in spec and not isinstance(spec["unschedulable"], bool):
        e.add("spec.unschedulable", f"Invalid value: {v.show(spec['unschedulable'])}: must be "
                                    "a boolean")
    validate_taints(e, spec, "spec")
    _validate_node_status(obj, e)


def _validate_node_status(obj: dict, e: Errors) -> None:
    status = v.mapping(e, obj, "status", "")
    v.only(e, status, "status", {"capacity", "allocatable", "conditions", "addresses",
                                 "nodeInfo", "daemonEndpoints", "images", "phase"})
    for field in ("capacity", "allocatable"):
        for name, value in v.mapping(e, status, field, "status").items():
            v.quantity(e, value, f"status.{field}.{name}")
    for i, c in enumerate(v.sequence(e, status, "conditions", "status", 32)):
        where = f"status.conditions[{i}]"
        if not isinstance(c, dict):
            e.add(where, "Invalid value: must be an object")
            continue
        v.string(e, c, "type", where, required=True, maxlen=316)
        v.enum(e, c, "status", where, ("True", "False", "Unknown"), required=True)
        for t in ("lastHeartbeatTime", "lastTransitionTime"):
            v.timestamp(e, c, t, where)
    for i, a in enumerate(v.sequence(e, status, "addresses", "status", 32)):
        if not isinstance(a, dict):
            e.add(f"status.addresses[{i}]", "Invalid value: must be an object")
            continue
        v.enum(e, a, "type", f"status.addresses[{i}]",
               ("InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"), True)
        v.string(e, a, "address", f"status.addresses[{i}]", required=True, maxlen=253)
    for i, img in enumerate(v.sequence(e, status, "images", "status", 100)):
        where = f"status.images[{i}]"
        if not isinstance(img, dict):
            e.add(where, "Invalid value: must be an object")
            continue
        v.only(e, img, where, {"names", "sizeBytes"})
        v.integer(e, img, "sizeBytes", where, 0, 2**63 - 1)
        for j, name in enumerate(v.sequence(e, img, "names", where, 32)):
            if not isinstance(name, str) or not name or len(name) > 1024:
                e.add(f"{where}.names[{j}]", "Invalid value: must be a non-empty string of at "
                      "most 1024 characters")


# -- Lease (coordination.k8s.io/v1) ------------------------------------------------------------

def _validate_lease(obj: dict, e: Errors) -> None:
    spec = v.mapping(e, obj, "spec", "")
    v.only(e, spec, "spec", {"holderIdentity", "leaseDurationSeconds", "acquireTime",
                             "renewTime", "leaseTransitions"})
    v.string(e, spec, "holderIdentity", "spec", maxlen=253)
    v.integer(e, spec, "leaseDurationSeconds", "spec", 1, 86400 * 365)
    v.integer(e, spec, "leaseTransitions", "spec", 0, 2**31 - 1)
    for t in ("acquireTime", "renewTime"):
        v.string(e, spec, t, "spec", pattern=v.RFC3339)


# -- Event -------------------------------------------------------------------------------------

def _validate_event(obj: dict, e: Errors) -> None:
    v.only(e, obj, "", {"apiVersion", "kind", "metadata", "involvedObject", "reason",
                        "message", "source", "firstTimestamp", "lastTimestamp", "count", "type",
                        "eventTime", "reportingComponent", "reportingInstance", "action"})
    involved = v.mapping(e, obj, "involvedObject", "")
    if not involved:
        e.required("involvedObject")
    for key in ("kind", "name", "namespace", "uid", "apiVersion", "fieldPath",
                "resourceVersion"):
        v.string(e, involved, key, "involvedObject", maxlen=1024)
    v.string(e, obj, "reason", "", maxlen=128)
    v.string(e, obj, "message", "", maxlen=4096)
    v.enum(e, obj, "type", "", ("Normal", "Warning"))
    v.integer(e, obj, "count", "", 0, 2**31 - 1)


# -- RBAC (rbac.authorization.k8s.io/v1): rbac.py's validators ----------------------------------

def _rbac(kind: str):
    def validate(obj: dict, e: Errors) -> None:
        for problem in rbac.VALIDATORS[kind](obj):
            path, _, why = problem.partition(": ")
            e.add(path, why)
    return validate


def _binding_defaults(obj: dict) -> None:
    rbac.default_binding(obj)


def _pod_graceful(obj: dict, requested: int | None) -> int:
    """Kubernetes' pod deletion: a pod bound to a node is stopped by that node's kubelet
    first (grace period: the request's, else the pod's terminationGracePeriodSeconds, 30);
    a pod never bound is removed at once."""
    if not (obj.get("spec") or {}).get("nodeName"):
        return 0
    if requested is not None:
        return max(0, requested)
    grace = (obj.get("spec") or {}).get("terminationGracePeriodSeconds")
    return 30 if grace is None else int(grace)


RBAC = f"{rbac.GROUP}/v1"

KINDS: tuple[Kind, ...] = (
    Kind("Namespace", "namespaces", False, short_names=("ns",), validate=_validate_namespace,
         name_rule="label",
         status_subresource=True, prepare_create=_namespace_defaults,
         terminating=_namespace_terminating,
         undeletable=frozenset({"default", "kube-system", "kube-public"}),
         field_selectors=frozenset({"metadata.name", "status.phase"})),
    Kind("Node", "nodes", False, short_names=("no",), validate=_validate_node,
         status_subresource=True,
         field_selectors=frozenset({"metadata.name", "spec.unschedulable"})),
    Kind("Pod", "pods", True, short_names=("po",), validate=pod_kind.validate, name_rule="label",
         status_subresource=True, default=pod_kind.default_spec,
         prepare_create=pod_kind.initial_status,
         graceful_delete=_pod_graceful, immutable_spec=pod_kind.IMMUTABLE_SPEC,
         field_selectors=frozenset({"metadata.name", "metadata.namespace", "spec.nodeName",
                                    "spec.restartPolicy", "spec.schedulerName",
                                    "status.phase", "status.podIP"})),
    Kind("Event", "events", True, short_names=("ev",), validate=_validate_event,
         field_selectors=frozenset({"metadata.name", "metadata.namespace", "involvedObject.kind",
                                    "involvedObject.name", "involvedObject.namespace",
                                    "involvedObject.uid", "reason", "type"})),
    Kind("Lease", "leases", True, api_version="coordination.k8s.io/v1",
         validate=_validate_lease),
    Kind("Role", "roles", True, api_version=RBAC, validate=_rbac("Role"), name_rule="path"),
    Kind("ClusterRole", "clusterroles", False, api_version=RBAC, validate=_rbac("ClusterRole"),
         name_rule="path"),
    Kind("RoleBinding", "rolebindings", True, api_version=RBAC, validate=_rbac("RoleBinding"),
         immutable_top=("roleRef",),
         name_rule="path", default=_binding_defaults),
    Kind("ClusterRoleBinding", "clusterrolebindings", False, api_version=RBAC,
         immutable_top=("roleRef",),
         validate=_rbac("ClusterRoleBinding"), name_rule="path",
         default=_binding_defaults),
)

BY_RESOURCE = {k.resource: k for k in KINDS}
BY_KIND = {k.kind: k for k in KINDS}


def lookup(name: str) -> Kind | None:
    """A kind by resource (pods), kind (Pod), singular (pod) or short name (po)."""
    low = (name or "").lower()
    for k in KINDS:
        if low in (k.resource, k.kind.lower(), *k.short_names):
            return k
    return None


def supported() -> str:
    return ", ".join(k.resource for k in KINDS)
