"""The Pod kind of the cluster API: the pod runtime's own manifest validation
(runtime/manifest.py: what a node can run) plus the fields only the cluster reads (placement:
nodeSelector, affinity, tolerations, topologySpreadConstraints, schedulerName, priority), and the
defaults kube-apiserver fills in."""
import copy

from ..runtime import manifest, registry
from . import selectors
from . import validation as v
from .validation import Errors

SCHEDULING_FIELDS = {"nodeSelector", "affinity", "tolerations", "topologySpreadConstraints",
                     "schedulerName", "priority", "priorityClassName", "preemptionPolicy"}
IMMUTABLE_SPEC = ("containers", "initContainers", "volumes", "restartPolicy", "nodeSelector",
                  "affinity", "hostNetwork", "securityContext", "topologySpreadConstraints")
NODE_SELECTOR_OPS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
TOLERATION_OPS = ("Exists", "Equal")
DEFAULT_TOLERATION_SECONDS = 300   # kube-apiserver's DefaultTolerationSeconds admission


def validate(obj: dict, e: Errors) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        e.required("spec")
        return
    _validate_scheduling(spec, e)
    runnable = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {k: obj["metadata"][k] for k in ("name", "namespace")
                             if k in obj["metadata"]},
                "spec": {k: val for k, val in spec.items() if k not in SCHEDULING_FIELDS}}
    try:
        manifest.validate(copy.deepcopy(runnable))
    except manifest.ManifestError as err:
        e.add(err.path or "spec", err.why)
    _validate_status(obj, e)


def _validate_status(obj: dict, e: Errors) -> None:
    status = v.mapping(e, obj, "status", "")
    v.only(e, status, "status", {"phase", "conditions", "message", "reason", "hostIP",
                                 "hostIPs", "podIP", "podIPs", "startTime", "containerStatuses",
                                 "initContainerStatuses", "qosClass", "nominatedNodeName"})
    v.enum(e, status, "phase", "status", ("Pending", "Running", "Succeeded", "Failed",
                                          "Unknown"))
    for key in ("message", "reason", "hostIP", "podIP"):
        v.string(e, status, key, "status", maxlen=32768)
    for key in ("conditions", "containerStatuses", "initContainerStatuses", "podIPs",
                "hostIPs"):
        for i, item in enumerate(v.sequence(e, status, key, "status", 256)):
            if not isinstance(item, dict):
                e.add(f"status.{key}[{i}]", "Invalid value: must be an object")


def _node_selector_terms(e: Errors, terms, path: str) -> None:
    if not isinstance(terms, list) or not terms:
        e.add(path, "Required value: must have at least one node selector term")
        return
    for i, term in enumerate(terms):
        where = f"{path}[{i}]"
        if not isinstance(term, dict):
            e.add(where, "Invalid value: must be an object")
            continue
        v.only(e, term, where, {"matchExpressions", "matchFields"})
        for field in ("matchExpressions", "matchFields"):
            for j, req in enumerate(v.sequence(e, term, field, where, 100)):
                _node_selector_requirement(e, req, f"{where}.{field}[{j}]",
                                           fields=field == "matchFields")


def _node_selector_requirement(e: Errors, req, where: str, fields: bool) -> None:
    if not isinstance(req, dict):
        e.add(where, "Invalid value: must be an object")
        return
    v.only(e, req, where, {"key", "operator", "values"})
    key = v.string(e, req, "key", where, required=True, maxlen=316)
    if fields and key is not None and key != "metadata.name":
        e.add(f"{where}.key", f'Invalid value: {v.show(key)}: not a valid field selector key')
    elif key is not None and manifest.key_problem(key):
        e.add(f"{where}.key", f"Invalid value: {v.show(key)}: {manifest.key_problem(key)}")
    op = v.enum(e, req, "operator", where, NODE_SELECTOR_OPS, required=True)
    values = v.sequence(e, req, "values", where, 1000)
    if any(not isinstance(x, str) for x in values):
        e.add(f"{where}.values", "Invalid value: must be a list of strings")
    elif op in ("In", "NotIn") and not values:
        e.add(f"{where}.values", "Required value: must be specified when `operator` is 'In' "
                                 "or 'NotIn'")
    elif op in ("Exists", "DoesNotExist") and values:
        e.add(f"{where}.values", "Forbidden: may not be specified when `operator` is 'Exists' "
                                 "or 'DoesNotExist'")
    elif op in ("Gt", "Lt"):
        if len(values) != 1 or not values[0].lstrip("-").isdigit():
            e.add(f"{where}.values", "Required value: must be specified single value when "
                                     "`operator` is 'Lt' or 'Gt'")


def _label_selector(e: Errors, obj, where: str) -> None:
    try:
        selectors.from_label_selector(obj, where)
    except selectors.SelectorError as err:
        e.add(where, f"Invalid value: {err}")


