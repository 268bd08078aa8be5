"""What a node may do: Kubernetes' Node authorizer and NodeRestriction admission plugin.

A node (user system:node:NAME in group system:nodes) reads the pods bound to it and writes their
status, creates and deletes its mirror pods, reads nodes and writes its own Node (not another's,
and not its taints once registered), reads and writes its own Lease in kube-node-lease, creates
events and reads namespaces. Nothing else: what the Node authorizer does not allow falls through
to RBAC, where nodes are bound to nothing by default.

Stricter than Kubernetes' defaults, as its AuthorizeNodeWithSelectors feature: a node lists and
watches pods only with the field selector spec.nodeName=NAME. Looser in one place: a node may
update a pod bound to it when the update only removes finalizers (podnet's kubelet removes its
finalizer once the pod's containers are stopped, where Kubernetes' kubelet deletes with grace 0).
"""
from __future__ import annotations

import threading
from typing import Callable

from podnetd.apiserver.authn import node_name
from podnetd.apiserver.rbac import Attributes, Decision

NODE_LEASE_NAMESPACE = "kube-node-lease"
MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"
RESTRICTED_LABEL_DOMAIN = "node-restriction.kubernetes.io"

PodNodeLookup = Callable[[str, str], "str | None"]


class PodNodeIndex:
    """(namespace, name) -> spec.nodeName of every pod, fed from the store's watch (upsert on
    ADDED/MODIFIED, remove on DELETED): the lookup the Node authorizer needs for a get by name,
    without I/O on the request path. Call it as pod_node(namespace, name)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._nodes: dict[tuple[str, str], str] = {}

    @staticmethod
    def _key(pod: dict) -> tuple[str, str]:
        meta = pod.get("metadata") or {}
        return meta.get("namespace") or "", meta.get("name") or ""

    def upsert(self, pod: dict) -> None:
        node = (pod.get("spec") or {}).get("nodeName") or ""
        with self._lock:
            if node:
                self._nodes[self._key(pod)] = node
            else:
                self._nodes.pop(self._key(pod), None)

    def remove(self, pod: dict) -> None:
        with self._lock:
            self._nodes.pop(self._key(pod), None)

    def clear(self) -> None:
        with self._lock:
            self._nodes.clear()

    def __call__(self, namespace: str, name: str) -> str | None:
        with self._lock:
            return self._nodes.get((namespace, name))


def selected_node(field_selector: str) -> str | None:
    """The node a field selector pins spec.nodeName to ("spec.nodeName=n1,status.phase!=Failed"
    -> "n1"); None when it does not pin it to exactly one node."""
    pinned: set[str] = set()
    for term in filter(None, (t.strip() for t in (field_selector or "").split(","))):
        if "!=" in term:
            continue
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if sep and key.strip() == "spec.nodeName":
            pinned.add(value.strip())
    return next(iter(pinned)) if len(pinned) == 1 and "" not in pinned else None


def _no_relationship(node: str) -> Decision:
    return Decision(False, f"no relationship found between node '{node}' and this object")


def authorize_node(attrs: Attributes, pod_node: PodNodeLookup | None) -> Decision | None:
    """The Node authorizer: None (no opinion) for users that are not nodes; for nodes, allowed
    or not with the reason kube-apiserver gives. A request it does not allow goes on to RBAC."""
    node = node_name(attrs.user)
    if node is None:   # system:node:X without group system:nodes too: just a user
        return None
    verb, res, sub, group = attrs.verb, attrs.resource, attrs.subresource, attrs.api_group
    allow = Decision(True, f"node '{node}' may {verb} {attrs.full_resource}")

    def bound() -> Decision:
        where = pod_node(attrs.namespace, attrs.name) if (pod_node and attrs.name) else None
        return allow if where == node else _no_relationship(node)

    if group == "" and res == "pods":
        if sub == "" and verb in ("list", "watch"):
            if selected_node(attrs.field_selector) == node:
                return allow
            return Decision(False, f"can only {verb} pods with spec.nodeName field selector "
                                   f"set to node '{node}'")
        if sub == "" and verb == "create":
            return allow   # NodeRestriction: mirror pods bound to itself only
        if (sub == "" and verb in ("get", "delete", "update", "patch")) or \
                (sub == "status" and verb in ("get", "update", "patch")) or \
                (sub == "eviction" and verb == "create"):
            return bound()
        return Decision(False, "")
    if group == "" and res == "nodes":
        if sub == "" and verb in ("get", "list", "watch", "create"):
            return allow   # create: NodeRestriction checks the name
        if sub in ("", "status") and verb in ("update", "patch"):
            if attrs.name == node:
                return allow
            return Decision(False, f"node '{node}' may only modify its own Node object")
        return Decision(False, "")
    if group == "coordination.k8s.io" and res == "leases" and sub == "":
        if verb not in ("get", "create", "update", "patch", "delete"):
            return Decision(False, "")
        if attrs.namespace != NODE_LEASE_NAMESPACE:
            return Decision(False, f"can only access leases in this namespace "
                                   f"{NODE_LEASE_NAMESPACE}")
        if verb != "create" and attrs.name != node:
            return Decision(False, "can only access node lease with the same name as the "
                                   "requesting node")
        return allow
    if group in ("", "events.k8s.io") and res == "events" and sub == "" and \
            verb in ("create", "update", "patch"):
        return allow
    if group == "" and res == "namespaces" and sub == "" and verb == "get":
        return allow
    return Decision(False, "")


# ---- NodeRestriction admission -----------------------------------------------------------------

def _meta(obj: dict | None) -> dict:
    return (obj or {}).get("metadata") or {}


def _restricted_labels(labels: dict) -> set[str]:
    out = set()
    for key in labels or {}:
        domain = key.partition("/")[0] if "/" in key else ""
        if domain == RESTRICTED_LABEL_DOMAIN or domain.endswith("." + RESTRICTED_LABEL_DOMAIN):
            out.add(key)
    return out


def _only_finalizers_removed(obj: dict, old: dict) -> bool:
    new_meta, old_meta = dict(_meta(obj)), dict(_meta(old))
    new_fin = new_meta.pop("finalizers", None) or []
    old_fin = old_meta.pop("finalizers", None) or []
    if not set(new_fin) <= set(old_fin):
        return False
    for volatile in ("resourceVersion", "managedFields", "generation"):
        new_meta.pop(volatile, None)
        old_meta.pop(volatile, None)
    rest = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}
    return new_meta == old_meta and rest(obj) == rest(old)


def admit_node(attrs: Attributes, obj: dict | None, old: dict | None) -> str | None:
    """NodeRestriction: None when a node's write (already authorised) may proceed, else the
    reason it may not, in kube-apiserver's words. obj: the object as it would be stored (for a
    patch, after the patch); old: the stored one (update, patch, delete). Users that are not nodes
    are always admitted."""
    node = node_name(attrs.user)
    if node is None or attrs.verb not in ("create", "update", "patch", "delete"):
        return None
    if attrs.api_group == "" and attrs.resource == "pods":
        return _admit_pod(node, attrs, obj, old)
    if attrs.api_group == "" and attrs.resource == "nodes":
        return _admit_node_object(node, attrs, obj, old)
    if attrs.api_group == "coordination.k8s.io" and attrs.resource == "leases":
        if attrs.verb == "create" and (_meta(obj).get("name") != node or
                                       attrs.namespace != NODE_LEASE_NAMESPACE):
            return "can only access node lease with the same name as the requesting node"
    return None


def _pod_node(pod: dict | None) -> str:
    return ((pod or {}).get("spec") or {}).get("nodeName") or ""


def _admit_pod(node: str, attrs: Attributes, obj: dict | None, old: dict | None) -> str | None:
    if attrs.subresource == "" and attrs.verb == "create":
        annotations = _meta(obj).get("annotations") or {}
        if MIRROR_POD_ANNOTATION not in annotations:
            return (f'pod does not have "{MIRROR_POD_ANNOTATION}" annotation, node "{node}" can '
                    "only create mirror pods")
        if _pod_node(obj) != node:
            return f'node "{node}" can only create pods with spec.nodeName set to itself'
        for ref in _meta(obj).get("ownerReferences") or []:
            if not (isinstance(ref, dict) and ref.get("kind") == "Node" and
                    ref.get("name") == node and ref.get("apiVersion") == "v1"):
                return f'node "{node}" can only create pods with an owner reference set to itself'
        return None
    if attrs.verb == "delete":
        if old is not None and _pod_node(old) != node:
            return f'node "{node}" can only delete pods with spec.nodeName set to itself'
        return None
    if attrs.subresource == "status":
        if old is not None and _pod_node(old) != node:
            return (f'node "{node}" can only update pod status for pods with spec.nodeName set '
                    "to itself")
        return None
    if attrs.subresource == "eviction":
        return None
    # update/patch of the pod itself: only its finalizers, and only to remove them
    if old is None or obj is None or _pod_node(old) != node or \
            not _only_finalizers_removed(obj, old):
        return f'node "{node}" can only remove finalizers from pods bound to it'
    return None


def _admit_node_object(node: str, attrs: Attributes, obj: dict | None,
                       old: dict | None) -> str | None:
    target = _meta(obj).get("name") or attrs.name
    if attrs.verb == "delete" or target != node or (attrs.name and attrs.name != node):
        return f'node "{node}" is not allowed to modify node "{target or attrs.name}"'
    labels = _meta(obj).get("labels") or {}
    if attrs.verb == "create" or old is None:
        bad = _restricted_labels(labels)
        if bad:
            return (f'node "{node}" is not allowed to set the following labels: '
                    + ", ".join(sorted(bad)))
        return None
    old_labels = _meta(old).get("labels") or {}
    changed = {k for k in _restricted_labels(labels) | _restricted_labels(old_labels)
               if labels.get(k) != old_labels.get(k)}
    if changed:
        return f'node "{node}" is not allowed to modify labels: ' + ", ".join(sorted(changed))
    if attrs.subresource == "" and ((obj or {}).get("spec") or {}).get("taints") != \
            ((old or {}).get("spec") or {}).get("taints"):
        return f'node "{node}" is not allowed to modify taints'
    return None
