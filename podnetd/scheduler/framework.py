"""One scheduling decision, as kube-scheduler's framework takes it: pre-filter (the cluster-wide
counts of inter-pod affinity and topology spread), filter every node (plugins in the default
order, the first that refuses a node gives its reasons), score the feasible nodes (each plugin
normalized to 0..100, times its default weight, summed) and take the best, ties broken by a
random choice seeded with the pod's uid (identical pods do not all pick the same node, and the
same pod in the same cluster always gets the same answer).

When no node fits, the message is kube-scheduler's FitError:
`0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient
memory.` (each reason with the number of nodes that gave it, the "N reason" strings sorted as
strings). Preemption is not done, so its " preemption: ..." part never follows.
"""
import dataclasses
import random

from podnetd.scheduler import affinity, filters, scores, spread
from podnetd.scheduler.objects import InvalidObject, PodInfo, pod_info
from podnetd.scheduler.snapshot import NodeInfo, Snapshot

DEFAULT_SCHEDULER = "default-scheduler"
NO_NODES = "no nodes available to schedule pods"

# kube-scheduler's default score plugins and weights (SelectorSpread had weight 1 before it was
# folded into PodTopologySpread's system defaults)
SCORE_PLUGINS = (
    ("TaintToleration", 3, scores.taint_toleration),
    ("NodeAffinity", 2, scores.node_affinity),
    ("NodeResourcesFit", 1, scores.least_allocated),
    ("NodeResourcesBalancedAllocation", 1, scores.balanced_allocation),
    ("InterPodAffinity", 2, lambda pod, snap, feasible: affinity.score(pod, snap, feasible)),
    ("PodTopologySpread", 2, None),            # needs every node: called below
    ("SelectorSpread", 1, scores.selector_spread),
    ("ImageLocality", 1, scores.image_locality),
)


@dataclasses.dataclass
class Result:
    """node_name: where to bind, or None. message: "Successfully assigned NS/NAME to NODE"
    (the Scheduled event's text) or the FitError / error text (the FailedScheduling event's and
    the PodScheduled=False condition's message). reasons: reason -> number of nodes that gave
    it. error: the pod itself could not be read (condition reason SchedulerError, not
    Unschedulable). scores: the total score of each feasible node (for debugging)."""
    node_name: str | None
    message: str
    reasons: dict = dataclasses.field(default_factory=dict)
    node_reasons: dict = dataclasses.field(default_factory=dict)   # node -> its reasons
    scores: dict = dataclasses.field(default_factory=dict)
    error: bool = False
    pod: PodInfo | None = None      # the pod as read: hand it to snapshot.assume

    @property
    def reason(self) -> str:
        """The PodScheduled condition's reason."""
        if self.node_name:
            return ""
        return "SchedulerError" if self.error else "Unschedulable"


def fit_error_message(num_nodes: int, reasons: dict[str, int]) -> str:
    parts = sorted(f"{n} {reason}" for reason, n in reasons.items())
    msg = f"0/{num_nodes} nodes are available:"
    if parts:
        msg += f" {', '.join(parts)}."
    return msg


def wants_scheduling(pod: dict, scheduler_name: str = DEFAULT_SCHEDULER) -> bool:
    """A pod this scheduler should place: not bound, for this scheduler, not being deleted, not
    finished, with no scheduling gate left."""
    if not isinstance(pod, dict):
        return False
    meta, spec, status = (pod.get(k) if isinstance(pod.get(k), dict) else {}
                          for k in ("metadata", "spec", "status"))
    return (not spec.get("nodeName")
            and (spec.get("schedulerName") or DEFAULT_SCHEDULER) == scheduler_name
            and meta.get("deletionTimestamp") is None
            and status.get("phase") not in ("Succeeded", "Failed")
            and not spec.get("schedulingGates"))


def queue_sort_key(pod: dict) -> tuple:
    """PrioritySort: higher spec.priority first, then the older pod (creationTimestamp is
    RFC 3339 in UTC, so it sorts as a string)."""
    meta = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    prio = spec.get("priority")
    prio = prio if isinstance(prio, int) and not isinstance(prio, bool) else 0
    return (-prio, str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))


def find_feasible(pod: PodInfo, snapshot: Snapshot, nodes: list[NodeInfo]):
    """(feasible nodes, node name -> reasons of the others)."""
    aff = affinity.pre_filter(pod, snapshot)
    aff = aff if aff.active(pod) else None
    spr = spread.pre_filter(pod, snapshot, nodes)
    feasible, refused = [], {}
    node_filters = filters.NODE_FILTERS
    for node in nodes:
        why = None
        for f in node_filters:
            why = f(pod, node)
            if why:
                break
        if not why and spr is not None:
            why = spread.filter_node(spr, pod, node)
        if not why and aff is not None:
            why = affinity.filter_node(aff, pod, node)
        if why:
            refused[node.name] = why
        else:
            feasible.append(node)
    return feasible, refused


def score_nodes(pod: PodInfo, snapshot: Snapshot, feasible: list[NodeInfo],
                nodes: list[NodeInfo]) -> list[int]:
    totals = [0] * len(feasible)
    for _name, weight, plugin in SCORE_PLUGINS:
        if plugin is None:
            s = spread.score(pod, snapshot, feasible, nodes)
        else:
            s = plugin(pod, snapshot, feasible)
        if s is None:
            continue
        for i, v in enumerate(s):
            totals[i] += v * weight
    return totals


def schedule(pod: dict | PodInfo, snapshot: Snapshot) -> Result:
    """Where the pod should go given the snapshot. Does not change the snapshot: call
    snapshot.assume(result.pod, result.node_name) once the decision is taken, before the next
    pod. The pod must not be in the snapshot itself (forget it first if it was assumed)."""
    try:
        info = pod if isinstance(pod, PodInfo) else pod_info(pod, strict=True)
    except InvalidObject as e:
        return Result(None, str(e), error=True)
    nodes = snapshot.schedulable_nodes()
    if not nodes:
        return Result(None, NO_NODES, pod=info)
    feasible, refused = find_feasible(info, snapshot, nodes)
    if not feasible:
        counts: dict[str, int] = {}
        for why in refused.values():
            for r in why:
                counts[r] = counts.get(r, 0) + 1
        return Result(None, fit_error_message(len(nodes), counts), counts, refused, pod=info)
    if len(feasible) == 1:          # kube-scheduler does not score a single candidate
        chosen, totals = feasible[0], {feasible[0].name: 0}
    else:
        s = score_nodes(info, snapshot, feasible, nodes)
        totals = {n.name: v for n, v in zip(feasible, s)}
        best = max(s)
        ties = sorted(n.name for n, v in zip(feasible, s) if v == best)
        chosen = snapshot.nodes[random.Random(info.uid).choice(ties)]
    return Result(chosen.name, f"Successfully assigned {info.key} to {chosen.name}",
                  node_reasons=refused, scores=totals, pod=info)