def _pod_affinity_term(e: Errors, term, where: str) -> None:
    if not isinstance(term, dict):
        e.add(where, "Invalid value: must be an object")
        return
    v.only(e, term, where, {"labelSelector", "namespaces", "topologyKey", "namespaceSelector",
                            "matchLabelKeys", "mismatchLabelKeys"})
    if "labelSelector" in term:
        _label_selector(e, term["labelSelector"], f"{where}.labelSelector")
    if "namespaceSelector" in term:
        _label_selector(e, term["namespaceSelector"], f"{where}.namespaceSelector")
    names = v.sequence(e, term, "namespaces", where, 1000)
    if any(not isinstance(x, str) for x in names):
        e.add(f"{where}.namespaces", "Invalid value: must be a list of strings")
    key = v.string(e, term, "topologyKey", where, required=True, maxlen=316)
    if key == "":
        e.add(f"{where}.topologyKey", "Required value: can not be empty")


def _weighted(e: Errors, items: list, where: str, inner: str, check) -> None:
    for i, item in enumerate(items):
        w = f"{where}[{i}]"
        if not isinstance(item, dict):
            e.add(w, "Invalid value: must be an object")
            continue
        v.only(e, item, w, {"weight", inner})
        v.integer(e, item, "weight", w, 1, 100, required=True)
        if inner not in item:
            e.required(f"{w}.{inner}")
        else:
            check(item[inner], f"{w}.{inner}")


def _validate_affinity(e: Errors, affinity: dict) -> None:
    v.only(e, affinity, "spec.affinity", {"nodeAffinity", "podAffinity", "podAntiAffinity"})
    node = v.mapping(e, affinity, "nodeAffinity", "spec.affinity")
    where = "spec.affinity.nodeAffinity"
    v.only(e, node, where, {"requiredDuringSchedulingIgnoredDuringExecution",
                            "preferredDuringSchedulingIgnoredDuringExecution"})
    required = v.mapping(e, node, "requiredDuringSchedulingIgnoredDuringExecution", where)
    if "requiredDuringSchedulingIgnoredDuringExecution" in node:
        _node_selector_terms(e, required.get("nodeSelectorTerms"),
                             f"{where}.requiredDuringSchedulingIgnoredDuringExecution"
                             ".nodeSelectorTerms")

    def preference(term, w):
        if not isinstance(term, dict):
            e.add(w, "Invalid value: must be an object")
            return
        v.only(e, term, w, {"matchExpressions", "matchFields"})
        for field in ("matchExpressions", "matchFields"):
            for j, req in enumerate(v.sequence(e, term, field, w, 100)):
                _node_selector_requirement(e, req, f"{w}.{field}[{j}]",
                                           fields=field == "matchFields")
    _weighted(e, v.sequence(e, node, "preferredDuringSchedulingIgnoredDuringExecution", where,
                            100),
              f"{where}.preferredDuringSchedulingIgnoredDuringExecution", "preference",
              preference)
    for kind in ("podAffinity", "podAntiAffinity"):
        pa = v.mapping(e, affinity, kind, "spec.affinity")
        where = f"spec.affinity.{kind}"
        v.only(e, pa, where, {"requiredDuringSchedulingIgnoredDuringExecution",
                              "preferredDuringSchedulingIgnoredDuringExecution"})
        for i, term in enumerate(v.sequence(e, pa, "requiredDuringSchedulingIgnoredDuringExecution",
                                            where, 100)):
            _pod_affinity_term(e, term, f"{where}.requiredDuringSchedulingIgnoredDuringExecution"
                                        f"[{i}]")
        _weighted(e, v.sequence(e, pa, "preferredDuringSchedulingIgnoredDuringExecution", where,
                                100),
                  f"{where}.preferredDuringSchedulingIgnoredDuringExecution", "podAffinityTerm",
                  lambda term, w: _pod_affinity_term(e, term, w))


def _validate_tolerations(e: Errors, spec: dict) -> None:
    for i, t in enumerate(v.sequence(e, spec, "tolerations", "spec", 100)):
        where = f"spec.tolerations[{i}]"
        if not isinstance(t, dict):
            e.add(where, "Invalid value: must be an object")
            continue
        v.only(e, t, where, {"key", "operator", "value", "effect", "tolerationSeconds"})
        key = v.string(e, t, "key", where, maxlen=316)
        if key and manifest.key_problem(key):
            e.add(f"{where}.key", f"Invalid value: {v.show(key)}: {manifest.key_problem(key)}")
        op = v.enum(e, t, "operator", where, TOLERATION_OPS)
        v.string(e, t, "value", where, maxlen=63)
        if op == "Exists" and t.get("value"):
            e.add(f"{where}.operator", "Invalid value: \"Exists\": value must be empty when "
                                       "`operator` is 'Exists'")
        if not key and op != "Exists":
            e.add(f"{where}.operator", f"Invalid value: {v.show(op or 'Equal')}: operator must "
                                       "be Exists when `key` is empty, which means \"match all "
                                       "values and all keys\"")
        effect = v.enum(e, t, "effect", where, ("NoSchedule", "PreferNoSchedule", "NoExecute"))
        if t.get("tolerationSeconds") is not None:
            v.integer(e, t, "tolerationSeconds", where, -(2**63), 2**63 - 1)
            if effect != "NoExecute":
                e.add(f"{where}.effect", f"Invalid value: {v.show(effect or '')}: effect must be "
                                         "'NoExecute' when `tolerationSeconds` is set")


