"""InterPodAffinity: required pod affinity and anti-affinity as a filter (the incoming pod's terms,
and the required anti-affinity of the pods already placed against the incoming pod), preferred
terms as a score, as kube-scheduler's interpodaffinity plugin.

Counts are per topology pair (topologyKey, the node's value of it). The pods a term selects are
found through the snapshot's label index; the terms of placed pods are read from the snapshot's
collapsed term table, so the cost follows the pods and distinct terms involved, not all pods.
"""
import collections
import dataclasses

from podnetd.scheduler.objects import PodInfo
from podnetd.scheduler.snapshot import NodeInfo, Snapshot

AFFINITY = "node(s) didn't match pod affinity rules"
ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"
EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing pods anti-affinity rules"
HARD_POD_AFFINITY_WEIGHT = 1       # InterPodAffinityArgs.hardPodAffinityWeight default


@dataclasses.dataclass(slots=True)
class FilterState:
    affinity_counts: dict          # (key, value) -> pods matching all the pod's affinity terms
    anti_counts: dict              # (key, value) -> pods matching one of its anti-affinity terms
    existing_anti: dict            # (key, value) -> placed pods whose anti-affinity refuses it
    self_match: bool               # the pod matches all its own affinity terms

    def active(self, pod: PodInfo) -> bool:
        return bool(pod.required_affinity or pod.required_anti_affinity or self.existing_anti)


def _label(snapshot: Snapshot, node_name: str, key: str):
    node = snapshot.nodes.get(node_name)
    if node is None or node.spec is None:
        return None
    return node.spec.labels.get(key)


def pre_filter(pod: PodInfo, snapshot: Snapshot) -> FilterState:
    nsl = snapshot.namespace_labels
    existing = collections.Counter()
    for term, per_node in snapshot.terms["required_anti_affinity"].items():
        if term.matches(pod.namespace, pod.labels, nsl):
            for node_name, n in per_node.items():
                v = _label(snapshot, node_name, term.topology_key)
                if v is not None:
                    existing[(term.topology_key, v)] += n
    affinity = collections.Counter()
    terms = pod.required_affinity
    if terms:
        first, rest = terms[0], terms[1:]
        for p in snapshot.pods_matching(first.selector, snapshot.namespaces_of(first)):
            if all(t.matches(p.namespace, p.labels, nsl) for t in rest):
                for t in terms:
                    v = _label(snapshot, p.node_name, t.topology_key)
                    if v is not None:
                        affinity[(t.topology_key, v)] += 1
    anti = collections.Counter()
    for t in pod.required_anti_affinity:
        for p in snapshot.pods_matching(t.selector, snapshot.namespaces_of(t)):
            v = _label(snapshot, p.node_name, t.topology_key)
            if v is not None:
                anti[(t.topology_key, v)] += 1
    self_match = all(t.matches(pod.namespace, pod.labels, nsl) for t in terms)
    return FilterState(dict(affinity), dict(anti), dict(existing), self_match)


def filter_node(state: FilterState, pod: PodInfo, node: NodeInfo):
    labels = node.spec.labels
    if pod.required_affinity:
        pods_exist = True
        for t in pod.required_affinity:
            v = labels.get(t.topology_key)
            if v is None:
                return (AFFINITY,)         # every topology key must be on the node
            if state.affinity_counts.get((t.topology_key, v), 0) <= 0:
                pods_exist = False
        # the first pod of a group with affinity to itself may go anywhere its topology exists
        if not pods_exist and not (not state.affinity_counts and state.self_match):
            return (AFFINITY,)
    for t in pod.required_anti_affinity:
        v = labels.get(t.topology_key)
        if v is not None and state.anti_counts.get((t.topology_key, v), 0) > 0:
            return (ANTI_AFFINITY,)
    if state.existing_anti:
        for (k, v), n in state.existing_anti.items():
            if n > 0 and labels.get(k) == v:
                return (EXISTING_ANTI_AFFINITY,)
    return None


def score(pod: PodInfo, snapshot: Snapshot, feasible: list[NodeInfo]) -> list[int] | None:
    """Normalized 0..100 per feasible node, or None when nothing applies (the plugin skips)."""
    nsl = snapshot.namespace_labels
    topo: dict[str, dict[str, int]] = collections.defaultdict(lambda: collections.defaultdict(int))
    touched = False
    for terms, sign in ((pod.preferred_affinity, 1), (pod.preferred_anti_affinity, -1)):
        for t in terms:
            touched = True
            for p in snapshot.pods_matching(t.selector, snapshot.namespaces_of(t)):
                v = _label(snapshot, p.node_name, t.topology_key)
                if v is not None:
                    topo[t.topology_key][v] += sign * t.weight
    for kind, sign in (("required_affinity", 1), ("preferred_affinity", 1),
                       ("preferred_anti_affinity", -1)):
        for term, per_node in snapshot.terms[kind].items():
            if not term.matches(pod.namespace, pod.labels, nsl):
                continue
            touched = True
            weight = HARD_POD_AFFINITY_WEIGHT if kind == "required_affinity" else term.weight
            for node_name, n in per_node.items():
                v = _label(snapshot, node_name, term.topology_key)
                if v is not None:
                    topo[term.topology_key][v] += sign * weight * n
    if not touched:
        return None
    raw = []
    for node in feasible:
        s = 0
        labels = node.spec.labels
        for key, values in topo.items():
            v = labels.get(key)
            if v is not None:
                s += values.get(v, 0)
        raw.append(s)
    lo, hi = min(raw), max(raw)
    if hi == lo:
        return [0] * len(raw)
    return [int(100 * (s - lo) / (hi - lo)) for s in raw]
