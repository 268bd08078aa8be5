"""The scheduler's view of the cluster (kube-scheduler's cache and snapshot in one): every node
with the aggregates of the pods bound to it, kept up to date incrementally from watch events and
from the scheduler's own assumptions, plus the indexes that keep a scheduling decision from
touching every pod:

- pods by (namespace, label key, value), by (namespace, key) and by namespace, for the label
  selectors of affinity terms and spread constraints;
- pods by their controller's uid, for spreading one owner's pods;
- the (anti-)affinity terms of bound pods, identical terms of many replicas collapsed into one
  entry that counts them per node.

Only pods that are bound (spec.nodeName) and not finished (phase Succeeded/Failed, which
kube-scheduler's informer filters out) count. A pod bound to a node the snapshot does not know
yet is kept and counts as soon as the node arrives. Not thread-safe: one owner (the scheduling
loop) updates and reads it.
"""
import collections
import copy
import dataclasses
from typing import Iterable

from podnetd.scheduler.objects import (AffinityTerm, NodeSpec, PodInfo,
                                       node_spec, pod_info, _d)

TERM_KINDS = ("required_affinity", "required_anti_affinity", "preferred_affinity",
              "preferred_anti_affinity")


@dataclasses.dataclass(slots=True)
class NodeInfo:
    name: str
    spec: NodeSpec | None           # None: pods are bound to it but the Node is not known
    pods: dict = dataclasses.field(default_factory=dict)        # uid -> PodInfo
    requested: dict = dataclasses.field(default_factory=dict)   # resource -> amount
    nonzero_cpu: int = 0
    nonzero_memory: int = 0
    ports: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    any_ip_ports: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def labels(self) -> dict:
        return self.spec.labels if self.spec else {}

    def add(self, p: PodInfo, sign: int) -> None:
        req = self.requested
        for k, v in p.requests.items():
            req[k] = req.get(k, 0) + sign * v
        self.nonzero_cpu += sign * p.nonzero_cpu
        self.nonzero_memory += sign * p.nonzero_memory
        for ip, proto, port in p.host_ports:
            self.ports[(ip, proto, port)] += sign
            self.any_ip_ports[(proto, port)] += sign
        if sign > 0:
            self.pods[p.uid] = p
        else:
            self.pods.pop(p.uid, None)
            self.ports += collections.Counter()          # drop zero counts
            self.any_ip_ports += collections.Counter()

    def port_conflict(self, ip: str, proto: str, port: int) -> bool:
        """HostPortInfo.CheckConflict: 0.0.0.0 conflicts with the port on any address."""
        if ip == "0.0.0.0":
            return self.any_ip_ports.get((proto, port), 0) > 0
        return self.ports.get(("0.0.0.0", proto, port), 0) > 0 or \
            self.ports.get((ip, proto, port), 0) > 0


def _is_finished(pod: dict) -> bool:
    return _d(pod.get("status")).get("phase") in ("Succeeded", "Failed")


