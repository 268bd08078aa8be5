"""Role-based access control as Kubernetes' RBAC (rbac.authorization.k8s.io/v1).

Role, ClusterRole, RoleBinding and ClusterRoleBinding are Kubernetes JSON dicts. RbacIndex keeps
the current ones in memory (the API server feeds it from a watch of the store: upsert on
ADDED/MODIFIED, remove on DELETED) and answers authorize(Attributes) -> Decision with the rule
matching of Kubernetes' RBAC authorizer:

- a ClusterRoleBinding grants its ClusterRole's rules in every namespace and at the cluster scope;
- a RoleBinding grants its Role's, or a ClusterRole's, rules in the binding's namespace only;
- a rule matches when its apiGroups, verbs and resources ("*", "pods", "pods/log", "*/status")
  match and, when it has resourceNames, the request's name is one of them;
- subjects are Users, Groups and ServiceAccounts (user system:serviceaccount:NS:NAME; a
  RoleBinding's ServiceAccount without a namespace means the binding's).

Group system:masters may do everything, before any rule (kube-apiserver's privileged group).
RBAC never denies explicitly: what no rule allows is refused by the chain (authz.py).
"""
from __future__ import annotations

import dataclasses
import re
import threading
from typing import TYPE_CHECKING, Iterable

from . import aggregation

if TYPE_CHECKING:
    from podnetd.apiserver.authn import UserInfo

GROUP = "rbac.authorization.k8s.io"
API_VERSION = GROUP + "/v1"
MASTERS_GROUP = "system:masters"
KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
         "impersonate", "bind", "escalate")

# The API group of each resource podnet serves or will serve, for messages and the bootstrap
# policy; everything not listed here is in the core group "".
RESOURCE_GROUPS = {
    "roles": GROUP, "clusterroles": GROUP, "rolebindings": GROUP, "clusterrolebindings": GROUP,
    "leases": "coordination.k8s.io",
}


@dataclasses.dataclass(frozen=True)
class Attributes:
    """One request as the authorizers see it (Kubernetes' authorizer.Attributes).

    resource is plural lower case ("pods"), subresource without the slash ("log"); namespace is
    empty for cluster-scoped resources and for requests across namespaces (list -A); name is empty
    for list, watch, create and deletecollection. As kube-apiserver, a request on the namespace
    object itself (get namespace prod) has namespace = name. field_selector is the list/watch
    field selector (the Node authorizer requires spec.nodeName=NAME on a node's pod lists)."""
    user: "UserInfo"
    verb: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    api_group: str = ""
    field_selector: str = ""

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def parse_resource(text: str, groups: dict[str, str] | None = None) -> tuple[str, str, str]:
    """kubectl auth can-i's RESOURCE[.GROUP][/SUBRESOURCE] -> (resource, subresource, api group):
    "pods/log" -> ("pods", "log", ""), "deployments.apps" -> ("deployments", "", "apps"). Without
    a group, `groups` (resource -> group, e.g. from the kinds the server serves; default
    RESOURCE_GROUPS) supplies it, as kubectl's discovery does."""
    head, _, sub = text.strip().lower().partition("/")
    resource, _, group = head.partition(".")
    if not group:
        group = (RESOURCE_GROUPS if groups is None else groups).get(resource, "")
    return resource, sub, group


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class Forbidden(Exception):
    """PERMISSION_DENIED; the message is kube-apiserver's (forbidden_message)."""

    def __init__(self, message: str, attrs: Attributes | None = None):
        super().__init__(message)
        self.attrs = attrs


def forbidden_message(attrs: Attributes, reason: str = "") -> str:
    """kube-apiserver's words for a denied request, e.g.
    pods "web" is forbidden: User "alice" cannot get resource "pods" in API group "" in the
    namespace "prod"  (without a name: `pods is forbidden: ...`; cluster-scoped and across
    namespaces: `... at the cluster scope`; subresources: `resource "pods/log"`; the
    authorizers' reason, when there is one, after a colon)."""
    resource = attrs.resource if not attrs.api_group else f"{attrs.resource}.{attrs.api_group}"
    head = f'{resource} "{attrs.name}"' if attrs.name else resource
    where = (f'in the namespace "{attrs.namespace}"' if attrs.namespace
             else "at the cluster scope")
    msg = (f'{head} is forbidden: User "{attrs.user.name}" cannot {attrs.verb} resource '
           f'"{attrs.full_resource}" in API group "{attrs.api_group}" {where}')
    return f"{msg}: {reason}" if reason else msg


