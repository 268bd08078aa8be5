"""The pods bound to this node, kept running by the pod runtime as the kubelet keeps them:
desired state from the API (list + watch of pods with spec.nodeName = this node), actual state
from the runtime, a sync that closes the gap, and status written back through pods/status.

- A pod bound here and not running is started under its API uid (so a restarted podnetd adopts
  what runs instead of starting it twice: the runtime's own store keeps each pod's uid).
- A pod with deletionTimestamp is stopped with its grace period, then deleted for good
  (grace 0, with its uid as precondition), as the kubelet finishes a graceful deletion.
- A pod the runtime runs for the API whose object is gone (deleted while this node was away, or
  replaced by a new pod of the same name) is stopped and removed: no pod ever runs twice.
- Node-local pods (`podnetctl pod run`, the kubelet's static pods) are shown in the cluster as
  read-only mirror pods named NAME-NODE.

Static stability: when the API is unreachable nothing is stopped or restarted; the watch is
retried with back-off, and on return a full list decides again from the facts."""
import asyncio
import contextlib
import copy
import logging

from ..apiserver import objects
from ..apiserver.pod_kind import SCHEDULING_FIELDS
from ..runtime.errors import PodError
from ..runtime.model import Pod

log = logging.getLogger(__name__)

SOURCE = "kubernetes.io/config.source"
MIRROR = "kubernetes.io/config.mirror"
STATUS_EVERY = 1.0
STATUS_WRITERS = 8      # status writes in flight at once
RETRY_FIRST, RETRY_MAX = 0.5, 10.0


def is_cluster_pod(pod: Pod) -> bool:
    return (pod.doc["metadata"].get("annotations") or {}).get(SOURCE) == "api"


def runnable(obj: dict) -> dict:
    """The part of a cluster Pod the runtime runs (placement fields are the scheduler's)."""
    meta = obj["metadata"]
    annotations = dict(meta.get("annotations") or {})
    annotations[SOURCE] = "api"
    spec = {k: copy.deepcopy(v) for k, v in obj["spec"].items()
            if k not in SCHEDULING_FIELDS and k != "nodeName"}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "default"),
                         "labels": dict(meta.get("labels") or {}), "annotations": annotations},
            "spec": spec}


def _key(obj: dict) -> str:
    return f"{obj['metadata'].get('namespace') or 'default'}/{obj['metadata']['name']}"


