"""The authorization chain of every cluster API request, as kube-apiserver with
--authorization-mode=Node,RBAC and the NodeRestriction admission plugin:

1. group system:masters may do everything;
2. the Node authorizer (node_authz.authorize_node) for nodes;
3. RBAC (rbac.RbacIndex);
4. for an allowed write by a node, NodeRestriction (node_authz.admit_node) on the object;
5. for an allowed write of a Role, ClusterRole or binding, RBAC's escalation prevention: nobody
   grants permissions they do not hold, unless allowed to `escalate` (roles) or `bind` (the
   referenced role), as Kubernetes.

The first authorizer that allows wins; when none does, the request is denied with
kube-apiserver's message and the authorizers' reasons (rbac.forbidden_message).
"""
from __future__ import annotations

import dataclasses

from podnetd.apiserver import node_authz, rbac
from podnetd.apiserver.rbac import Attributes, Decision


@dataclasses.dataclass(frozen=True)
class Verdict:
    """allowed, the reason (for the audit log and can-i), and when denied the message to return
    with PERMISSION_DENIED."""
    allowed: bool
    reason: str = ""
    message: str = ""


class Authorizer:
    def __init__(self, index: rbac.RbacIndex,
                 pod_node: node_authz.PodNodeLookup | None = None):
        """pod_node(namespace, name) -> spec.nodeName of a pod or None: a cache lookup (no I/O),
        e.g. a node_authz.PodNodeIndex fed by the pods' watch."""
        self.rbac = index
        self.pod_node = pod_node

    def _lookup(self, old: dict | None) -> node_authz.PodNodeLookup | None:
        if old is None or old.get("kind") != "Pod":
            return self.pod_node
        meta = old.get("metadata") or {}
        known = ((meta.get("namespace") or "", meta.get("name") or ""),
                 (old.get("spec") or {}).get("nodeName") or None)

        def lookup(namespace: str, name: str) -> str | None:
            if (namespace, name) == known[0]:
                return known[1]
            return self.pod_node(namespace, name) if self.pod_node else None
        return lookup

    def decide(self, attrs: Attributes, old: dict | None = None) -> Decision:
        """The authorizers only (no object): what `auth can-i` answers and what impersonation
        checks. old, when the caller has the stored object, spares the pod lookup."""
        if rbac.MASTERS_GROUP in attrs.user.groups:
            return Decision(True, f"allowed: group {rbac.MASTERS_GROUP}")
        reasons = []
        node = node_authz.authorize_node(attrs, self._lookup(old))
        if node is not None:
            if node.allowed:
                return Decision(True, "Node: " + node.reason)
            if node.reason:
                reasons.append(node.reason)
        decision = self.rbac.authorize(attrs)
        if decision.allowed:
            return decision
        if decision.reason:
            reasons.append(decision.reason)
        return Decision(False, "; ".join(reasons))

    __call__ = decide   # authn.impersonate(..., authorizer=Authorizer)

    def authorize(self, attrs: Attributes, obj: dict | None = None,
                  old: dict | None = None) -> Verdict:
        """A request: the authorizers, then NodeRestriction on the object for a node's write.
        obj: the object to be stored (create, update; for a patch after applying it); old: the
        stored object (update, patch, delete) when the caller has it."""
        decision = self.decide(attrs, old)
        if not decision.allowed:
            return Verdict(False, decision.reason,
                           rbac.forbidden_message(attrs, decision.reason))
        refusal = node_authz.admit_node(attrs, obj, old) or self._escalation(attrs, obj)
        if refusal:
            return Verdict(False, refusal, admission_message(attrs, obj, refusal))
        return Verdict(True, decision.reason)

    def _escalation(self, attrs: Attributes, obj: dict | None) -> str | None:
        if attrs.api_group != rbac.GROUP or attrs.verb not in ("create", "update", "patch") or \
                attrs.subresource or not isinstance(obj, dict) or \
                rbac.MASTERS_GROUP in attrs.user.groups:
            return None
        user, ns = attrs.user, attrs.namespace
        name = ((obj.get("metadata") or {}).get("name")) or attrs.name
        if attrs.resource in ("roles", "clusterroles"):
            escalate = Attributes(user, "escalate", attrs.resource, "", ns, name, rbac.GROUP)
            if self.decide(escalate).allowed:
                return None
            if attrs.resource == "clusterroles" and obj.get("aggregationRule") is not None:
                # an aggregated role takes whatever rules its selectors will pick, later too
                return "must have cluster-admin privileges to use the aggregationRule"
            servant = obj.get("rules") or []
        elif attrs.resource in ("rolebindings", "clusterrolebindings"):
            ref = obj.get("roleRef") if isinstance(obj.get("roleRef"), dict) else {}
            ref_resource = "clusterroles" if ref.get("kind") == "ClusterRole" else "roles"
            bind = Attributes(user, "bind", ref_resource, "", ns, ref.get("name", ""), rbac.GROUP)
            if self.decide(bind).allowed:
                return None
            servant = self.rbac.role_rules(ref, ns)
            if servant is None:
                kind = "clusterrole" if ref_resource == "clusterroles" else "role"
                return (f'{kind}.{rbac.GROUP} "{ref.get("name", "")}" not found: a binding to '
                        "it needs the bind verb on it")
        else:
            return None
        missing = rbac.ungranted(self.rbac.rules_for(user, ns), servant)
        return rbac.escalation_message(user, missing) if missing else None


def admission_message(attrs: Attributes, obj: dict | None, reason: str) -> str:
    """kube-apiserver's words for a request an admission plugin refused:
    pods "web" is forbidden: node "n1" can only create mirror pods ..."""
    resource = attrs.resource if not attrs.api_group else f"{attrs.resource}.{attrs.api_group}"
    name = attrs.name or ((obj or {}).get("metadata") or {}).get("name") or ""
    head = f'{resource} "{name}"' if name else resource
    return f"{head} is forbidden: {reason}"
