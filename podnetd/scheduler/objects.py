"""What the scheduler reads from a Pod or a Node, taken out of the JSON once (kube-scheduler's
framework.PodInfo and the static half of NodeInfo): requests in integer units, host ports,
tolerations, compiled selectors and affinity terms.

The API server validates objects before storing them, but the scheduler does not trust that:
`pod_info(pod, strict=True)` (the pod being scheduled) raises InvalidObject with the field path;
`strict=False` (pods already bound, whose usage must be counted whatever else is wrong with them)
drops a term it cannot read instead. Quantities are always checked: a bound pod whose requests
cannot be read raises too, so the caller can say which object is wrong.
"""
import dataclasses
from decimal import ROUND_CEILING
from typing import Mapping

from podnetd import image_names
from podnetd.runtime.manifest import parse_quantity
from podnetd.scheduler import labels as sel

CPU, MEMORY, PODS, EPHEMERAL = "cpu", "memory", "pods", "ephemeral-storage"
# schedutil.DefaultMilliCPURequest / DefaultMemoryRequest: what a container that requests
# nothing counts as when nodes are scored (not when they are filtered)
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 1024 * 1024
HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
NS_NAME_LABEL = "kubernetes.io/metadata.name"

# the taints the node lifecycle controller puts on a node whose Ready condition is not True
# (TaintNodesByCondition); the scheduler adds them itself when a node does not carry them yet,
# so a NotReady node is refused in kube-scheduler's words whoever noticed first
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
NO_SCHEDULE, NO_EXECUTE, PREFER_NO_SCHEDULE = "NoSchedule", "NoExecute", "PreferNoSchedule"


class InvalidObject(ValueError):
    """An object the scheduler cannot read; the message names it and the field."""


def _d(v) -> dict:
    return v if isinstance(v, dict) else {}


def _l(v) -> list:
    return v if isinstance(v, list) else []


def _str_map(v) -> dict:
    return {k: x for k, x in v.items() if isinstance(k, str) and isinstance(x, str)} \
        if isinstance(v, dict) else {}


def _amount(name: str, value, path: str) -> int:
    """A quantity in the unit the scheduler adds up: millicores for cpu (MilliValue), whole
    units (bytes, pods, devices) for the rest (Value), both rounded up as Kubernetes does."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidObject(f"{path}: {value!r} is not a quantity")
    try:
        q = parse_quantity(value.strip() if isinstance(value, str) else repr(value))
    except ValueError as e:
        raise InvalidObject(f"{path}: {value!r} is not a quantity: {e}") from None
    if q < 0:
        raise InvalidObject(f"{path}: {value!r}: must be greater than or equal to 0")
    if name == CPU:
        q = q * 1000
    return int(q.to_integral_value(ROUND_CEILING))


def resource_list(obj, path: str) -> dict[str, int]:
    return {name: _amount(name, v, f"{path}.{name}") for name, v in _d(obj).items()
            if isinstance(name, str)}


# -- pods ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class AffinityTerm:
    """A pod (anti-)affinity term (framework.AffinityTerm), with its weight when preferred."""
    selector: sel.Selector
    namespaces: frozenset
    ns_selector: sel.Selector | None    # None: only `namespaces`; empty: every namespace
    topology_key: str
    weight: int = 0

    def matches_namespace(self, ns: str, ns_labels: Mapping[str, dict]) -> bool:
        if ns in self.namespaces:
            return True
        if self.ns_selector is None:
            return False
        return self.ns_selector.matches(ns_labels.get(ns) or {NS_NAME_LABEL: ns})

    def matches(self, ns: str, labels: Mapping[str, str], ns_labels: Mapping[str, dict]) -> bool:
        return self.matches_namespace(ns, ns_labels) and self.selector.matches(labels)


@dataclasses.dataclass(frozen=True, slots=True)
class SpreadConstraint:
    max_skew: int
    topology_key: str
    hard: bool                  # whenUnsatisfiable DoNotSchedule (else ScheduleAnyway)
    selector: sel.Selector
    min_domains: int
    honor_affinity: bool        # nodeAffinityPolicy Honor (the default)
    honor_taints: bool          # nodeTaintsPolicy Honor (default Ignore)


@dataclasses.dataclass(slots=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    labels: dict
    node_name: str
    terminating: bool
    requests: dict              # resource -> amount (cpu in millicores), as filtered
    checked: tuple              # (resource, amount > 0) to check, in fitsRequest's order
    nonzero_cpu: int            # as scored: a container without a request counts the default
    nonzero_memory: int
    host_ports: tuple           # (ip, protocol, port); ip "0.0.0.0" for any
    tolerations: tuple          # (key, operator, value, effect)
    node_selector: dict
    required_node_affinity: sel.NodeSelector | None
    preferred_node_affinity: tuple    # (weight, NodeSelectorTerm)
    required_affinity: tuple          # AffinityTerm
    required_anti_affinity: tuple
    preferred_affinity: tuple
    preferred_anti_affinity: tuple
    spread: tuple                     # SpreadConstraint
    owner_uid: str | None             # the controller's uid (ownerReferences controller=true)
    priority: int
    images: tuple = ()                # its containers' images, normalized (image_name)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def has_affinity_terms(self) -> bool:
        return bool(self.required_affinity or self.required_anti_affinity
                    or self.preferred_affinity or self.preferred_anti_affinity)


def _container_requests(c: dict, path: str) -> dict[str, int]:
    res = _d(c.get("resources"))
    req = resource_list(res.get("requests"), f"{path}.resources.requests")
    # API defaulting: a limit without a request requests the limit
    for name, amount in resource_list(res.get("limits"), f"{path}.resources.limits").items():
        req.setdefault(name, amount)
    return req


def _add(into: dict, other: dict) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


def _max(into: dict, other: dict) -> None:
    for k, v in other.items():
        if v > into.get(k, 0):
            into[k] = v


def pod_requests(spec: dict, path: str = "spec", nonzero: bool = False) -> dict[str, int]:
    """resourcehelper.PodRequests: the app containers and sidecars (init containers with
    restartPolicy Always) added up, the larger of that and what any init container needs while
    it runs (itself plus the sidecars started before it), plus the pod overhead. `nonzero`
    counts a container's missing cpu/memory request as the scoring defaults."""
    return _pod_requests(_read_containers(spec, path), spec, path)[1 if nonzero else 0]