# ---- rule matching (Kubernetes' rbac/v1 RuleAllows) -------------------------------------------

def _resource_matches(rule_resources: list, combined: str, subresource: str) -> bool:
    for r in rule_resources:
        if r == "*" or r == combined:
            return True
        # "*/status" matches the status subresource of every resource
        if subresource and r == "*/" + subresource:
            return True
    return False


def rule_allows(rule: dict, attrs: Attributes) -> bool:
    if rule.get("nonResourceURLs"):
        return False
    verbs, groups = rule.get("verbs") or [], rule.get("apiGroups") or []
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    if "*" not in groups and attrs.api_group not in groups:
        return False
    if not _resource_matches(rule.get("resources") or [], attrs.full_resource, attrs.subresource):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def subject_applies(subject: dict, user: "UserInfo", binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_namespace
        return bool(ns) and user.name == f"system:serviceaccount:{ns}:{name}"
    return False


def _describe_subject(subject: dict, binding_namespace: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        ns = subject.get("namespace") or binding_namespace
        return f'ServiceAccount "{subject.get("name")}/{ns}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


# ---- the index ----------------------------------------------------------------------------------

def _key(obj: dict) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return obj.get("kind", ""), meta.get("namespace") or "", meta.get("name") or ""


class RbacIndex:
    """The current RBAC objects in memory and the authorizer over them. Thread-safe: the store's
    watch feeds it while requests are authorised."""

    def __init__(self, objects: Iterable[dict] = ()):
        self._lock = threading.Lock()
        self._roles: dict[tuple[str, str], dict] = {}           # (namespace, name)
        self._cluster_roles: dict[str, dict] = {}
        self._bindings: dict[str, dict[str, dict]] = {}         # namespace -> name -> binding
        self._cluster_bindings: dict[str, dict] = {}
        for obj in objects:
            self.upsert(obj)

    def upsert(self, obj: dict) -> None:
        """Add or replace one RBAC object (other kinds are ignored)."""
        kind, ns, name = _key(obj)
        with self._lock:
            if kind == "Role":
                self._roles[(ns, name)] = obj
            elif kind == "ClusterRole":
                self._cluster_roles[name] = obj
            elif kind == "RoleBinding":
                self._bindings.setdefault(ns, {})[name] = obj
            elif kind == "ClusterRoleBinding":
                self._cluster_bindings[name] = obj

    def remove(self, obj: dict) -> None:
        kind, ns, name = _key(obj)
        with self._lock:
            if kind == "Role":
                self._roles.pop((ns, name), None)
            elif kind == "ClusterRole":
                self._cluster_roles.pop(name, None)
            elif kind == "RoleBinding":
                self._bindings.get(ns, {}).pop(name, None)
                if not self._bindings.get(ns, True):
                    del self._bindings[ns]
            elif kind == "ClusterRoleBinding":
                self._cluster_bindings.pop(name, None)

    def clear(self) -> None:
        """Forget everything (before a relist)."""
        with self._lock:
            self._roles.clear()
            self._cluster_roles.clear()
            self._bindings.clear()
            self._cluster_bindings.clear()

    def _role_rules(self, ref: dict, namespace: str) -> tuple[list, str, str | None]:
        """(rules, "Role \"x\"" for the reason, error when the role does not exist)."""
        kind, name = ref.get("kind"), ref.get("name", "")
        if kind == "ClusterRole":
            role = self._cluster_roles.get(name)
            if role is None:
                return [], "", f'clusterrole.{GROUP} "{name}" not found'
            return role.get("rules") or [], f'ClusterRole "{name}"', None
        if kind == "Role" and namespace:
            role = self._roles.get((namespace, name))
            if role is None:
                return [], "", f'role.{GROUP} "{name}" not found'
            return role.get("rules") or [], f'Role "{name}"', None
        return [], "", f"unsupported roleRef kind {kind!r}"

    def _visit(self, user: "UserInfo", namespace: str):
        """Yield (rules, how) for every binding that applies to the user in the namespace, and
        (None, error) for bindings whose role is missing."""
        with self._lock:
            cluster = sorted(self._cluster_bindings.items())
            local = sorted(self._bindings.get(namespace, {}).items()) if namespace else []
        for name, b in cluster:
            for s in b.get("subjects") or []:
                if subject_applies(s, user, ""):
                    with self._lock:
                        rules, role, err = self._role_rules(b.get("roleRef") or {}, "")
                    if err:
                        yield None, err
                    else:
                        yield rules, (f'ClusterRoleBinding "{name}" of {role} to '
                                      f'{_describe_subject(s, "")}')
                    break
        for name, b in local:
            for s in b.get("subjects") or []:
                if subject_applies(s, user, namespace):
                    with self._lock:
                        rules, role, err = self._role_rules(b.get("roleRef") or {}, namespace)
                    if err:
                        yield None, err
                    else:
                        yield rules, (f'RoleBinding "{name}/{namespace}" of {role} to '
                                      f'{_describe_subject(s, namespace)}')
                    break

    def authorize(self, attrs: Attributes) -> Decision:
        """Allowed with kube-apiserver's reason ("RBAC: allowed by RoleBinding ..."), or not
        allowed with the errors met on the way (a binding to a missing role), as the RBAC
        authorizer's no-opinion."""
        if MASTERS_GROUP in attrs.user.groups:
            return Decision(True, f"allowed: group {MASTERS_GROUP}")
        errors: list[str] = []
        for rules, how in self._visit(attrs.user, attrs.namespace):
            if rules is None:
                errors.append(how)
                continue
            if any(rule_allows(r, attrs) for r in rules if isinstance(r, dict)):
                return Decision(True, f"RBAC: allowed by {how}")
        return Decision(False, "RBAC: " + ", ".join(errors) if errors else "")

    def role_rules(self, ref: dict, namespace: str) -> list | None:
        """The rules of a binding's roleRef (a RoleBinding's in its namespace), None if the role
        does not exist."""
        with self._lock:
            rules, _, err = self._role_rules(ref if isinstance(ref, dict) else {}, namespace)
        return None if err else rules

    def rules_for(self, user: "UserInfo", namespace: str) -> list[dict]:
        """Every rule that applies to the user in the namespace (kubectl auth can-i --list)."""
        out: list[dict] = []
        for rules, _ in self._visit(user, namespace):
            if rules:
                out.extend(r for r in rules if isinstance(r, dict))
        return out


# ---- escalation prevention (Kubernetes' ConfirmNoEscalation) -----------------------------------

def _has(values, want: str) -> bool:
    return "*" in values or want in values


def _resource_covered(owned: list, resource: str) -> bool:
    if _has(owned, resource):
        return True
    _, slash, sub = resource.partition("/")
    return bool(slash) and "*/" + sub in owned


def _url_covered(owned: list, url: str) -> bool:
    return any(o == "*" or o == url or (o.endswith("*") and url.startswith(o[:-1]))
               for o in owned)


def _rule_covers(owner: dict, servant_atom: tuple) -> bool:
    kind, group, resource, verb, name = servant_atom
    if not _has(owner.get("verbs") or [], verb):
        return False
    if kind == "url":
        return _url_covered(owner.get("nonResourceURLs") or [], resource)
    if owner.get("nonResourceURLs"):
        return False
    if not _has(owner.get("apiGroups") or [], group) or \
            not _resource_covered(owner.get("resources") or [], resource):
        return False
    names = owner.get("resourceNames") or []
    return not names or (name is not None and name in names)


def _atoms(rule: dict):
    verbs = rule.get("verbs") or []
    for url in rule.get("nonResourceURLs") or []:
        for verb in verbs:
            yield ("url", "", url, verb, None)
    names = rule.get("resourceNames") or [None]
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in verbs:
                for name in names:
                    yield ("resource", group, resource, verb, name)


def ungranted(owner_rules: list[dict], servant_rules: list) -> list[dict]:
    """The parts of servant_rules that owner_rules do not cover, one small rule each, in the
    servant's order (empty: the owner holds everything it would grant)."""
    missing = []
    for rule in servant_rules:
        if not isinstance(rule, dict):
            continue
        for atom in _atoms(rule):
            if any(_rule_covers(o, atom) for o in owner_rules if isinstance(o, dict)):
                continue
            kind, group, resource, verb, name = atom
            if kind == "url":
                r = {"nonResourceURLs": [resource], "verbs": [verb]}
            else:
                r = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                if name is not None:
                    r["resourceNames"] = [name]
            if r not in missing:
                missing.append(r)
    return missing


def _go_strings(values) -> str:
    return "[" + " ".join(f'"{v}"' for v in values) + "]"


def escalation_message(user: "UserInfo", missing: list[dict]) -> str:
    """kube-apiserver's words (after `roles.rbac.authorization.k8s.io "x" is forbidden: `)."""
    def show(r: dict) -> str:
        if "nonResourceURLs" in r:
            return f"{{NonResourceURLs:{_go_strings(r['nonResourceURLs'])}, " \
                   f"Verbs:{_go_strings(r['verbs'])}}}"
        names = (f", ResourceNames:{_go_strings(r['resourceNames'])}"
                 if r.get("resourceNames") else "")
        return (f"{{APIGroups:{_go_strings(r['apiGroups'])}, "
                f"Resources:{_go_strings(r['resources'])}{names}, "
                f"Verbs:{_go_strings(r['verbs'])}}}")
    shown = [show(r) for r in missing[:20]]
    if len(missing) > 20:
        shown.append(f"... and {len(missing) - 20} more")
    return (f'user "{user.name}" (groups={_go_strings(user.groups)}) is attempting to grant RBAC '
            "permissions not currently held:\n" + "\n".join(shown))


# ---- validation (Kubernetes' rbac validation, with its field paths and words) ------------------

_SA_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RULE_FIELDS = {"apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"}
_SUBJECT_FIELDS = {"kind", "apiGroup", "name", "namespace"}
_ROLEREF_FIELDS = {"kind", "apiGroup", "name"}
MAX_NAME = 253


def _path_segment_errors(value, path: str) -> list[str]:
    """RBAC object names are path segments (system:kube-scheduler is valid), not DNS names."""
    if not isinstance(value, str) or not value:
        return [f"{path}: Required value"]
    if len(value) > MAX_NAME:
        return [f'{path}: Invalid value: "{value[:40]}...": must be no more than {MAX_NAME} '
                "characters"]
    if value in (".", ".."):
        return [f'{path}: Invalid value: "{value}": may not be \'{value}\'']
    for bad in ("/", "%"):
        if bad in value:
            return [f'{path}: Invalid value: "{value}": may not contain \'{bad}\'']
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in value):
        return [f"{path}: Invalid value: {value!r}: may not contain control characters"]
    return []


def _meta_errors(obj: dict, namespaced: bool) -> list[str]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: Required value"]
    errors = _path_segment_errors(meta.get("name"), "metadata.name")
    ns = meta.get("namespace")
    if namespaced and not ns:
        errors.append("metadata.namespace: Required value")
    elif not namespaced and ns:
        errors.append("metadata.namespace: Forbidden: not allowed on this type")
    return errors


def _strings(value, path: str, errors: list[str], allow_empty: bool = False) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        errors.append(f"{path}: Invalid value: {value!r:.60}: must be a list of strings")
        return []
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not (v or allow_empty):
            errors.append(f"{path}[{i}]: Invalid value: {v!r:.60}: must be a non-empty string")
        else:
            out.append(v)
    return out


def _unknown(obj: dict, known: set[str], path: str) -> list[str]:
    return [f'{path}: unknown field "{k}"' for k in obj if k not in known]


def validate_policy_rule(rule, path: str, namespaced: bool) -> list[str]:
    if not isinstance(rule, dict):
        return [f"{path}: Invalid value: {rule!r:.60}: must be an object"]
    errors = _unknown(rule, _RULE_FIELDS, path)
    _strings(rule.get("verbs"), path + ".verbs", errors)
    groups = _strings(rule.get("apiGroups"), path + ".apiGroups", errors, allow_empty=True)
    resources = _strings(rule.get("resources"), path + ".resources", errors)
    names = _strings(rule.get("resourceNames"), path + ".resourceNames", errors)
    urls = _strings(rule.get("nonResourceURLs"), path + ".nonResourceURLs", errors)
    if rule.get("verbs") in (None, []):
        errors.append(f"{path}.verbs: Required value: verbs must contain at least one value")
    if urls:
        if namespaced:
            errors.append(f"{path}.nonResourceURLs: Invalid value: {urls}: namespaced rules "
                          "cannot apply to non-resource URLs")
        if groups or resources or names:
            errors.append(f"{path}.nonResourceURLs: Invalid value: {urls}: rules cannot apply "
                          "to both regular resources and non-resource URLs")
        return errors
    if rule.get("apiGroups") in (None, []):
        errors.append(f"{path}.apiGroups: Required value: resource rules must supply at least "
                      "one api group")
    if rule.get("resources") in (None, []):
        errors.append(f"{path}.resources: Required value: resource rules must supply at least "
                      "one resource")
    return errors


def _rules_errors(obj: dict, namespaced: bool) -> list[str]:
    rules = obj.get("rules")
    if rules is None:
        return []
    if not isinstance(rules, list):
        return [f"rules: Invalid value: {rules!r:.60}: must be a list"]
    errors: list[str] = []
    for i, rule in enumerate(rules):
        errors += validate_policy_rule(rule, f"rules[{i}]", namespaced)
    return errors


def validate_role(obj: dict) -> list[str]:
    errors = _meta_errors(obj, namespaced=True) + _rules_errors(obj, namespaced=True)
    return errors + _unknown(obj, {"apiVersion", "kind", "metadata", "rules"}, "")


def validate_cluster_role(obj: dict) -> list[str]:
    errors = _meta_errors(obj, namespaced=False) + _rules_errors(obj, namespaced=False)
    errors += aggregation.validate(obj.get("aggregationRule"))
    return errors + _unknown(obj, {"apiVersion", "kind", "metadata", "rules",
                                   "aggregationRule"}, "")


def _role_ref_errors(ref, namespaced: bool) -> list[str]:
    if not isinstance(ref, dict):
        return ["roleRef: Required value"]
    errors = _unknown(ref, _ROLEREF_FIELDS, "roleRef")
    if ref.get("apiGroup") != GROUP:
        errors.append(f'roleRef.apiGroup: Unsupported value: "{ref.get("apiGroup", "")}": '
                      f'supported values: "{GROUP}"')
    kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
    if ref.get("kind") not in kinds:
        errors.append(f'roleRef.kind: Unsupported value: "{ref.get("kind", "")}": supported '
                      "values: " + ", ".join(f'"{k}"' for k in kinds))
    errors += _path_segment_errors(ref.get("name"), "roleRef.name")
    return errors


def _subject_errors(subject, path: str, namespaced: bool) -> list[str]:
    if not isinstance(subject, dict):
        return [f"{path}: Invalid value: {subject!r:.60}: must be an object"]
    errors = _unknown(subject, _SUBJECT_FIELDS, path)
    kind, name = subject.get("kind"), subject.get("name")
    group = subject.get("apiGroup", "")
    if not isinstance(name, str) or not name:
        errors.append(f"{path}.name: Required value")
    if kind == "ServiceAccount":
        if group:
            errors.append(f'{path}.apiGroup: Unsupported value: "{group}": supported values: ""')
        if isinstance(name, str) and name and (len(name) > MAX_NAME or not _SA_NAME.match(name)):
            errors.append(f'{path}.name: Invalid value: "{name[:60]}": a lowercase RFC 1123 '
                          "subdomain must consist of lower case alphanumeric characters, '-' or "
                          "'.', and must start and end with an alphanumeric character")
        if not subject.get("namespace") and not namespaced:
            errors.append(f"{path}.namespace: Required value")
    elif kind in ("User", "Group"):
        if group != GROUP:
            errors.append(f'{path}.apiGroup: Unsupported value: "{group}": supported values: '
                          f'"{GROUP}"')
        if isinstance(name, str) and any(ord(c) < 0x20 or ord(c) == 0x7f for c in name):
            errors.append(f"{path}.name: Invalid value: {name!r}: may not contain control "
                          "characters")
    else:
        errors.append(f'{path}.kind: Unsupported value: "{kind or ""}": supported values: '
                      '"ServiceAccount", "User", "Group"')
    return errors


def _binding_errors(obj: dict, namespaced: bool) -> list[str]:
    errors = _meta_errors(obj, namespaced) + _role_ref_errors(obj.get("roleRef"), namespaced)
    subjects = obj.get("subjects")
    if subjects is not None and not isinstance(subjects, list):
        errors.append(f"subjects: Invalid value: {subjects!r:.60}: must be a list")
    else:
        for i, s in enumerate(subjects or []):
            errors += _subject_errors(s, f"subjects[{i}]", namespaced)
    return errors + _unknown(obj, {"apiVersion", "kind", "metadata", "roleRef", "subjects"}, "")


def validate_role_binding(obj: dict) -> list[str]:
    return _binding_errors(obj, namespaced=True)


def validate_cluster_role_binding(obj: dict) -> list[str]:
    return _binding_errors(obj, namespaced=False)


VALIDATORS = {
    "Role": validate_role, "ClusterRole": validate_cluster_role,
    "RoleBinding": validate_role_binding, "ClusterRoleBinding": validate_cluster_role_binding,
}


def default_binding(obj: dict) -> dict:
    """Kubernetes' defaults for rbac/v1 bindings (SetDefaults_Subject): a User or Group subject
    without apiGroup is in rbac.authorization.k8s.io. Changes and returns obj."""
    for s in obj.get("subjects") or []:
        if isinstance(s, dict) and s.get("kind") in ("User", "Group") and not s.get("apiGroup"):
            s["apiGroup"] = GROUP
    return obj


# ---- the bootstrap policy -----------------------------------------------------------------------

_READ = ["get", "list", "watch"]
_WRITE = ["create", "delete", "deletecollection", "patch", "update"]
_BOOTSTRAP_META = {"labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                   "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}}


