"""The scheduler's loop (its decisions are podnetd/scheduler/, pure logic): informers on nodes,
pods and namespaces keep a Snapshot; pods that want this scheduler and have no node are taken
in priority order, placed, and bound through pods/binding, the bind itself running
concurrently (assumed in the snapshot at once, as kube-scheduler's assume + async bind).
A pod that fits nowhere gets PodScheduled=False, reason Unschedulable, and a FailedScheduling
event in kube-scheduler's words; it is tried again when a node or a pod changes (or every
UNSCHEDULABLE_RETRY seconds)."""
import asyncio
import contextlib
import logging
import time

from .. import timestamps
from ..apiserver import objects
from ..scheduler import InvalidObject, framework
from ..scheduler.snapshot import Snapshot
from .informer import Informer, key_of

log = logging.getLogger(__name__)

UNSCHEDULABLE_RETRY = 30.0
MAX_BINDS_IN_FLIGHT = 64


class SchedulerLoop:
    def __init__(self, client, recorder=None, scheduler_name: str = framework.DEFAULT_SCHEDULER):
        self.client = client
        self.recorder = recorder
        self.name = scheduler_name
        self.snapshot = Snapshot()
        self.active: dict[str, dict] = {}         # pods to place now
        self.unschedulable: dict[str, tuple[dict, str]] = {}   # key -> (pod, message written)
        self._assumed: set[str] = set()            # keys bound or being bound by us
        self._wake = asyncio.Event()
        self._binds = asyncio.Semaphore(MAX_BINDS_IN_FLIGHT)
        self._tasks: set[asyncio.Task] = set()
        self.nodes = Informer(client, "nodes", on_change=self._node_changed)
        self.pods = Informer(client, "pods", on_change=self._pod_changed)
        self.namespaces = Informer(client, "namespaces", on_change=self._namespace_changed)
        self.bound = 0

    # -- informers ------------------------------------------------------------------------

    def _node_changed(self, key, old, new) -> None:
        try:
            if new is None:
                self.snapshot.remove_node(key)
            else:
                self.snapshot.set_node(new)
        except InvalidObject as e:
            log.warning("scheduler: node %s left out: %s", key, e)
        self._retry_unschedulable()

    def _namespace_changed(self, key, old, new) -> None:
        if new is None:
            self.snapshot.remove_namespace(key)
        else:
            self.snapshot.set_namespace(new)

    def _pod_changed(self, key, old, new) -> None:
        if new is None:
            self.snapshot.remove_pod(old)
            self.active.pop(key, None)
            self.unschedulable.pop(key, None)
            self._assumed.discard(key)
            self._retry_unschedulable()
            return
        if new["spec"].get("nodeName"):
            try:
                self.snapshot.set_pod(new)
            except InvalidObject as e:
                log.warning("scheduler: pod %s left out: %s", key, e)
            self.active.pop(key, None)
            self.unschedulable.pop(key, None)
            return
        if key in self._assumed:
            return
        if framework.wants_scheduling(new, self.name):
            if key not in self.unschedulable:
                self.active[key] = new
                self._wake.set()
        else:
            self.active.pop(key, None)

    def _retry_unschedulable(self) -> None:
        if self.unschedulable:
            for key, (pod, _) in self.unschedulable.items():
                self.active[key] = pod
            self.unschedulable.clear()
            self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        for inf in (self.namespaces, self.nodes, self.pods):
            await inf.start()
        try:
            await asyncio.gather(self.namespaces.synced.wait(), self.nodes.synced.wait(),
                                 self.pods.synced.wait())
            last_flush = time.monotonic()
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):   # not wait_for: 3.11's may eat a cancel
                        await self._wake.wait()
                self._wake.clear()
                if time.monotonic() - last_flush > UNSCHEDULABLE_RETRY:
                    self._retry_unschedulable()
                    last_flush = time.monotonic()
                await self._schedule_active()
        finally:
            for t in list(self._tasks):
                t.cancel()
            for inf in (self.namespaces, self.nodes, self.pods):
                await inf.stop()

    async def _schedule_active(self) -> None:
        batch = sorted(self.active.values(), key=framework.queue_sort_key)
        self.active.clear()
        for n, pod in enumerate(batch):
            key = key_of(pod)
            current = self.pods.cache.get(key)
            if current is None or current["metadata"]["uid"] != pod["metadata"]["uid"] \
                    or current["spec"].get("nodeName") or key in self._assumed:
                continue
            result = framework.schedule(current, self.snapshot)
            if result.node_name:
                self.snapshot.assume(result.pod or current, result.node_name)
                self._assumed.add(key)
                await self._binds.acquire()
                self._spawn(self._bind(current, result.node_name))
            else:
                await self._unschedulable(current, result)
            if n % 50 == 49:
                await asyncio.sleep(0)        # let the informers and binds run

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bind(self, pod: dict, node: str) -> None:
        meta = pod["metadata"]
        key = key_of(pod)
        try:
            await self.client.create("pods", meta["namespace"], {
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                             "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}},
                "binding", meta["name"])
            self.bound += 1
            self._event(pod, "Normal", "Scheduled",
                        f"Successfully assigned {meta['namespace']}/{meta['name']} to {node}")
        except objects.ApiError as e:
            # forget the assumption; the informer's next view of the pod decides again
            log.info("scheduler: bind %s to %s: %s", key, node, e.message)
            self.snapshot.forget(pod)
            self._assumed.discard(key)
            current = self.pods.cache.get(key)
            if current is not None and not current["spec"].get("nodeName"):
                self.active[key] = current
                self._wake.set()
        finally:
            self._binds.release()

    async def _unschedulable(self, pod: dict, result) -> None:
        key = key_of(pod)
        previous = self.unschedulable.get(key)
        self.unschedulable[key] = (pod, result.message)
        if previous is not None and previous[1] == result.message:
            return
        meta = pod["metadata"]
        status = dict(pod.get("status") or {})
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        conditions.append({"type": "PodScheduled", "status": "False", "reason": result.reason,
                           "message": result.message,
                           "lastTransitionTime": timestamps.rfc3339()})
        status["conditions"] = conditions
        with contextlib.suppress(objects.NotFound, objects.Conflict):
            await self.client.update("pods", meta["namespace"], {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "status": status}, "status")
        self._event(pod, "Warning", "FailedScheduling", result.message)

    def _event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        if self.recorder is not None:
            self.recorder(obj, type_, reason, message)
