"""The node lifecycle controller, as kube-controller-manager's: a node whose Lease has not been
renewed for --node-monitor-grace-period becomes Ready=Unknown with the
node.kubernetes.io/unreachable:NoExecute taint (node.kubernetes.io/not-ready:NoExecute when it
says Ready=False itself), its pods turn Ready=False, and the taint manager deletes pods once their
toleration of the taint runs out (300 s by default, as the API server's
DefaultTolerationSeconds adds it). A node that renews again loses the taints. A condition such
as MemoryPressure or DiskPressure that is True becomes its NoSchedule taint
(TaintNodesByCondition), removed when the condition clears.

Deletion is graceful: a pod on an unreachable node stays Terminating until its node comes back
and finishes it (stopping the containers first), so a pod never runs twice."""
import asyncio
import calendar
import contextlib
import logging
import time

from .. import timestamps
from ..apiserver import objects
from . import tolerations as tol
from .informer import Informer

log = logging.getLogger(__name__)

UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
# TaintNodesByCondition: a node condition that is True becomes a NoSchedule taint, so the
# scheduler reads taints, not conditions (pods that tolerate it still go there)
CONDITION_TAINTS = {"MemoryPressure": "node.kubernetes.io/memory-pressure",
                    "DiskPressure": "node.kubernetes.io/disk-pressure",
                    "PIDPressure": "node.kubernetes.io/pid-pressure",
                    "NetworkUnavailable": "node.kubernetes.io/network-unavailable"}
CONDITION_TAINT_KEYS = frozenset(CONDITION_TAINTS.values())
LEASE_NAMESPACE = "kube-node-lease"
MONITOR_PERIOD = 1.0


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def condition_taints(node: dict) -> set[str]:
    """The NoSchedule taint keys the node's conditions call for."""
    return {CONDITION_TAINTS[c["type"]] for c in (node.get("status") or {}).get("conditions") or []
            if isinstance(c, dict) and c.get("type") in CONDITION_TAINTS
            and c.get("status") == "True"}


def ready_status(node: dict) -> str:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status", "Unknown")
    return "Unknown"