def _rule(verbs, groups, resources, names=None) -> dict:
    r = {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}
    if names:
        r["resourceNames"] = list(names)
    return r


def _meta(name: str) -> dict:
    return {"name": name, **{k: dict(v) for k, v in _BOOTSTRAP_META.items()}}


def _cluster_role(name: str, rules: list[dict], aggregate_to: str = "",
                  aggregates: str = "") -> dict:
    """aggregate_to: the role's rules flow into that built-in role (its label);
    aggregates: the role is aggregated from the roles labelled aggregate-to-<aggregates>."""
    role = {"apiVersion": API_VERSION, "kind": "ClusterRole", "metadata": _meta(name),
            "rules": rules}
    if aggregate_to:
        role["metadata"]["labels"][aggregation.AGGREGATE_TO + aggregate_to] = "true"
    if aggregates:
        role["aggregationRule"] = {"clusterRoleSelectors": [
            {"matchLabels": {aggregation.AGGREGATE_TO + aggregates: "true"}}]}
    return role


def _aggregated_bootstrap_roles() -> list[dict]:
    """view, edit and admin as Kubernetes ships them: aggregated from the
    system:aggregate-to-* roles (and view into edit, edit into admin), their rules filled in
    here as the aggregation controller would, so they work before it first runs."""
    view = _view_rules()
    edit_only = _edit_rules()[len(view):]
    admin_only = _admin_rules()[len(_edit_rules()):]
    roles = [_cluster_role("system:aggregate-to-view", view, aggregate_to="view"),
             _cluster_role("system:aggregate-to-edit", edit_only, aggregate_to="edit"),
             _cluster_role("system:aggregate-to-admin", admin_only, aggregate_to="admin"),
             _cluster_role("view", [], aggregate_to="edit", aggregates="view"),
             _cluster_role("edit", [], aggregate_to="admin", aggregates="edit"),
             _cluster_role("admin", [], aggregates="admin")]
    for role in roles[3:]:      # in this order each one's sources are already filled
        role["rules"] = aggregation.aggregated_rules(role, roles)
    return roles


