"""PodTopologySpread: DoNotSchedule constraints as a filter (the skew a placement would cause,
against the least loaded domain), ScheduleAnyway constraints as a score, as kube-scheduler's
podtopologyspread plugin.

Pods are counted per domain (the node's value of the topology key) among the nodes that carry
every key of the pod's constraints and pass its node inclusion policies (nodeAffinityPolicy
Honor by default, nodeTaintsPolicy Ignore by default); only pods in the incoming pod's namespace
that match the selector and are not being deleted count.
"""
import dataclasses
import math

from podnetd.scheduler.objects import (HOSTNAME, NO_EXECUTE, NO_SCHEDULE, PodInfo,
                                       SpreadConstraint, matches_node_affinity, tolerates)
from podnetd.scheduler.snapshot import NodeInfo, Snapshot

SPREAD = "node(s) didn't match pod topology spread constraints"
SPREAD_MISSING_LABEL = SPREAD + " (missing required label)"


def _has_keys(labels: dict, constraints) -> bool:
    for c in constraints:
        if c.topology_key not in labels:
            return False
    return True


def _included(c: SpreadConstraint, pod: PodInfo, node: NodeInfo) -> bool:
    if c.honor_affinity and not matches_node_affinity(pod, node.name, node.spec.labels):
        return False
    if c.honor_taints:
        for key, value, effect in node.spec.taints:
            if effect in (NO_SCHEDULE, NO_EXECUTE) and not tolerates(pod.tolerations, key,
                                                                     value, effect):
                return False
    return True


def _count(pod: PodInfo, snapshot: Snapshot, c: SpreadConstraint) -> dict[str, int]:
    """node name -> the pods there that this constraint counts."""
    out: dict[str, int] = {}
    for p in snapshot.pods_matching(c.selector, (pod.namespace,)):
        if not p.terminating:
            out[p.node_name] = out.get(p.node_name, 0) + 1
    return out


@dataclasses.dataclass(slots=True)
class FilterState:
    constraints: tuple
    counts: list                   # per constraint: domain value -> matching pods
    minimum: list                  # per constraint: the least loaded domain's count


def pre_filter(pod: PodInfo, snapshot: Snapshot, nodes: list[NodeInfo]) -> FilterState | None:
    cons = tuple(c for c in pod.spread if c.hard)
    if not cons:
        return None
    counts, minimum = [], []
    per_node = [_count(pod, snapshot, c) for c in cons]
    for i, c in enumerate(cons):
        domains: dict[str, int] = {}
        for node in nodes:
            labels = node.spec.labels
            if not _has_keys(labels, cons) or not _included(c, pod, node):
                continue
            v = labels[c.topology_key]
            domains[v] = domains.get(v, 0) + per_node[i].get(node.name, 0)
        counts.append(domains)
        # fewer domains than minDomains: the global minimum is taken as 0
        minimum.append(0 if len(domains) < c.min_domains else min(domains.values()))
    return FilterState(cons, counts, minimum)


def filter_node(state: FilterState, pod: PodInfo, node: NodeInfo):
    labels = node.spec.labels
    for i, c in enumerate(state.constraints):
        v = labels.get(c.topology_key)
        if v is None:
            return (SPREAD_MISSING_LABEL,)
        self_match = 1 if c.selector.matches(pod.labels) else 0
        skew = state.counts[i].get(v, 0) + self_match - state.minimum[i]
        if skew > c.max_skew:
            return (SPREAD,)
    return None


def score(pod: PodInfo, snapshot: Snapshot, feasible: list[NodeInfo],
          nodes: list[NodeInfo]) -> list[int] | None:
    cons = tuple(c for c in pod.spread if not c.hard)
    if not cons:
        return None
    ignored = set()
    pairs: list[dict[str, int]] = [{} for _ in cons]
    for node in feasible:
        labels = node.spec.labels
        if not _has_keys(labels, cons):
            ignored.add(node.name)       # scored 0
            continue
        for i, c in enumerate(cons):
            if c.topology_key != HOSTNAME:
                pairs[i].setdefault(labels[c.topology_key], 0)
    weights = []
    for i, c in enumerate(cons):
        size = len(feasible) - len(ignored) if c.topology_key == HOSTNAME else len(pairs[i])
        weights.append(math.log(size + 2))
    per_node = [_count(pod, snapshot, c) for c in cons]
    for i, c in enumerate(cons):
        if c.topology_key == HOSTNAME:
            continue
        for node in nodes:
            labels = node.spec.labels
            v = labels.get(c.topology_key)
            if v not in pairs[i] or not _has_keys(labels, cons) or not _included(c, pod, node):
                continue
            pairs[i][v] += per_node[i].get(node.name, 0)
    raw = []
    for node in feasible:
        if node.name in ignored:
            raw.append(None)
            continue
        s = 0.0
        labels = node.spec.labels
        for i, c in enumerate(cons):
            if c.topology_key == HOSTNAME:
                n = per_node[i].get(node.name, 0)
            else:
                n = pairs[i][labels[c.topology_key]]
            s += n * weights[i] + (c.max_skew - 1)
        raw.append(math.floor(s + 0.5))          # Go's math.Round (s >= 0)
    valid = [s for s in raw if s is not None]
    if not valid:
        return [0] * len(raw)
    lo, hi = min(valid), max(valid)
    out = []
    for s in raw:
        if s is None:
            out.append(0)
        elif hi == 0:
            out.append(100)
        else:
            out.append(100 * (hi + lo - s) // hi)
    return out