class NodeLifecycleController:
    def __init__(self, client, grace_period: float = 40.0, recorder=None, release_claim=None):
        """release_claim(node_name): async, frees a deleted node's pod CIDR block in the
        fabric's store (the cluster component's; None without one)."""
        self.client = client
        self.grace = grace_period
        self.recorder = recorder          # record(obj, type, reason, message)
        self.release_claim = release_claim
        self.nodes = Informer(client, "nodes", on_change=self._node_seen)
        self._orphans: dict[str, float] = {}         # pod key -> when first seen on no node
        self._appeared: dict[str, float] = {}        # node -> when this controller first saw it
        self._deleted: list[str] = []                # nodes deleted, claims to release
        self.leases = Informer(client, "leases", LEASE_NAMESPACE, on_change=self._lease_seen)
        self.pods = Informer(client, "pods")
        self._seen: dict[str, float] = {}           # node -> monotonic time of the last renewal
        self._started = time.monotonic()
        self._marked: set[str] = set()               # pods already marked for deletion

    def _node_seen(self, key: str, old, new) -> None:
        if new is None and old is not None:
            self._deleted.append(key)
            self._appeared.pop(key, None)
        elif old is None and new is not None:
            self._appeared.setdefault(key, time.monotonic())

    def _lease_seen(self, key: str, old, new) -> None:
        if new is not None:
            name = key.split("/", 1)[1]
            if old is None or (old.get("spec") or {}).get("renewTime") != \
                    (new.get("spec") or {}).get("renewTime"):
                self._seen[name] = time.monotonic()

    async def run(self) -> None:
        for inf in (self.nodes, self.leases, self.pods):
            await inf.start()
        try:
            await asyncio.gather(self.nodes.synced.wait(), self.leases.synced.wait(),
                                 self.pods.synced.wait())
            self._started = time.monotonic()
            while True:
                try:
                    await self._monitor()
                except objects.ApiError as e:
                    log.debug("node lifecycle: %s", e.message)
                await asyncio.sleep(MONITOR_PERIOD)
        finally:
            for inf in (self.nodes, self.leases, self.pods):
                await inf.stop()

    def _silent_for(self, name: str) -> float:
        # a node never seen renewing counts from when this controller started or first saw
        # the node, whichever is later (a node registers its Node before its first Lease)
        since = max(self._started, self._appeared.get(name, self._started))
        return time.monotonic() - self._seen.get(name, since)

    async def _monitor(self) -> None:
        for name, node in list(self.nodes.cache.items()):
            await self._condition_taints(name, node)
            if self._silent_for(name) > self.grace:
                if ready_status(node) != "Unknown":
                    await self._mark_unknown(name)
                await self._set_taint(name, UNREACHABLE, remove=NOT_READY)
                await self._pods_not_ready(name)
            elif ready_status(node) == "True":
                await self._set_taint(name, None, remove=(UNREACHABLE, NOT_READY))
            elif ready_status(node) == "False":
                await self._set_taint(name, NOT_READY, remove=UNREACHABLE)
        await self._evict()
        await self._collect_orphans()
        while self._deleted:
            await self._node_deleted(self._deleted.pop(0))

    async def _node_deleted(self, name: str) -> None:
        """A Node deleted from the API is gone from the cluster: its pod CIDR block is freed in
        the fabric (other nodes withdraw its routes) and its pods are collected below."""
        log.info("node %s deleted", name)
        if self.release_claim is not None:
            try:
                released = await self.release_claim(name)
                if released:
                    log.info("node %s: released its pod CIDR %s", name, ", ".join(released))
            except Exception as e:  # noqa: BLE001 - the store may be away; the 24 h expiry remains
                log.warning("node %s deleted: release its pod CIDR claim: %s", name, e)

    async def _collect_orphans(self) -> None:
        """The pod garbage collector's orphan rule: a pod bound to a node that does not exist
        (deleted, or never registered) for longer than the grace period is deleted at once."""
        now = time.monotonic()
        seen = set()
        for key, pod in list(self.pods.cache.items()):
            node = (pod.get("spec") or {}).get("nodeName")
            if not node or node in self.nodes.cache:
                continue
            seen.add(key)
            first = self._orphans.setdefault(key, now)
            if now - first < self.grace:
                continue
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            with contextlib.suppress(objects.NotFound, objects.Conflict):
                await self.client.delete("pods", ns, name, 0, pod["metadata"]["resourceVersion"])
                log.info("pod gc: deleted pod %s/%s bound to node %s, which does not exist", ns,
                         name, node)
                self._event(pod, "Normal", "PodGC", f"Deleted pod {ns}/{name}: its node {node} "
                                                   "does not exist")
        self._orphans = {k: t for k, t in self._orphans.items() if k in seen}

    async def _mark_unknown(self, name: str) -> None:
        now = timestamps.rfc3339()

        def change(node: dict) -> dict:
            for c in (node.setdefault("status", {})).setdefault("conditions", []):
                if c.get("status") != "Unknown":
                    c.update({"status": "Unknown", "reason": "NodeStatusUnknown",
                              "message": "Kubelet stopped posting node status.",
                              "lastTransitionTime": now})
            if not node["status"]["conditions"]:
                node["status"]["conditions"].append({
                    "type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                    "message": "Kubelet never posted node status.", "lastTransitionTime": now})
            return node
        node = await self.client.get("nodes", "", name)
        await self.client.update("nodes", "", change(node), "status")
        log.warning("node %s: Ready=Unknown (no lease renewal for %.0f s)", name,
                    self._silent_for(name))
        self._event(node, "Normal", "NodeNotReady", f"Node {name} status is now: NodeNotReady")

    async def _set_taint(self, name: str, add: str | None, remove) -> None:
        remove = (remove,) if isinstance(remove, str) else tuple(remove)
        node = self.nodes.cache.get(name)
        if node is None:
            return
        taints = list((node.get("spec") or {}).get("taints") or [])
        keys = {t.get("key") for t in taints if t.get("effect") == "NoExecute"}
        if (add is None or add in keys) and not keys & set(remove):
            return
        node = await self.client.get("nodes", "", name)
        taints = [t for t in (node["spec"].get("taints") or [])
                  if not (t.get("effect") == "NoExecute" and t.get("key") in remove)]
        if add and not any(t.get("key") == add and t.get("effect") == "NoExecute"
                           for t in taints):
            taints.append({"key": add, "effect": "NoExecute",
                           "timeAdded": timestamps.rfc3339()})
        node["spec"]["taints"] = taints
        if not taints:
            del node["spec"]["taints"]
        await self.client.update("nodes", "", node)

    async def _condition_taints(self, name: str, node: dict) -> None:
        want = condition_taints(node)
        have = {t.get("key") for t in (node.get("spec") or {}).get("taints") or []
                if t.get("effect") == "NoSchedule" and t.get("key") in CONDITION_TAINT_KEYS}
        if want == have:
            return
        node = await self.client.get("nodes", "", name)
        want = condition_taints(node)
        taints = [t for t in (node["spec"].get("taints") or [])
                  if not (t.get("effect") == "NoSchedule"
                          and t.get("key") in CONDITION_TAINT_KEYS - want)]
        present = {t.get("key") for t in taints if t.get("effect") == "NoSchedule"}
        now = timestamps.rfc3339()
        taints += [{"key": key, "effect": "NoSchedule", "timeAdded": now}
                   for key in sorted(want - present)]
        node["spec"]["taints"] = taints
        if not taints:
            del node["spec"]["taints"]
        with contextlib.suppress(objects.Conflict):   # changed meanwhile: the next pass
            await self.client.update("nodes", "", node)
        log.info("node %s: condition taints now %s", name, ", ".join(sorted(want)) or "none")

    async def _pods_not_ready(self, node_name: str) -> None:
        for key, pod in list(self.pods.cache.items()):
            if (pod.get("spec") or {}).get("nodeName") != node_name:
                continue
            conditions = (pod.get("status") or {}).get("conditions") or []
            if not any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in conditions):
                continue
            now = timestamps.rfc3339()
            status = dict(pod["status"])
            status["conditions"] = [dict(c, status="False", lastTransitionTime=now)
                                    if c.get("type") in ("Ready", "ContainersReady") else c
                                    for c in conditions]
            update = {"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": pod["metadata"]["name"],
                                   "namespace": pod["metadata"]["namespace"]},
                      "status": status}
            with contextlib.suppress(objects.NotFound):
                await self.client.update("pods", pod["metadata"]["namespace"], update, "status")

    async def _evict(self) -> None:
        """The NoExecute taint manager."""
        now = time.time()
        for key, pod in list(self.pods.cache.items()):
            node = self.nodes.cache.get((pod.get("spec") or {}).get("nodeName") or "")
            if node is None or pod["metadata"].get("deletionTimestamp") or key in self._marked:
                continue
            taints = [t for t in (node.get("spec") or {}).get("taints") or []
                      if t.get("effect") == "NoExecute"]
            if not taints:
                continue
            seconds = tol.toleration_seconds(taints, pod["spec"].get("tolerations") or [])
            if seconds is None:
                continue
            added = max((parse_time(t.get("timeAdded")) or now) for t in taints)
            if now < added + max(0.0, seconds):
                continue
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            with contextlib.suppress(objects.NotFound):
                await self.client.delete("pods", ns, name)
                log.info("taint manager: deleting pod %s/%s from node %s", ns, name,
                         node["metadata"]["name"])
                self._event(pod, "Normal", "TaintManagerEviction",
                            f"Marking for deletion Pod {ns}/{name}")
            self._marked.add(key)
        self._marked &= set(self.pods.cache)

    def _event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        if self.recorder is not None:
            self.recorder(obj, type_, reason, message)