class Snapshot:
    """Build with Snapshot(nodes, pods, namespaces) from the API's lists, then keep it current
    with set_node/remove_node, set_pod/remove_pod, set_namespace/remove_namespace, and
    assume/forget for the scheduler's own decisions before the binding is seen."""

    def __init__(self, nodes: Iterable[dict] = (), pods: Iterable[dict] = (),
                 namespaces: Iterable[dict] = ()):
        self.nodes: dict[str, NodeInfo] = {}
        self.pods: dict[str, PodInfo] = {}
        self.namespace_labels: dict[str, dict] = {}
        self._by_label: dict[tuple, set] = collections.defaultdict(set)   # (ns, k, v)
        self._by_key: dict[tuple, set] = collections.defaultdict(set)     # (ns, k)
        self._by_ns: dict[str, set] = collections.defaultdict(set)
        self._by_owner: dict[str, set] = collections.defaultdict(set)
        # kind -> term -> Counter(node name -> pods with the term there)
        self.terms: dict[str, dict[AffinityTerm, collections.Counter]] = {
            k: collections.defaultdict(collections.Counter) for k in TERM_KINDS}
        for ns in namespaces:
            self.set_namespace(ns)
        for n in nodes:
            self.set_node(n)
        for p in pods:
            self.set_pod(p)

    # -- nodes --
    def set_node(self, node: dict) -> None:
        """Add or update a Node (InvalidObject if it cannot be read; the snapshot is then
        unchanged)."""
        spec = node_spec(node)
        info = self.nodes.get(spec.name)
        if info is None:
            self.nodes[spec.name] = NodeInfo(spec.name, spec)
        else:
            info.spec = spec

    def remove_node(self, name: str) -> None:
        """The Node is gone; pods still bound to it keep counting there until they go too (as
        kube-scheduler's cache), but the node is no longer a candidate."""
        info = self.nodes.get(name)
        if info is None:
            return
        if info.pods:
            info.spec = None
        else:
            del self.nodes[name]

    def schedulable_nodes(self) -> list[NodeInfo]:
        return [n for n in self.nodes.values() if n.spec is not None]

    # -- namespaces (for namespaceSelector in affinity terms) --
    def set_namespace(self, ns: dict) -> None:
        meta = _d(_d(ns).get("metadata"))
        if isinstance(meta.get("name"), str):
            labels = dict(_d(meta.get("labels")))
            labels.setdefault("kubernetes.io/metadata.name", meta["name"])
            self.namespace_labels[meta["name"]] = labels

    def remove_namespace(self, name: str) -> None:
        self.namespace_labels.pop(name, None)

    # -- pods --
    def set_pod(self, pod: dict) -> PodInfo | None:
        """Add or update a Pod from the API. A pod not bound to a node, or finished, is not
        counted (it is removed if it was). InvalidObject if its requests cannot be read (the
        snapshot is then unchanged)."""
        if not isinstance(pod, dict):
            return None
        node_name = _d(pod.get("spec")).get("nodeName")
        if not isinstance(node_name, str) or not node_name or _is_finished(pod):
            self.remove_pod(pod)
            return None
        info = pod_info(pod, strict=False)
        self._remove(info.uid)
        self._add(info)
        return info

    def remove_pod(self, pod: dict | str) -> None:
        """The pod (object or uid) is deleted, or a binding the scheduler assumed failed."""
        if isinstance(pod, str):
            uid = pod
        else:
            meta = _d(_d(pod).get("metadata"))
            uid = meta.get("uid") or f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
        self._remove(uid)

    def assume(self, pod: dict | PodInfo, node_name: str) -> PodInfo:
        """Count the pod on node_name before the binding is confirmed (kube-scheduler's
        AssumePod), so the next decision sees it. The watch's later update of the bound pod
        replaces it (set_pod); forget() takes it back if the binding fails."""
        if isinstance(pod, PodInfo):
            info = dataclasses.replace(pod, node_name=node_name)
        else:
            bound = copy.copy(pod)
            bound["spec"] = dict(_d(pod.get("spec")), nodeName=node_name)
            info = pod_info(bound, strict=False)
        self._remove(info.uid)
        self._add(info)
        return info

    forget = remove_pod

    def _add(self, p: PodInfo) -> None:
        self.pods[p.uid] = p
        node = self.nodes.get(p.node_name)
        if node is None:
            node = self.nodes[p.node_name] = NodeInfo(p.node_name, None)
        node.add(p, +1)
        ns = p.namespace
        self._by_ns[ns].add(p.uid)
        for k, v in p.labels.items():
            self._by_label[(ns, k, v)].add(p.uid)
            self._by_key[(ns, k)].add(p.uid)
        if p.owner_uid:
            self._by_owner[p.owner_uid].add(p.uid)
        for kind in TERM_KINDS:
            for t in getattr(p, kind):
                self.terms[kind][t][p.node_name] += 1

    def _remove(self, uid: str) -> None:
        p = self.pods.pop(uid, None)
        if p is None:
            return
        node = self.nodes.get(p.node_name)
        if node is not None:
            node.add(p, -1)
            if node.spec is None and not node.pods:
                del self.nodes[p.node_name]
        ns = p.namespace
        _discard(self._by_ns, ns, uid)
        for k, v in p.labels.items():
            _discard(self._by_label, (ns, k, v), uid)
            _discard(self._by_key, (ns, k), uid)
        if p.owner_uid:
            _discard(self._by_owner, p.owner_uid, uid)
        for kind in TERM_KINDS:
            terms = self.terms[kind]
            for t in getattr(p, kind):
                counts = terms[t]
                counts[p.node_name] -= 1
                if counts[p.node_name] <= 0:
                    del counts[p.node_name]
                if not counts:
                    del terms[t]

    # -- queries --
    def namespaces_of(self, term: AffinityTerm) -> Iterable[str]:
        """The namespaces (with pods) an affinity term covers."""
        if term.ns_selector is None:
            return [ns for ns in term.namespaces if ns in self._by_ns]
        return [ns for ns in self._by_ns
                if term.matches_namespace(ns, self.namespace_labels)]

    def pods_matching(self, selector, namespaces: Iterable[str]) -> list[PodInfo]:
        """The pods in these namespaces whose labels the selector matches, found through the
        label index (the smallest candidate set of one requirement) and then checked whole."""
        if selector.nothing:
            return []
        out = []
        pods = self.pods
        for ns in namespaces:
            best = self._by_ns.get(ns)
            if not best:
                continue
            for r in selector.requirements:
                if r.op == "In":
                    if len(r.values) == 1:
                        cand = self._by_label.get((ns, r.key, r.values[0])) or set()
                    else:
                        cand = set().union(*(self._by_label.get((ns, r.key, v)) or ()
                                             for v in r.values))
                elif r.op in ("Exists", "Gt", "Lt"):
                    cand = self._by_key.get((ns, r.key)) or set()
                else:
                    continue
                if len(cand) < len(best):
                    best = cand
                    if not cand:
                        break
            for uid in best:
                p = pods[uid]
                if selector.matches(p.labels):
                    out.append(p)
        return out

    def pods_of_owner(self, owner_uid: str) -> list[PodInfo]:
        return [self.pods[u] for u in self._by_owner.get(owner_uid, ())]


def _discard(index: dict, key, uid: str) -> None:
    s = index.get(key)
    if s is not None:
        s.discard(uid)
        if not s:
            del index[key]