def _read_containers(spec: dict, path: str) -> list:
    """(is init, is sidecar, requests) of every container, each read once."""
    out = []
    for group in ("containers", "initContainers"):
        for i, c in enumerate(_l(spec.get(group))):
            c = _d(c)
            out.append((group == "initContainers", c.get("restartPolicy") == "Always",
                        _container_requests(c, f"{path}.{group}[{i}]")))
    return out


def _with_defaults(r: dict) -> dict:
    if CPU in r and MEMORY in r:
        return r
    r = dict(r)
    r.setdefault(CPU, DEFAULT_MILLI_CPU)
    r.setdefault(MEMORY, DEFAULT_MEMORY)
    return r


def _pod_requests(containers: list, spec: dict, path: str) -> tuple[dict, dict]:
    """(requests as filtered, requests with the scoring defaults)."""
    results = []
    overhead = resource_list(spec.get("overhead"), f"{path}.overhead")
    for defaults in (False, True):
        total: dict[str, int] = {}
        sidecars: dict[str, int] = {}
        init_peak: dict[str, int] = {}
        for init, sidecar, r in containers:
            if defaults:
                r = _with_defaults(r)
            if not init:
                _add(total, r)
                continue
            if sidecar:
                _add(total, r)
                _add(sidecars, r)
                running = dict(sidecars)
            else:
                running = dict(r)
                _add(running, sidecars)
            _max(init_peak, running)
        _max(total, init_peak)
        _add(total, overhead)
        results.append(total)
    return results[0], results[1]


def _checked(requests: dict) -> tuple:
    first = [(k, requests[k]) for k in (CPU, MEMORY) if requests.get(k, 0) > 0]
    rest = [(k, v) for k, v in sorted(requests.items()) if k not in (CPU, MEMORY, PODS) and v > 0]
    return tuple(first + rest)


def _host_ports(spec: dict) -> tuple:
    out = []
    containers = _l(spec.get("containers")) + [
        c for c in _l(spec.get("initContainers")) if _d(c).get("restartPolicy") == "Always"]
    for c in containers:
        for p in _l(_d(c).get("ports")):
            p = _d(p)
            port = p.get("hostPort")
            if isinstance(port, int) and not isinstance(port, bool) and port > 0:
                ip = p.get("hostIP") or "0.0.0.0"
                out.append((ip if isinstance(ip, str) else "0.0.0.0",
                            p.get("protocol") or "TCP", port))
    return tuple(out)


