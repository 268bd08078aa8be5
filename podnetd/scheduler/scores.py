"""The score plugins that need no pre-filter state: NodeAffinity (preferred terms),
TaintToleration (PreferNoSchedule), NodeResourcesFit (LeastAllocated),
NodeResourcesBalancedAllocation, and SelectorSpread (the pods of one controller across nodes
and zones). Each returns one normalized score (0..100) per feasible node, or None when it has
nothing to say about this pod (kube-scheduler's Skip: every node 0 for it).
"""
from podnetd.scheduler.objects import (CPU, MEMORY, PREFER_NO_SCHEDULE, ZONE, PodInfo,
                                       tolerates)
from podnetd.scheduler.snapshot import NodeInfo, Snapshot

MAX = 100
REGION = "topology.kubernetes.io/region"
ZONE_WEIGHTING = 2 / 3             # SelectorSpread: zones count twice as much as nodes


def default_normalize(raw: list[int], reverse: bool = False) -> list[int]:
    """framework's DefaultNormalizeScore (integer arithmetic)."""
    top = max(raw, default=0)
    if top == 0:
        return [MAX] * len(raw) if reverse else list(raw)
    out = [MAX * s // top for s in raw]
    return [MAX - s for s in out] if reverse else out


def node_affinity(pod: PodInfo, snapshot: Snapshot, feasible: list[NodeInfo]):
    if not pod.preferred_node_affinity:
        return None
    raw = []
    for node in feasible:
        s = 0
        for weight, term in pod.preferred_node_affinity:
            if term.matches(node.name, node.spec.labels):
                s += weight
        raw.append(s)
    return default_normalize(raw)


def taint_toleration(pod: PodInfo, snapshot: Snapshot, feasible: list[NodeInfo]):
    tolerations = tuple(t for t in pod.tolerations if t[3] in ("", PREFER_NO_SCHEDULE))
    raw = []
    for node in feasible:
        raw.append(sum(1 for key, value, effect in node.spec.taints
                       if effect == PREFER_NO_SCHEDULE
                       and not tolerates(tolerations, key, value, effect)))
    if not any(raw):
        return None
    return default_normalize(raw, reverse=True)


def _least(requested: int, capacity: int) -> int:
    if capacity == 0 or requested > capacity:
        return 0
    return (capacity - requested) * MAX // capacity


def least_allocated(pod: PodInfo, snapshot: Snapshot, feasible: list[NodeInfo]):
    """cpu and memory (weight 1 each), counting a missing container request as the defaults."""
    out = []
    for node in feasible:
        alloc = node.spec.allocatable
        total = weights = 0
        for capacity, requested in ((alloc.get(CPU, 0), node.nonzero_cpu + pod.nonzero_cpu),
                                    (alloc.get(MEMORY, 0),
                                     node.nonzero_memory + pod.nonzero_memory)):
            if capacity == 0:
                continue
            total += _least(requested, capacity)
            weights += 1
        out.append(total // weights if weights else 0)
    return out


def balanced_allocation(pod: PodInfo, snapshot: Snapshot, feasible: list[NodeInfo]):
    """1 - the spread of the cpu and memory fractions the node would have requested."""
    out = []
    want_cpu, want_mem = pod.requests.get(CPU, 0), pod.requests.get(MEMORY, 0)
    for node in feasible:
        alloc, used = node.spec.allocatable, node.requested
        fractions = []
        for name, want in ((CPU, want_cpu), (MEMORY, want_mem)):
            capacity = alloc.get(name, 0)
            if capacity:
                fractions.append(min(1.0, (used.get(name, 0) + want) / capacity))
        std = abs(fractions[0] - fractions[1]) / 2 if len(fractions) == 2 else 0.0
        out.append(int((1 - std) * MAX))
    return out


def _zone(labels: dict) -> str:
    region, zone = labels.get(REGION, ""), labels.get(ZONE, "")
    return f"{region}:\x00:{zone}" if region or zone else ""


def selector_spread(pod: PodInfo, snapshot: Snapshot, feasible: list[NodeInfo]):
    """Fewer pods of the same controller on a node (and in its zone) scores higher. Not used
    for a pod with topology spread constraints (they say how to spread it)."""
    if not pod.owner_uid or pod.spread:
        return None
    per_node: dict[str, int] = {}
    for p in snapshot.pods_of_owner(pod.owner_uid):
        if not p.terminating and p.namespace == pod.namespace:
            per_node[p.node_name] = per_node.get(p.node_name, 0) + 1
    raw = [per_node.get(n.name, 0) for n in feasible]
    zones = [_zone(n.spec.labels) for n in feasible]
    per_zone: dict[str, int] = {}
    for z, n in zip(zones, raw):
        if z:
            per_zone[z] = per_zone.get(z, 0) + n
    top_node = max(raw, default=0)
    top_zone = max(per_zone.values(), default=0)
    out = []
    for z, n in zip(zones, raw):
        f = MAX * (top_node - n) / top_node if top_node > 0 else float(MAX)
        if per_zone and z:
            zs = MAX * (top_zone - per_zone[z]) / top_zone if top_zone > 0 else float(MAX)
            f = f * (1 - ZONE_WEIGHTING) + ZONE_WEIGHTING * zs
        out.append(int(f))
    return out


# ImageLocality's thresholds: an image below 23 MB counts as nothing, one container's up to 1 GB
IMAGE_MIN = 23 * 1024 * 1024
IMAGE_MAX_PER_CONTAINER = 1000 * 1024 * 1024


def image_locality(pod: PodInfo, snapshot: Snapshot, feasible: list[NodeInfo]):
    """kube-scheduler's ImageLocality: the sizes of the pod's images a node already holds, each
    scaled by the share of nodes that hold it (an image everywhere says little), clamped to
    [23 MB, 1 GB x containers] and mapped to 0..100. No normalization across nodes."""
    if not pod.images:
        return None
    nodes = snapshot.schedulable_nodes()
    spread = {img: sum(1 for n in nodes if img in n.spec.images) for img in set(pod.images)}
    high = IMAGE_MAX_PER_CONTAINER * len(pod.images)
    out = []
    for node in feasible:
        total = sum(node.spec.images[img] * spread[img] // len(nodes)
                    for img in pod.images if img in node.spec.images)
        total = min(max(total, IMAGE_MIN), high)
        out.append(MAX * (total - IMAGE_MIN) // (high - IMAGE_MIN))
    return out
