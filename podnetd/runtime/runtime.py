"""The pod runtime component of podnetd: pods from manifests, a pause container per pod
attached through CNI, init/sidecar/app containers under runc, kubelet's lifecycle.

This is the facade the daemon and the Pods service use; the work is cut as the kubelet's
kuberuntime and CRI-O cut it:
  store.py       the pod store (persisted JSON)          sandbox.py   netns, pause, CNI
  containers.py  a container's OCI config and mounts     supervisor.py conmon, exits, restarts
  prober.py      startup/liveness/readiness workers      lifecycle.py the pod's stages
  model.py       pod and container data, Kubernetes status

Every blocking or forking step is asynchronous (asyncio subprocesses) or runs off the loop, so
the daemon keeps serving the CNI plugin's relayed calls (the podnet plugin calls back into this
very daemon during a pod's ADD)."""
import asyncio
import collections
import contextlib
import logging
import os
import shutil
import time
import uuid

from ..aio import within
from . import eviction, host, manifest
from .containers import ContainerFactory
from .context import Context, Layout, NodeFacts
from .errors import ContainerError, PodError, SandboxError  # noqa: F401 (the API's errors)
from .images import ImageStore
from .lifecycle import PodLifecycle
from .model import Ctr, Pod, Stage
from .puller import ImagePuller
from .sandbox import Sandboxes
from .store import PodStore
from .supervisor import Supervisor
from ..events import ObjectRef
from ..metrics import gauge
from ..wiring import DaemonContext
from . import RuntimeConfig

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, daemon: DaemonContext, cfg: RuntimeConfig):
        self.daemon = daemon  # the daemon's context: daemon.node once the node is set up
        self.cfg = cfg
        self.node_name = daemon.config.node_name
        self.events = daemon.events
        self.serving = daemon.serving
        self.oci = cfg.oci_runtime
        self.dir = cfg.runtime_dir
        self.images = ImageStore(os.path.join(self.dir, "images"))
        self.metrics = daemon.metrics
        self.store = PodStore(os.path.join(daemon.config.state_dir, "pods"))
        self.ctx = Context(cfg, self.oci, Layout(self.dir), self.store, self.metrics,
                           self._record_event)
        self.sandboxes = Sandboxes(self.ctx)
        # the flags were checked at start-up (check_flags): this cannot fail here
        self.puller = ImagePuller(self.ctx, self.images, cfg.registries)
        self.supervisor = Supervisor(self.ctx, self.puller, self.sandboxes,
                                     ContainerFactory(self.ctx))
        self.lifecycle = PodLifecycle(self.ctx, self.sandboxes, self.supervisor)
        self.pods: dict[str, Pod] = {}
        self._bg: set[asyncio.Task] = set()
        # listener(pod, type, reason, message, container) on every pod event (the node agent
        # syncs status and forwards the cluster's pods' events to the API)
        self.listeners: list = []
        self.metrics.add_source(self._pod_metrics)

    @property
    def host_ip(self) -> str:
        return self.sandboxes.host_ip

    def log_path(self, c: Ctr, attempt: int) -> str:
        return self.ctx.layout.log_path(c, attempt)

    # -- component ----------------------------------------------------------------------

    async def start(self) -> None:
        self.ctx.node = NodeFacts(name=self.node_name, bridge=self.daemon.config.bridge,
                                  node_ip=self.daemon.node.plan.node_ip)
        self.store.prepare()
        os.makedirs(os.path.join(self.dir, "pods"), mode=0o700, exist_ok=True)
        with contextlib.suppress(SandboxError):  # reported per pod when it is missing
            self.sandboxes.pause_rootfs()
        for pod in self.store.load_all():
            self.pods[pod.key] = pod
        for pod in list(self.pods.values()):
            if not pod.stopped:
                await self.lifecycle.adopt(pod)
        await self.sandboxes.refresh_host_ip()
        self._spawn(self._gc_when_serving())
        self._spawn(eviction.watch_local_storage(
            self.ctx, self.pods, lambda pod: self._spawn(self.stop_pod(pod, 0, "Evicted"))))
        self._spawn(self.supervisor.rotator.run())
        log.info("pod runtime: %s, %d pods adopted, CNI conf %s, plugins %s", self.oci,
                 sum(1 for p in self.pods.values() if not p.stopped), self.cfg.cni_conf_dir,
                 ":".join(self.cfg.cni_bin_dirs))

    def _record_event(self, pod: Pod, kind: str, reason: str, message: str,
                      container: str) -> None:
        self.events.record(ObjectRef("Pod", pod.name, pod.namespace), kind, reason,
                                  message, f"spec.containers{{{container}}}" if container else "")
        for listener in self.listeners:
            listener(pod, kind, reason, message, container)

    def _pod_metrics(self):
        """Pods by phase, read by the metrics thread (a dict the loop changes meanwhile is
        copied again)."""
        for _ in range(5):
            try:
                pods = list(self.pods.values())
                break
            except RuntimeError:
                continue
        else:
            return
        phases = collections.Counter((p.phase(),) for p in pods)
        yield gauge("podnet_pods", "Pods of this node's runtime, by phase", ["phase"], phases)

    async def stop(self) -> None:
        """podnetd stops: the pods keep running (their conmons are in other sessions);
        only our watchers go."""
        runs = list(self.ctx.runs.values())
        tasks = [r.task for r in runs if r.task] + \
            [cr.task for r in runs for cr in r.ctrs.values() if cr.task] + list(self._bg)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        await self.puller.close()
        for pod in self.pods.values():
            self.store.save(pod)
        self.supervisor.close()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    async def _gc_when_serving(self) -> None:
        """CNI GC once the daemon serves (the podnet plugin calls back into it)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await within(self.serving.wait(), 10)
        await self.sandboxes.gc([(p.pause_id, "eth0") for p in self.pods.values() if p.cni])

    # -- requests -----------------------------------------------------------------------

    def get(self, name: str, namespace: str = "") -> Pod:
        pod = self.pods.get(f"{namespace or 'default'}/{name}")
        if pod is None:
            raise PodError(f"pod {name!r} not found in namespace {namespace or 'default'}",
                           "not_found")
        return pod

    async def run_pod(self, text: str) -> Pod:
        try:
            # off the loop: the text is untrusted (bounded, but parsing 1 MiB takes a while)
            doc = await asyncio.to_thread(manifest.parse, text)
        except manifest.ManifestError as e:
            raise PodError(f"invalid manifest: {e}") from None
        return await self.start_pod(doc, str(uuid.uuid4()))

    async def start_pod(self, doc: dict, uid: str) -> Pod:
        """Run a validated Pod document under the given uid (the cluster's pods keep the uid
        the API gave them, so a restarted podnetd knows which object each pod is)."""
        meta = doc["metadata"]
        key = f"{meta.get('namespace') or 'default'}/{meta['name']}"
        if key in self.pods:
            raise PodError(f"pod {key} already exists (pod rm it first)", "exists")
        # images are the containers' business (puller.py): pulled, or ErrImagePull, as the
        # kubelet does once the pod is accepted
        pod = Pod(doc, uid, time.time())
        self.ctx.event(pod, "Normal", "Scheduled", f"Assigned {key} to {self.node_name}")
        self.pods[key] = pod
        self.store.save(pod)
        self.lifecycle.start(pod)
        return pod

    async def wait_started(self, pod: Pod, timeout: float = 60) -> None:
        """Until the sandbox exists and every container has been started once, or an init
        container (or sidecar) runs and holds the rest back (a long init job, a startup probe
        that has not passed: the pod is under way, the caller need not wait it out), the pod
        ended, or its sandbox failed once (it stays Pending and is tried again): what `pod run`
        waits for before answering."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pod.stage in (Stage.COMPLETED, Stage.TERMINATED) \
                    or (pod.sandbox and pod.initialized and all(
                        c.state.get("waiting", {}).get("reason") != "ContainerCreating"
                        for c in pod.apps())) \
                    or (pod.sandbox and not pod.initialized
                        and any(c.running() for c in pod.init_order())) \
                    or (not pod.sandbox and self.lifecycle.sandbox_failures.get(pod.uid)):
                return
            await asyncio.sleep(0.02)

    async def stop_pod(self, pod: Pod, max_grace: float | None = None,
                       reason: str = "Stopped") -> bool:
        """Stop the pod with its grace period, capped at max_grace when that is given; False
        when it was already stopped."""
        async with self.ctx.run(pod).lock:
            if pod.stopped:
                return False
            grace = manifest.grace_period(pod.spec)
            await self.lifecycle.stop(pod, grace if max_grace is None else min(grace, max_grace),
                                      reason)
            return True

    async def stop_all(self, max_grace: float | None = None) -> list[str]:
        """Stop every pod not yet stopped, all at once, as kubelet's graceful node shutdown
        does. Without it a shutdown leaves the containers to systemd-shutdown, which waits 90 s
        for any PID 1 that ignores SIGTERM. Returns the keys of the pods this call stopped."""
        pods = list(self.pods.values())
        stopped = await asyncio.gather(*(self.stop_pod(p, max_grace, "Terminated") for p in pods))
        return sorted(p.key for p, done in zip(pods, stopped) if done)

    async def remove_pod(self, pod: Pod) -> None:
        await self.stop_pod(pod)
        async with self.ctx.run(pod).lock:
            await asyncio.to_thread(self._remove_pod_dir, pod)
            self.store.remove(pod)
            self.pods.pop(pod.key, None)
            self.ctx.forget(pod)

    def _remove_pod_dir(self, pod: Pod) -> None:
        """Unmount what is left under the pod's directory, then delete it. Its volumes hold
        whatever the containers wrote, so this runs off the event loop, and never while a
        mount is left: a volume's staging mount can be a hostPath, which rmtree would empty."""
        pod_dir = self.ctx.layout.pod_dir(pod)
        for m in sorted(host.mounts_under(pod_dir), key=len, reverse=True):
            host.umount(m)
        left = host.mounts_under(pod_dir)
        if left:
            raise PodError(f"pod {pod.key}: still mounted, not removed: {', '.join(left)}",
                           "internal")
        shutil.rmtree(pod_dir, ignore_errors=True)

    def images_in_use(self) -> set[str]:
        return {c.image_id for p in self.pods.values() if not p.stopped
                for c in p.containers.values() if c.image_id}