def _cluster_binding(name: str, role: str, kind: str, subject: str) -> dict:
    return {"apiVersion": API_VERSION, "kind": "ClusterRoleBinding", "metadata": _meta(name),
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": GROUP, "kind": kind, "name": subject}]}


# What a namespace's users see and edit, the kinds podnet has and those the next issues add
# (the rules of system:aggregate-to-view/edit/admin, aggregated into view, edit and admin).
_VIEW_CORE = ["pods", "pods/log", "pods/status", "events", "configmaps", "endpoints",
              "persistentvolumeclaims", "replicationcontrollers", "serviceaccounts", "services",
              "services/status", "limitranges", "resourcequotas", "namespaces/status", "bindings"]
_VIEW_APPS = ["deployments", "deployments/scale", "deployments/status", "replicasets",
              "replicasets/scale", "replicasets/status", "statefulsets", "statefulsets/scale",
              "statefulsets/status", "daemonsets", "daemonsets/status", "controllerrevisions"]
_EDIT_CORE = ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "configmaps",
              "endpoints", "persistentvolumeclaims", "replicationcontrollers",
              "replicationcontrollers/scale", "secrets", "serviceaccounts", "services",
              "services/proxy"]
_EDIT_APPS = ["deployments", "deployments/scale", "replicasets", "replicasets/scale",
              "statefulsets", "statefulsets/scale", "daemonsets"]