MEMORY_PRESSURE = "node.kubernetes.io/memory-pressure"
MAX_NODE_IMAGES = 50        # the kubelet reports at most 50 images (nodeStatusMaxImages)


def best_effort(spec: dict) -> bool:
    """QoS class BestEffort: no container asks for or is limited to any resource."""
    for group in ("initContainers", "containers"):
        for c in _l(spec.get(group)):
            res = _d(_d(c).get("resources"))
            if _d(res.get("requests")) or _d(res.get("limits")):
                return False
    return True


def scheduling_tolerations(spec: dict) -> tuple:
    """The pod's tolerations as the scheduler applies them: Kubernetes takes pods with
    requests or limits to cope with memory pressure (they tolerate its NoSchedule taint); only
    best-effort pods stay off such a node."""
    own = tolerations_of(spec)
    if best_effort(spec):
        return own
    return own + ((MEMORY_PRESSURE, "Exists", "", NO_SCHEDULE),)


def tolerations_of(spec: dict) -> tuple:
    """A pod spec's tolerations as (key, operator, value, effect) tuples (what tolerates() reads)."""
    out = []
    for t in _l(spec.get("tolerations")):
        t = _d(t)
        out.append((t.get("key") or "", t.get("operator") or "Equal", t.get("value") or "",
                    t.get("effect") or ""))
    return tuple(out)


def tolerates(tolerations, key: str, value: str, effect: str) -> bool:
    """v1.Toleration.ToleratesTaint, for any of the tolerations."""
    for t_key, op, t_value, t_effect in tolerations:
        if t_effect and t_effect != effect:
            continue
        if t_key and t_key != key:
            continue
        if op == "Exists" or (op == "Equal" and t_value == value):
            return True
    return False


