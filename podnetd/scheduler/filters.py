"""The per-node filter plugins that need no cluster-wide state, in kube-scheduler's order and
words: NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit.

Each takes the pod and a node and returns None when the node passes, else the reasons (a tuple
of kube-scheduler's reason texts; NodeResourcesFit can give several for one node).
"""
from podnetd.scheduler.objects import (NO_EXECUTE, NO_SCHEDULE, PODS,
                                       TAINT_UNSCHEDULABLE, PodInfo, matches_node_affinity,
                                       tolerates)
from podnetd.scheduler.snapshot import NodeInfo

UNSCHEDULABLE = "node(s) were unschedulable"
NODE_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
NODE_PORTS = "node(s) didn't have free ports for the requested pod ports"
TOO_MANY_PODS = "Too many pods"


def untolerated_taint(taint) -> str:
    key, value, _ = taint
    return f"node(s) had untolerated taint {{{key}: {value}}}"


def insufficient(resource: str) -> str:
    return f"Insufficient {resource}"


def node_unschedulable(pod: PodInfo, node: NodeInfo):
    # a pod that tolerates the unschedulable taint goes to a cordoned node (as DaemonSets do)
    if node.spec.unschedulable and not tolerates(pod.tolerations, TAINT_UNSCHEDULABLE, "",
                                                 NO_SCHEDULE):
        return (UNSCHEDULABLE,)
    return None


def taint_toleration(pod: PodInfo, node: NodeInfo):
    """The first NoSchedule/NoExecute taint the pod does not tolerate."""
    for taint in node.spec.taints:
        key, value, effect = taint
        if effect in (NO_SCHEDULE, NO_EXECUTE) and not tolerates(pod.tolerations, key, value,
                                                                 effect):
            return (untolerated_taint(taint),)
    return None


def node_affinity(pod: PodInfo, node: NodeInfo):
    if matches_node_affinity(pod, node.name, node.spec.labels):
        return None
    return (NODE_AFFINITY,)


def node_ports(pod: PodInfo, node: NodeInfo):
    for ip, proto, port in pod.host_ports:
        if node.port_conflict(ip, proto, port):
            return (NODE_PORTS,)
    return None


def node_resources_fit(pod: PodInfo, node: NodeInfo):
    """fitsRequest: the pod count, then each resource the pod requests (a request of zero is
    never refused) against allocatable minus what the node's pods already request."""
    alloc, used = node.spec.allocatable, node.requested
    reasons = [TOO_MANY_PODS] if len(node.pods) + 1 > alloc.get(PODS, 0) else []
    for name, want in pod.checked:
        if want > alloc.get(name, 0) - used.get(name, 0):
            reasons.append(insufficient(name))
    return tuple(reasons) or None


# kube-scheduler's default filter order (of the plugins that need no pre-filter state)
NODE_FILTERS = (node_unschedulable, taint_toleration, node_affinity, node_ports,
                node_resources_fit)