def _view_rules() -> list[dict]:
    return [
        _rule(_READ, [""], _VIEW_CORE),
        _rule(_READ, [""], ["namespaces"]),
        _rule(_READ, ["apps"], _VIEW_APPS),
        _rule(_READ, ["batch"], ["jobs", "jobs/status", "cronjobs", "cronjobs/status"]),
        _rule(_READ, ["autoscaling"], ["horizontalpodautoscalers",
                                       "horizontalpodautoscalers/status"]),
        _rule(_READ, ["policy"], ["poddisruptionbudgets", "poddisruptionbudgets/status"]),
        _rule(_READ, ["networking.k8s.io"], ["networkpolicies", "ingresses", "ingresses/status"]),
        _rule(_READ, ["discovery.k8s.io"], ["endpointslices"]),
    ]


def _edit_rules() -> list[dict]:
    return _view_rules() + [
        _rule(_WRITE, [""], _EDIT_CORE),
        _rule(["create"], [""], ["pods/eviction"]),
        _rule(["impersonate"], [""], ["serviceaccounts"]),
        _rule(_WRITE, ["apps"], _EDIT_APPS),
        _rule(_WRITE, ["batch"], ["jobs", "cronjobs"]),
        _rule(_WRITE, ["autoscaling"], ["horizontalpodautoscalers"]),
        _rule(_WRITE, ["policy"], ["poddisruptionbudgets"]),
        _rule(_WRITE, ["networking.k8s.io"], ["networkpolicies", "ingresses"]),
        _rule(_WRITE, ["discovery.k8s.io"], ["endpointslices"]),
    ]