class PodSync:
    def __init__(self, client, runtime, node_name: str):
        self.client = client
        self.rt = runtime
        self.node = node_name
        self.desired: dict[str, dict] = {}      # key -> the API's pod object
        self.listed = False                      # desired is complete (a list succeeded)
        self._sent: dict[str, dict] = {}         # key -> the status last written
        self._mirrors: dict[str, str] = {}       # node-local pod key -> uid mirrored
        self._busy: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._dirty: set[str] = set()            # pods whose status may have changed
        self._all_dirty = True                   # ... or every pod's
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch_loop()), loop.create_task(self._status_loop())]

    async def stop(self) -> None:
        for t in [*self._tasks, *self._busy.values()]:
            t.cancel()
        for t in [*self._tasks, *self._busy.values()]:
            with contextlib.suppress(BaseException):
                await t

    def poke(self, key: str | None = None) -> None:
        """Report status soon: of the pod `key` (namespace/name), or of every pod."""
        if key is None:
            self._all_dirty = True
        else:
            self._dirty.add(key)
        self._wake.set()

    # -- desired state: list + watch ----------------------------------------------------

    async def _watch_loop(self) -> None:
        delay = RETRY_FIRST
        selector = f"spec.nodeName={self.node}"
        while True:
            try:
                listing = await self.client.list("pods", "", "", selector)
                self.desired = {_key(o): o for o in listing["items"]}
                self.listed = True
                self._sync_all()
                delay = RETRY_FIRST
                rv = listing["metadata"]["resourceVersion"]
                async for kind, obj in self.client.watch("pods", "", "", selector, rv):
                    if kind == "BOOKMARK":
                        continue
                    key = _key(obj)
                    if kind == "DELETED":
                        self.desired.pop(key, None)
                    else:
                        self.desired[key] = obj
                    self._sync(key)
            except objects.Gone:
                continue                                 # history compacted: list again
            except objects.ApiError as e:
                log.info("node agent: watching pods: %s (retrying in %.1f s)", e.message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _sync_all(self) -> None:
        for key in set(self.desired) | {k for k, p in self.rt.pods.items() if is_cluster_pod(p)}:
            self._sync(key)

    def _sync(self, key: str) -> None:
        """One worker per pod at a time (the kubelet's pod workers): a change that arrives
        while the pod is being worked on is picked up by a sync that runs after."""
        running = self._busy.get(key)
        if running is not None and not running.done():
            running.add_done_callback(lambda _t: self._sync(key))
            return
        self._busy[key] = asyncio.get_running_loop().create_task(self._work(key))

    async def _work(self, key: str) -> None:
        try:
            await self._reconcile(key)
        except Exception as e:  # noqa: BLE001 - one pod's failure never stops the others
            log.warning("node agent: pod %s: %s", key, e)
        finally:
            self.poke(key)

    async def _reconcile(self, key: str) -> None:
        obj = self.desired.get(key)
        have = self.rt.pods.get(key)
        if have is not None and is_cluster_pod(have) and (
                obj is None and self.listed or obj is not None and obj["metadata"]["uid"] != have.uid):
            # its object is gone, or replaced by a new pod of the same name: never run twice
            log.info("node agent: pod %s (uid %s) is no longer in the cluster: removing it",
                     key, have.uid)
            await self.rt.remove_pod(have)
            self._sent.pop(key, None)
            have = None
        if obj is None or (obj["metadata"].get("annotations") or {}).get(MIRROR):
            return
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            if have is not None and have.uid == meta["uid"]:
                grace = meta.get("deletionGracePeriodSeconds")
                await self.rt.stop_pod(have, None if grace is None else float(grace), "Killing")
                await self.rt.remove_pod(have)
            with contextlib.suppress(objects.NotFound, objects.Conflict):
                await self.client.delete("pods", meta.get("namespace", "default"), meta["name"],
                                         0, meta.get("resourceVersion", ""))
            self._sent.pop(key, None)
            return
        if have is None:
            try:
                await self.rt.start_pod(runnable(obj), meta["uid"])
            except PodError as e:
                await self._report_failure(obj, e)
        elif have.uid != meta["uid"]:
            await self._report_failure(obj, PodError(
                f"a node-local pod {key} already runs on node {self.node}", "exists"))

    async def _report_failure(self, obj: dict, e: Exception) -> None:
        # the kubelet's admission refusal: the pod cannot run on this node (images and
        # sandboxes are retried inside the runtime, never refused here)
        status = dict(obj.get("status") or {})
        status.update({"phase": "Failed", "reason": "UnexpectedAdmissionError",
                       "message": str(e)})
        log.warning("node agent: pod %s cannot run here: %s", _key(obj), e)
        await self._write_status(obj, status)

    # -- status: the runtime's view written back -----------------------------------------

    async def _status_loop(self) -> None:
        """Poked pods at once; every pod (and the mirrors) each STATUS_EVERY, which also
        catches a change that came without an event (a probe's result)."""
        last_full = 0.0
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_EVERY):   # not wait_for: 3.11's may eat a cancel
                    await self._wake.wait()
            self._wake.clear()
            full = self._all_dirty or loop.time() - last_full >= STATUS_EVERY
            keys = None if full else self._dirty
            self._dirty, self._all_dirty = set(), False
            try:
                await self._report(keys)
                if full:
                    last_full = loop.time()
                    await self._mirror_all()
            except objects.ApiError as e:
                log.debug("node agent: status: %s", e.message)

    async def _report(self, keys: set[str] | None) -> None:
        """Write the status of the pods in keys (None: of every pod) that changed."""
        changed = []
        for key in list(self.desired) if keys is None else keys:
            obj = self.desired.get(key)
            pod = self.rt.pods.get(key)
            if obj is None:
                continue
            meta = obj["metadata"]
            if pod is None or pod.uid != meta["uid"] or meta.get("deletionTimestamp"):
                continue
            status = pod.k8s(self.node, self.rt.host_ip)["status"]
            self._keep_scheduled(obj, status)
            if status != self._sent.get(key):
                changed.append((obj, status))
        # Written side by side, a few at a time: one after the other, the twentieth pod to
        # start on a busy node would wait for nineteen round trips before it is seen running.
        for i in range(0, len(changed), STATUS_WRITERS):
            results = await asyncio.gather(
                *(self._write_status(obj, status) for obj, status in changed[i:i + STATUS_WRITERS]),
                return_exceptions=True)
            for outcome in results:
                if isinstance(outcome, BaseException):
                    raise outcome

    @staticmethod
    def _keep_scheduled(obj: dict, status: dict) -> None:
        """PodScheduled is the scheduler's to say (with its time); the runtime's view of the
        other conditions is ours."""
        theirs = [c for c in (obj.get("status") or {}).get("conditions") or []
                  if c.get("type") == "PodScheduled"]
        if theirs:
            status["conditions"] = [c for c in status["conditions"]
                                    if c.get("type") != "PodScheduled"] + theirs
        status.setdefault("qosClass", (obj.get("status") or {}).get("qosClass", "BestEffort"))

    async def _write_status(self, obj: dict, status: dict) -> None:
        meta = obj["metadata"]
        update = {"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": meta["name"], "namespace": meta.get("namespace"),
                               "uid": meta["uid"]},
                  "status": status}
        try:
            written = await self.client.update("pods", meta.get("namespace", "default"), update,
                                               "status")
        except objects.NotFound:
            return
        if written["metadata"]["uid"] != meta["uid"]:
            return   # a new pod of that name: its own sync takes over
        self._sent[_key(obj)] = status

    # -- mirror pods of node-local pods --------------------------------------------------

    async def _mirror_all(self) -> None:
        local = {k: p for k, p in self.rt.pods.items() if not is_cluster_pod(p)}
        for key, pod in local.items():
            name = f"{pod.name}-{self.node}"
            doc = pod.k8s(self.node, self.rt.host_ip)
            if self._mirrors.get(key) != pod.uid:
                mirror = self._mirror_object(doc, name, pod.uid)
                try:
                    await self.client.create("pods", pod.namespace, mirror)
                except objects.AlreadyExists:
                    pass
                except objects.NotFound:
                    continue       # its namespace does not exist in the cluster
                self._mirrors[key] = pod.uid
            mirror_key = f"{pod.namespace}/{name}"
            obj = self.desired.get(mirror_key)
            if obj is not None and obj["status"] != doc["status"] \
                    and self._sent.get(mirror_key) != doc["status"]:
                await self._write_status(obj, doc["status"])
        for key in [k for k in self._mirrors if k not in local]:
            ns, _, name = key.partition("/")
            with contextlib.suppress(objects.NotFound):
                await self.client.delete("pods", ns, f"{name}-{self.node}", 0)
            del self._mirrors[key]

    def _mirror_object(self, doc: dict, name: str, uid: str) -> dict:
        meta = doc["metadata"]
        annotations = dict(meta.get("annotations") or {})
        annotations.update({MIRROR: uid, SOURCE: "file"})
        spec = dict(doc["spec"])
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": meta["namespace"],
                             "labels": dict(meta.get("labels") or {}),
                             "annotations": annotations},
                "spec": spec}