class _Reader:
    """Reads selectors and terms: strictly (raise with the path) or leniently (skip)."""

    def __init__(self, strict: bool, what: str):
        self.strict, self.what = strict, what

    def fail(self, msg: str):
        raise InvalidObject(f"{self.what}: {msg}")

    def term(self, t, path: str, own_ns: str, weight: int = 0) -> AffinityTerm | None:
        try:
            if not isinstance(t, dict):
                raise sel.SelectorError(f"{path}: must be an object")
            key = t.get("topologyKey")
            if not isinstance(key, str) or not key:
                raise sel.SelectorError(f"{path}.topologyKey: Required value: can not be empty")
            selector = sel.from_label_selector(t.get("labelSelector"), f"{path}.labelSelector")
            names = t.get("namespaces") or []
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise sel.SelectorError(f"{path}.namespaces: must be a list of strings")
            ns_sel = t.get("namespaceSelector")
            ns_selector = None if ns_sel is None else sel.from_label_selector(
                ns_sel, f"{path}.namespaceSelector")
            if not names and ns_selector is None:
                names = [own_ns]            # no namespaces named: the pod's own
            return AffinityTerm(selector, frozenset(names), ns_selector, key, weight)
        except sel.SelectorError as e:
            if self.strict:
                self.fail(str(e))
            return None

    def terms(self, obj, path: str, own_ns: str, weighted: bool) -> tuple:
        out = []
        for i, t in enumerate(_l(obj)):
            p = f"{path}[{i}]"
            if weighted:
                t = _d(t)
                w = t.get("weight")
                if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= 100:
                    if self.strict:
                        self.fail(f"{p}.weight: must be in the range 1-100")
                    continue
                term = self.term(t.get("podAffinityTerm"), f"{p}.podAffinityTerm", own_ns, w)
            else:
                term = self.term(t, p, own_ns)
            if term is not None:
                out.append(term)
        return tuple(out)

    def spread(self, spec: dict, pod_labels: dict) -> tuple:
        out = []
        for i, c in enumerate(_l(spec.get("topologySpreadConstraints"))):
            p = f"spec.topologySpreadConstraints[{i}]"
            try:
                c = c if isinstance(c, dict) else {}
                skew, key = c.get("maxSkew"), c.get("topologyKey")
                when = c.get("whenUnsatisfiable")
                if not isinstance(skew, int) or isinstance(skew, bool) or skew < 1:
                    raise sel.SelectorError(f"{p}.maxSkew: must be greater than zero")
                if not isinstance(key, str) or not key:
                    raise sel.SelectorError(f"{p}.topologyKey: Required value: can not be empty")
                if when not in ("DoNotSchedule", "ScheduleAnyway"):
                    raise sel.SelectorError(f"{p}.whenUnsatisfiable: Unsupported value: {when!r}:"
                                            ' supported values: "DoNotSchedule", "ScheduleAnyway"')
                selector = sel.from_label_selector(c.get("labelSelector"), f"{p}.labelSelector")
                # matchLabelKeys: the pod's own values of these keys narrow the selector
                extra = [sel.requirement(k, sel.IN, [pod_labels[k]], f"{p}.matchLabelKeys")
                         for k in _l(c.get("matchLabelKeys")) if k in pod_labels]
                if extra and not selector.nothing:
                    selector = sel.Selector(selector.requirements + tuple(extra))
                min_domains = c.get("minDomains") or 1
                if not isinstance(min_domains, int) or min_domains < 1:
                    raise sel.SelectorError(f"{p}.minDomains: must be greater than zero")
                out.append(SpreadConstraint(
                    skew, key, when == "DoNotSchedule", selector, min_domains,
                    c.get("nodeAffinityPolicy") != "Ignore", c.get("nodeTaintsPolicy") == "Honor"))
            except sel.SelectorError as e:
                if self.strict:
                    self.fail(str(e))
        return tuple(out)

    def node_affinity(self, aff: dict):
        req = aff.get("requiredDuringSchedulingIgnoredDuringExecution")
        required = None
        if req is not None:
            try:
                required = sel.node_selector(req, "spec.affinity.nodeAffinity."
                                                  "requiredDuringSchedulingIgnoredDuringExecution")
            except sel.SelectorError as e:
                if self.strict:
                    self.fail(str(e))
                required = sel.NodeSelector(())
        preferred = []
        for i, t in enumerate(_l(aff.get("preferredDuringSchedulingIgnoredDuringExecution"))):
            t = _d(t)
            w = t.get("weight")
            path = ("spec.affinity.nodeAffinity."
                    f"preferredDuringSchedulingIgnoredDuringExecution[{i}]")
            try:
                if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= 100:
                    raise sel.SelectorError(f"{path}.weight: must be in the range 1-100")
                preferred.append((w, sel.node_selector_term(t.get("preference"),
                                                            f"{path}.preference")))
            except sel.SelectorError as e:
                if self.strict:
                    self.fail(str(e))
        return required, tuple(preferred)


def pod_info(pod: dict, strict: bool = True) -> PodInfo:
    """The scheduler's reading of a Pod (InvalidObject if it cannot be read; see the module)."""
    if not isinstance(pod, dict):
        raise InvalidObject("a pod must be an object")
    meta, spec = _d(pod.get("metadata")), _d(pod.get("spec"))
    ns = meta.get("namespace") or "default"
    name = meta.get("name")
    if not isinstance(name, str) or not name or not isinstance(ns, str):
        raise InvalidObject("pod: metadata.name: Required value")
    what = f"pod {ns}/{name}"
    uid = meta.get("uid")
    uid = uid if isinstance(uid, str) and uid else f"{ns}/{name}"
    pod_labels = _str_map(meta.get("labels"))
    r = _Reader(strict, what)
    try:
        requests, nonzero = _pod_requests(_read_containers(spec, "spec"), spec, "spec")
    except InvalidObject as e:
        raise InvalidObject(f"{what}: {e}") from None
    aff = _d(spec.get("affinity"))
    pa, paa = _d(aff.get("podAffinity")), _d(aff.get("podAntiAffinity"))
    base = "spec.affinity.podAffinity"
    anti = "spec.affinity.podAntiAffinity"
    req_key = "requiredDuringSchedulingIgnoredDuringExecution"
    pref_key = "preferredDuringSchedulingIgnoredDuringExecution"
    required_na, preferred_na = r.node_affinity(_d(aff.get("nodeAffinity")))
    owner = None
    for ref in _l(meta.get("ownerReferences")):
        if _d(ref).get("controller") is True and isinstance(ref.get("uid"), str):
            owner = ref["uid"]
            break
    priority = spec.get("priority")
    return PodInfo(
        uid=uid, namespace=ns, name=name, labels=pod_labels,
        node_name=spec.get("nodeName") if isinstance(spec.get("nodeName"), str) else "",
        terminating=meta.get("deletionTimestamp") is not None,
        requests=requests, checked=_checked(requests), nonzero_cpu=nonzero.get(CPU, 0),
        nonzero_memory=nonzero.get(MEMORY, 0),
        host_ports=_host_ports(spec), tolerations=scheduling_tolerations(spec),
        node_selector=_str_map(spec.get("nodeSelector")),
        required_node_affinity=required_na, preferred_node_affinity=preferred_na,
        required_affinity=r.terms(pa.get(req_key), f"{base}.{req_key}", ns, False),
        required_anti_affinity=r.terms(paa.get(req_key), f"{anti}.{req_key}", ns, False),
        preferred_affinity=r.terms(pa.get(pref_key), f"{base}.{pref_key}", ns, True),
        preferred_anti_affinity=r.terms(paa.get(pref_key), f"{anti}.{pref_key}", ns, True),
        spread=r.spread(spec, pod_labels), owner_uid=owner,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else 0,
        images=tuple(image_name(_d(c).get("image")) for group in ("initContainers", "containers")
                     for c in _l(spec.get(group)) if isinstance(_d(c).get("image"), str)))