def _admin_rules() -> list[dict]:
    return _edit_rules() + [
        _rule(_READ + _WRITE, [GROUP], ["roles", "rolebindings"]),
        _rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews"]),
    ]


def _scheduler_rules() -> list[dict]:
    return [
        _rule(["create", "patch", "update"], ["", "events.k8s.io"], ["events"]),
        _rule(["create"], ["coordination.k8s.io"], ["leases"]),
        _rule(["get", "update"], ["coordination.k8s.io"], ["leases"], ["kube-scheduler"]),
        _rule(_READ, [""], ["nodes"]),
        _rule(["delete", "get", "list", "watch"], [""], ["pods"]),
        _rule(["create"], [""], ["bindings", "pods/binding"]),
        _rule(["patch", "update"], [""], ["pods/status"]),
        _rule(_READ, [""], ["namespaces", "services", "replicationcontrollers",
                            "persistentvolumeclaims", "persistentvolumes"]),
        _rule(_READ, ["apps"], ["replicasets", "statefulsets"]),
        _rule(_READ, ["policy"], ["poddisruptionbudgets"]),
    ]


def _controller_manager_rules() -> list[dict]:
    # Kubernetes runs each controller under its own service account; podnet's controllers (node
    # lifecycle, pod garbage collection, later the workload controllers) run under this one.
    return [
        _rule(["create", "patch", "update"], ["", "events.k8s.io"], ["events"]),
        _rule(["create"], ["coordination.k8s.io"], ["leases"]),
        _rule(["get", "update"], ["coordination.k8s.io"], ["leases"],
              ["kube-controller-manager"]),
        _rule(_READ, ["coordination.k8s.io"], ["leases"]),
        _rule(_READ + ["update", "patch", "delete"], [""], ["nodes", "nodes/status"]),
        _rule(_READ + ["update", "patch", "delete", "deletecollection"], [""], ["pods"]),
        _rule(["update", "patch"], [""], ["pods/status"]),
        _rule(["create"], [""], ["pods/eviction"]),
        _rule(_READ, [""], ["namespaces"]),
        _rule(["update", "patch", "delete"], [""], ["namespaces", "namespaces/finalize",
                                                    "namespaces/status"]),
        _rule(_READ + _WRITE, ["apps"], ["deployments", "deployments/status", "replicasets",
                                        "replicasets/status", "statefulsets",
                                        "statefulsets/status", "daemonsets",
                                        "daemonsets/status", "controllerrevisions"]),
        _rule(_READ + _WRITE, ["batch"], ["jobs", "jobs/status", "cronjobs", "cronjobs/status"]),
        _rule(_READ + _WRITE, ["", "discovery.k8s.io"], ["endpoints", "endpointslices"]),
        _rule(_READ, [""], ["services", "configmaps", "serviceaccounts"]),
        _rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
        _rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews"]),
        # the clusterrole-aggregation controller writes rules it need not hold itself
        _rule(["escalate", "get", "list", "patch", "update", "watch"], [GROUP],
              ["clusterroles"]),
        # the namespace controller empties a namespace being deleted, whatever it holds (as
        # Kubernetes' system:controller:namespace-controller)
        _rule(["get", "list", "delete", "deletecollection"], ["*"], ["*"]),
    ]