def _validate_spread(e: Errors, spec: dict) -> None:
    for i, c in enumerate(v.sequence(e, spec, "topologySpreadConstraints", "spec", 32)):
        where = f"spec.topologySpreadConstraints[{i}]"
        if not isinstance(c, dict):
            e.add(where, "Invalid value: must be an object")
            continue
        v.only(e, c, where, {"maxSkew", "topologyKey", "whenUnsatisfiable", "labelSelector",
                             "minDomains", "nodeAffinityPolicy", "nodeTaintsPolicy",
                             "matchLabelKeys"})
        v.integer(e, c, "maxSkew", where, 1, 2**31 - 1, required=True)
        v.string(e, c, "topologyKey", where, required=True, maxlen=316)
        v.enum(e, c, "whenUnsatisfiable", where, ("DoNotSchedule", "ScheduleAnyway"),
               required=True)
        v.integer(e, c, "minDomains", where, 1, 2**31 - 1)
        v.enum(e, c, "nodeAffinityPolicy", where, ("Honor", "Ignore"))
        v.enum(e, c, "nodeTaintsPolicy", where, ("Honor", "Ignore"))
        if "labelSelector" in c:
            _label_selector(e, c["labelSelector"], f"{where}.labelSelector")


def _validate_scheduling(spec: dict, e: Errors) -> None:
    v.string_map(e, spec, "nodeSelector", "spec", labels=True)
    affinity = v.mapping(e, spec, "affinity", "spec")
    if affinity:
        _validate_affinity(e, affinity)
    _validate_tolerations(e, spec)
    _validate_spread(e, spec)
    v.string(e, spec, "schedulerName", "spec", pattern=v.DNS_SUBDOMAIN, maxlen=253)
    v.string(e, spec, "priorityClassName", "spec", pattern=v.DNS_SUBDOMAIN, maxlen=253)
    v.integer(e, spec, "priority", "spec", -(2**31), 2**31 - 1)
    v.enum(e, spec, "preemptionPolicy", "spec", ("PreemptLowerPriority", "Never"))


def default_spec(obj: dict) -> None:
    """What kube-apiserver fills in (the fields kubectl users see in -o yaml), on create and on
    update, before validation: only what is missing is set, and only where the shape is right."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("priority", 0)
    # on update this runs before validation: anything of the wrong shape is left for it
    containers = [c for group in ("initContainers", "containers")
                  if isinstance(spec.get(group), list) for c in spec[group] if isinstance(c, dict)]
    for c in containers:
        image = c.get("image", "")
        if not isinstance(image, str):
            continue
        try:    # the runtime's reference grammar and default (Always for :latest or no tag)
            c.setdefault("imagePullPolicy", registry.default_pull_policy(registry.parse(image)))
        except registry.InvalidImageName:
            pass    # not a reference: the container's InvalidImageName says so on its node
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
    # DefaultTolerationSeconds: pods leave a node that is unreachable or not ready after 300 s
    tolerations = spec.setdefault("tolerations", [])
    if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
        return
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") in (key, None, "") and t.get("effect") in ("NoExecute", None)
                   and (t.get("key") or t.get("operator") == "Exists") for t in tolerations):
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS})


def initial_status(obj: dict) -> None:
    obj["status"] = {"phase": "Pending", "qosClass": qos_class(obj["spec"])}


def defaults(obj: dict) -> None:
    """Everything a new Pod gets."""
    default_spec(obj)
    initial_status(obj)


def qos_class(spec: dict) -> str:
    containers = [*(spec.get("initContainers") or []), *spec.get("containers", [])]
    requests = [c.get("resources", {}).get("requests", {}) for c in containers]
    limits = [c.get("resources", {}).get("limits", {}) for c in containers]
    if not any(requests) and not any(limits):
        return "BestEffort"
    guaranteed = all(
        lim.get(r) is not None and (req.get(r, lim.get(r)) == lim.get(r))
        for req, lim in zip(requests, limits) for r in ("cpu", "memory"))
    return "Guaranteed" if guaranteed else "Burstable"
