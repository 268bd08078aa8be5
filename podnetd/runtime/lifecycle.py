"""The pod's life (kubelet's pod worker and kuberuntime's SyncPod/KillPod): the sandbox, tried
again with back-off while it cannot be made (the pod stays Pending); init containers one by one
to success, each sidecar started (and startup-probed) before what follows it; then the app
containers under their restart policy; once every app container is done for good the sidecars
go, in reverse. A stop kills the app containers together, then sidecars and init containers in
reverse order, within the grace period, and tears the sandbox down.

The stages are model.Stage: CREATING -> INITIALIZING -> RUNNING -> COMPLETED, and from any of
them TERMINATING -> TERMINATED."""
import asyncio
import contextlib
import logging
import time

from ..aio import within
from . import manifest
from .context import Context
from .model import Pod, Stage
from .sandbox import Sandboxes
from .supervisor import Supervisor
from ..timestamps import rfc3339

log = logging.getLogger(__name__)


def sandbox_backoff(failures: int, base: float, maximum: float) -> float:
    """kubelet's back-off for FailedCreatePodSandBox: base (10 s) doubling up to maximum."""
    return min(base * 2 ** (max(failures, 1) - 1), maximum)


class PodLifecycle:
    def __init__(self, ctx: Context, sandboxes: Sandboxes, supervisor: Supervisor):
        self.ctx = ctx
        self.sandboxes = sandboxes
        self.supervisor = supervisor
        self.sandbox_failures: dict[str, int] = {}   # by pod uid, since this podnetd started

    def start(self, pod: Pod) -> None:
        self.ctx.run(pod).task = asyncio.get_running_loop().create_task(self._run(pod))

    async def adopt(self, pod: Pod) -> None:
        """podnetd restarted: watch the pod again. Its containers never stopped."""
        ctx = self.ctx
        if pod.sandbox and not await self.sandboxes.alive(pod):
            ctx.event(pod, "Warning", "SandboxLost", "the pause container is gone")
            pod.reason = "SandboxLost"
            await self.stop(pod, 0, "SandboxLost")
            return
        ctx.event(pod, "Normal", "Adopted", "podnetd restarted and adopted the pod")
        ctx.persist(pod)   # an older podnetd's state file is written back in this form
        for c in pod.containers.values():
            if c.attempt:
                ctx.ctr(c).exited = asyncio.Event()
        if pod.stage is Stage.TERMINATING:
            await self.stop(pod, 0, "Stopped")
        elif pod.stage is Stage.COMPLETED:  # only watch what is still ending
            for c in pod.containers.values():
                if c.attempt:
                    self.supervisor.supervise(c)
        else:
            self.start(pod)

    async def _run(self, pod: Pod) -> None:
        ctx = self.ctx
        try:
            if not pod.sandbox and not await self._make_sandbox(pod):
                return
            if pod.stage is Stage.CREATING:
                pod.stage = Stage.INITIALIZING
                ctx.persist(pod)
            if not await self._run_init(pod):
                return
            tasks = [self.supervisor.supervise(c) for c in pod.apps()]
            await asyncio.gather(*tasks)
            if pod.stop_requested:
                return
            # every app container is done for good: sidecars go, in reverse order
            pod.stage = Stage.COMPLETED
            ctx.persist(pod)
            await self._stop_sidecars(pod, "pod completed")
            ctx.event(pod, "Normal", "Completed" if pod.phase() == "Succeeded" else "Failed",
                      f"pod {pod.phase()}")
            ctx.persist(pod)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - never let a pod's runner die silently
            log.exception("pod %s: runner failed", pod.key)
            ctx.event(pod, "Warning", "RuntimeError", str(e))
            ctx.persist(pod)

    async def _make_sandbox(self, pod: Pod) -> bool:
        """The sandbox, tried until it is made or the pod is stopped (kubelet: the pod stays
        Pending, FailedCreatePodSandBox each time, back-off doubling to the restart back-off
        maximum). False when the pod was stopped first."""
        ctx = self.ctx
        stop = ctx.run(pod).stop
        while not pod.stop_requested:
            try:
                await self.sandboxes.create(pod)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure: reported, tried again
                failures = self.sandbox_failures.get(pod.uid, 0) + 1
                self.sandbox_failures[pod.uid] = failures
                delay = sandbox_backoff(failures, ctx.cfg.restart_backoff,
                                        ctx.cfg.restart_backoff_max)
                log.warning("pod %s: sandbox (attempt %d, next in %gs): %s", pod.key, failures,
                            delay, e)
                ctx.event(pod, "Warning", "FailedCreatePodSandBox",
                          f"Failed to create pod sandbox: {e} (attempt {failures}, "
                          f"back-off {delay:g}s)")
                for c in pod.containers.values():
                    c.state = {"waiting": {"reason": "ContainerCreating",
                                           "message": f"sandbox: {e}"}}
                ctx.persist(pod)
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(stop.wait(), delay)
                continue
            for c in pod.containers.values():
                if c.state.get("waiting", {}).get("message"):
                    c.state = {"waiting": {"reason": "ContainerCreating"}}
            self.sandbox_failures.pop(pod.uid, None)
            return True
        return False

    async def _run_init(self, pod: Pod) -> bool:
        """Init containers one by one to success; sidecars started (and startup-probed) in
        order before what follows them. False when the pod failed or is stopping."""
        ctx = self.ctx
        run = ctx.run(pod)
        for c in pod.init_order():
            if pod.stop_requested:
                return False
            if c.kind == "sidecar":
                task = self.supervisor.supervise(c)
                waiter = asyncio.ensure_future(ctx.ctr(c).started.wait())
                stopper = asyncio.ensure_future(run.stop.wait())
                await asyncio.wait([waiter, stopper, task], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if not c.started:
                    return False
                continue
            if c.exit_code() == 0 and not c.attempt:
                continue
            await self.supervisor.supervise(c)
            if c.exit_code() != 0:
                if not pod.stop_requested:
                    pod.stage = Stage.COMPLETED
                    ctx.event(pod, "Warning", "Failed", f"init container {c.name} failed")
                    await self._stop_sidecars(pod, "pod failed", wait=False)
                    ctx.persist(pod)
                return False
        if pod.stage is Stage.INITIALIZING:
            pod.stage = Stage.RUNNING
            pod.initialized_at = pod.initialized_at or time.time()
            ctx.persist(pod)
        return True

    async def _stop_sidecars(self, pod: Pod, why: str, wait: bool = True) -> None:
        for c in reversed(pod.of_kind("sidecar")):
            await self.supervisor.kill(c, manifest.grace_period(pod.spec), why)
            task = self.ctx.ctr(c).task
            if wait and task:
                await task

    async def stop(self, pod: Pod, grace: float, reason: str) -> None:
        ctx = self.ctx
        run = ctx.run(pod)
        pod.stage = Stage.TERMINATING
        run.stop.set()
        ctx.persist(pod)
        ctx.event(pod, "Normal", "Killing", f"stopping pod (grace period {grace:g}s)")
        deadline = time.monotonic() + grace

        def left() -> float:
            return max(0.0, deadline - time.monotonic())
        # app containers together, then init containers and sidecars in reverse
        await asyncio.gather(*(self.supervisor.kill(c, left(), "pod stopped")
                               for c in pod.apps() if c.attempt))
        for c in reversed(pod.init_order()):
            if c.attempt:
                await self.supervisor.kill(c, left(), "pod stopped")
        if run.task and not run.task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await within(asyncio.shield(run.task), 10)
            if not run.task.done():
                run.task.cancel()
        for c in pod.containers.values():
            task = ctx.ctr(c).task
            if task and not task.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await within(asyncio.shield(task), 5)
            if c.attempt:  # adopted and never watched, or lost: make sure it is gone
                await self.supervisor.remove_lost(c)
            if "running" in c.state or "waiting" in c.state:
                c.state = {"terminated": {"exitCode": 137, "reason": "Error",
                                          "message": "pod stopped",
                                          "finishedAt": rfc3339()}}
            c.ready = False
        await self.sandboxes.teardown(pod)
        pod.reason = pod.reason or reason
        pod.stage = Stage.TERMINATED
        self.sandbox_failures.pop(pod.uid, None)
        ctx.persist(pod)