def matches_node_affinity(pod: PodInfo, name: str, node_labels: Mapping[str, str]) -> bool:
    """nodeSelector (every pair) and required node affinity (any term), as NodeAffinity
    filters and PodTopologySpread's nodeAffinityPolicy Honor use them."""
    for k, v in pod.node_selector.items():
        if node_labels.get(k) != v:
            return False
    return pod.required_node_affinity is None or \
        pod.required_node_affinity.matches(name, node_labels)


# -- nodes ---------------------------------------------------------------------------------

def image_name(name: str) -> str:
    """An image reference as ImageLocality compares them: the name the node's image store keeps
    it under (Docker Hub's implied registry and library/ dropped, ":latest" added)."""
    return image_names.normalize(name)


@dataclasses.dataclass(slots=True)
class NodeSpec:
    """The static half of a NodeInfo, read from the Node object."""
    name: str
    labels: dict
    unschedulable: bool
    taints: tuple               # (key, value, effect), with the condition taints implied
    allocatable: dict           # resource -> amount (cpu in millicores)
    images: dict = dataclasses.field(default_factory=dict)   # image name -> size in bytes


def _ready_status(status: dict) -> str:
    for c in _l(status.get("conditions")):
        if _d(c).get("type") == "Ready":
            return c.get("status") or "Unknown"
    return "Unknown"


def node_spec(node: dict) -> NodeSpec:
    if not isinstance(node, dict):
        raise InvalidObject("a node must be an object")
    meta, spec, status = (_d(node.get(k)) for k in ("metadata", "spec", "status"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidObject("node: metadata.name: Required value")
    taints = []
    for t in _l(spec.get("taints")):
        t = _d(t)
        if isinstance(t.get("key"), str) and t.get("effect") in (
                NO_SCHEDULE, NO_EXECUTE, PREFER_NO_SCHEDULE):
            taints.append((t["key"], t.get("value") or "", t["effect"]))
    ready = _ready_status(status)
    if ready != "True":
        implied = TAINT_NOT_READY if ready == "False" else TAINT_UNREACHABLE
        if not any(k in (TAINT_NOT_READY, TAINT_UNREACHABLE) and e == NO_SCHEDULE
                   for k, _, e in taints):
            taints.append((implied, "", NO_SCHEDULE))
    try:
        allocatable = resource_list(status.get("allocatable") or status.get("capacity"),
                                    "status.allocatable")
    except InvalidObject as e:
        raise InvalidObject(f"node {name}: {e}") from None
    images = {}
    for img in _l(status.get("images"))[:MAX_NODE_IMAGES]:
        size = _d(img).get("sizeBytes")
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            for n in _l(_d(img).get("names")):
                if isinstance(n, str) and n:
                    images[image_name(n)] = size
    return NodeSpec(name, _str_map(meta.get("labels")), spec.get("unschedulable") is True,
                    tuple(taints), allocatable, images)
