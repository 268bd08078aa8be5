"""The node's own objects in the cluster: its Node (registered once, status kept current) and
its Lease in kube-node-lease, renewed every --node-lease-renew as the kubelet renews it. Both
written as `system:node:NAME` through the same authorization every client goes through.

The control plane may be away (store unreachable, API starting): every write is retried on the
next tick, quietly; nothing here stops or slows the pods."""
import asyncio
import logging
import time

from .. import timestamps
from ..apiserver import objects
from . import node_object

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40            # kubelet's default nodeLeaseDurationSeconds
STATUS_EVERY = 60.0            # full status even when nothing changed (kubelet: 5 min)


class NodeRegistration:
    def __init__(self, client, facts_fn, readiness_fn, renew_interval: float = 10.0):
        """client: the API as system:node:NAME; facts_fn() -> NodeFacts; readiness_fn() ->
        (ready, message)."""
        self.client = client
        self.facts_fn = facts_fn
        self.readiness_fn = readiness_fn
        self.renew_interval = renew_interval
        self.registered = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_status: tuple | None = None
        self._last_status_time = 0.0
        self._failing: str | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:   # noqa: BLE001 - cancelled on purpose
                pass

    async def _run(self) -> None:
        while True:
            try:
                facts = await asyncio.to_thread(self.facts_fn)
                if not self.registered.is_set():
                    await self._register(facts)
                    self.registered.set()
                await self._renew_lease(facts.name)
                await self._report_status(facts)
                if self._failing:
                    log.info("node %s: the cluster API answers again", facts.name)
                self._failing = None
            except objects.ApiError as e:
                if self._failing != type(e).__name__:
                    log.warning("node registration: %s (retrying every %.0f s)", e.message,
                                self.renew_interval)
                self._failing = type(e).__name__
            await asyncio.sleep(self.renew_interval)

    async def _register(self, facts) -> None:
        try:
            current = await self.client.get("nodes", "", facts.name)
        except objects.NotFound:
            await self.client.create("nodes", "", node_object.new_node(facts))
            log.info("node %s registered with the cluster", facts.name)
            return
        # a node that comes back keeps what the admin set (taints, cordon, extra labels);
        # the labels it owns are made current
        labels = dict(current["metadata"].get("labels") or {})
        notes = dict(current["metadata"].get("annotations") or {})
        wanted, wanted_notes = node_object.labels(facts), node_object.annotations(facts)
        spec = current.setdefault("spec", {})
        if any(labels.get(k) != v for k, v in wanted.items()) or \
                any(notes.get(k) != v for k, v in wanted_notes.items()) or \
                spec.get("podCIDR") != facts.pod_cidr:
            labels.update(wanted)
            notes.update(wanted_notes)
            current["metadata"]["labels"] = labels
            current["metadata"]["annotations"] = notes
            spec["podCIDR"], spec["podCIDRs"] = facts.pod_cidr, [facts.pod_cidr]
            await self.client.update("nodes", "", current)

    async def _renew_lease(self, name: str) -> None:
        now = timestamps.rfc3339_micro()
        try:
            lease = await self.client.get("leases", LEASE_NAMESPACE, name)
        except objects.NotFound:
            await self.client.create("leases", LEASE_NAMESPACE, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION,
                         "acquireTime": now, "renewTime": now}})
            return
        lease["spec"]["renewTime"] = now
        lease["spec"]["holderIdentity"] = name
        await self.client.update("leases", LEASE_NAMESPACE, lease)

    async def _report_status(self, facts) -> None:
        """Write the status when it changed, when the stored one says otherwise (the node
        lifecycle controller marked this node Unknown while it was away) or every
        STATUS_EVERY seconds."""
        ready, message = await asyncio.to_thread(self.readiness_fn)
        node = await self.client.get("nodes", "", facts.name)
        stored = {c.get("type"): c for c in (node.get("status") or {}).get("conditions") or []}
        agrees = (stored.get("Ready") or {}).get("status") == ("True" if ready else "False")
        key = (ready, message, facts)
        now = time.time()
        if agrees and key == self._last_status and now - self._last_status_time < STATUS_EVERY:
            return
        node["status"] = node_object.node_status(facts, ready, message, node.get("status"),
                                                 now)
        await self.client.update("nodes", "", node, "status")
        self._last_status, self._last_status_time = key, now