def bootstrap_objects() -> list[dict]:
    """The ClusterRoles and ClusterRoleBindings Kubernetes ships, as the API server creates them
    at first start (labelled kubernetes.io/bootstrapping=rbac-defaults). Nodes are not here: the
    Node authorizer (node_authz.py) grants what a node needs, as with --authorization-mode=Node."""
    roles = [
        _cluster_role("cluster-admin", [_rule(["*"], ["*"], ["*"]),
                                        {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        *_aggregated_bootstrap_roles(),
        # Everyone may ask who they are and what they may do (kubectl auth whoami / can-i).
        _cluster_role("system:basic-user", [
            _rule(["create"], ["authentication.k8s.io"], ["selfsubjectreviews"]),
            _rule(["create"], ["authorization.k8s.io"], ["selfsubjectaccessreviews",
                                                         "selfsubjectrulesreviews"])]),
        _cluster_role("system:kube-scheduler", _scheduler_rules()),
        _cluster_role("system:kube-controller-manager", _controller_manager_rules()),
    ]
    bindings = [
        _cluster_binding("cluster-admin", "cluster-admin", "Group", MASTERS_GROUP),
        _cluster_binding("system:basic-user", "system:basic-user", "Group",
                         "system:authenticated"),
        _cluster_binding("system:kube-scheduler", "system:kube-scheduler", "User",
                         "system:kube-scheduler"),
        _cluster_binding("system:kube-controller-manager", "system:kube-controller-manager",
                         "User", "system:kube-controller-manager"),
    ]
    return roles + bindings
