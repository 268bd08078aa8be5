"""The container supervisor (kubelet's container restart loop, CRI-O's container_server side):
each attempt of a container runs under conmon (oci.py: it runs `runc create`, leaves podnetd's
session, writes the CRI log, the exit file and the OOM fact), then podnetd `runc start`s it.
Here: starting an attempt, waiting for its exit (conmon's pidfd), recording how it ended,
killing (preStop, SIGTERM, grace, SIGKILL), log rotation (logrotate.py), and the restart
policy with kubelet's back-off. Attempts started by an older podnetd under shim.py are still
watched to their end (their pid is "shim_pid", their exit file holds "code time")."""
import asyncio
import contextlib
import logging
import os
import signal
import time

from ..aio import within
from . import host, manifest, oci, probes
from .containers import ContainerFactory
from .context import Context
from .errors import ContainerError
from .images import ImageError
from .model import Ctr, Stage
from .logrotate import Rotator
from .prober import Prober
from .puller import ImagePuller
from .sandbox import Sandboxes
from ..timestamps import rfc3339

log = logging.getLogger(__name__)
SHIM_CHECK_INTERVAL = 2.0  # seconds between checks that a legacy shim did not outlive its container
STARTUP_TIMEOUT = 30.0


def restart_backoff(step: int, base: float, maximum: float) -> float:
    """kubelet: the first restart is immediate, then base (10 s) doubling up to maximum."""
    if step <= 1:
        return 0.0
    return min(base * 2 ** (step - 2), maximum)


def should_restart(c: Ctr, code: int) -> bool:
    pod = c.pod
    if pod.stop_requested or (pod.stage is Stage.COMPLETED and c.kind == "sidecar"):
        return False
    if c.kind == "sidecar":
        return True
    policy = manifest.restart_policy(pod.spec)
    if c.kind == "init":
        return code != 0 and policy != "Never"
    return policy == "Always" or (policy == "OnFailure" and code != 0)


class Supervisor:
    def __init__(self, ctx: Context, puller: ImagePuller, sandboxes: Sandboxes,
                 factory: ContainerFactory):
        self.ctx = ctx
        self.puller = puller
        self.sandboxes = sandboxes
        self.factory = factory
        self.prober = Prober(ctx, self.kill)
        self.backoff_base = ctx.cfg.restart_backoff
        self.backoff_max = ctx.cfg.restart_backoff_max
        cfg = ctx.cfg
        self.rotator = Rotator(cfg.container_log_max_size, cfg.container_log_max_files)
        self._runtime_path = ""

    def close(self) -> None:
        pass

    # -- the restart loop ---------------------------------------------------------------

    def supervise(self, c: Ctr) -> asyncio.Task:
        cr = self.ctx.ctr(c)
        if cr.task is None or cr.task.done():
            cr.task = asyncio.get_running_loop().create_task(self._supervise(c))
        return cr.task

    async def _supervise(self, c: Ctr) -> None:
        pod, ctx = c.pod, self.ctx
        stop = ctx.run(pod).stop
        while True:
            start_failed = False
            if c.attempt is None:
                if pod.stop_requested:
                    return
                # the image first (pulled as its policy says, retried with the image back-off
                # whatever the restart policy: the container never ran)
                image = await self.puller.image_for(c)
                if image is None:
                    return
                try:
                    await self._start(c, image)
                except (ContainerError, ImageError, OSError, oci.OciError, ValueError) as e:
                    reason = e.reason if isinstance(e, ContainerError) else "CreateContainerError"
                    c.state = {"waiting": {"reason": reason, "message": str(e)}}
                    ctx.event(pod, "Warning", "Failed", f"Error: {e}", c.name)
                    ctx.persist(pod)
                    code, ran, start_failed = 128, 0.0, True
                else:
                    code, ran = await self._watch(c)
            else:
                code, ran = await self._watch(c)
            if not should_restart(c, code):
                return
            if "terminated" in c.state:  # kubelet: lastState is the run before the current one
                c.last_state = c.state
            # kubelet: a container that ran twice the maximum back-off (10 minutes by default)
            # without failing restarts without back-off
            c.backoff_step = 1 if ran >= 2 * self.backoff_max else c.backoff_step + 1
            delay = restart_backoff(c.backoff_step, self.backoff_base, self.backoff_max)
            if delay > 0:
                if not start_failed:  # a config/create error keeps its own reason (kubelet)
                    c.state = {"waiting": {"reason": "CrashLoopBackOff", "message":
                                           f"back-off {delay:g}s restarting failed container="
                                           f"{c.name} pod={pod.name}"}}
                ctx.event(pod, "Warning", "BackOff", f"Back-off restarting failed container "
                                                     f"{c.name} ({delay:g}s)", c.name)
                ctx.persist(pod)
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(stop.wait(), delay)
                if pod.stop_requested:
                    return
            if not start_failed:  # a container that never ran was not restarted
                c.restart_count += 1
                ctx.metrics.container_restarts.inc()

    # -- one attempt --------------------------------------------------------------------

    async def _start(self, c: Ctr, image: dict) -> None:
        pod, ctx = c.pod, self.ctx
        c.image_id = f"sha256:{image['id']}"
        pause_pid = await self.sandboxes.pause_pid(pod)
        # off the event loop: the old writable layer holds whatever the container wrote (any
        # number of files), and the config reads the image's files and prepares volumes
        bundle = await asyncio.to_thread(self.factory.create, c, image, pause_pid)
        if pod.stop_requested:  # stopped while we prepared: do not start what the stop missed
            raise ContainerError("CreateContainerError", f"pod {pod.key} is stopping")
        attempt = c.restart_count
        log_file = ctx.layout.log_path(c, attempt)
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        self._prune_logs(c, attempt)
        exit_dir, persist = ctx.layout.ctr_dir(c, "exits"), ctx.layout.ctr_dir(c, "persist")
        exit_file, pid_file = os.path.join(exit_dir, c.cid), ctx.layout.ctr_dir(c, "pid")
        for d in (exit_dir, persist):
            os.makedirs(d, mode=0o700, exist_ok=True)
        for p in (exit_file, pid_file, os.path.join(persist, "oom"),
                  os.path.join(persist, "exit"), os.path.join(bundle, "oom")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        if os.path.exists(f"/run/{ctx.oci}/{c.cid}"):  # left by a crash between exit and delete
            await oci.delete(ctx.oci, c.cid)
        if not self._runtime_path:
            self._runtime_path = oci.runtime_binary(ctx.oci, ctx.layout.root)
        t0 = time.monotonic()
        conmon_pid_file = ctx.layout.ctr_dir(c, "conmon.pid")
        await oci.create_under_conmon(
            oci.conmon_argv(self._runtime_path, c.cid, bundle, log_file, exit_dir, persist,
                            pid_file, conmon_pid_file),
            ctx.layout.ctr_dir(c, "conmon.log"), STARTUP_TIMEOUT)
        with open(conmon_pid_file) as f:
            conmon_pid = int(f.read().strip())
        c.attempt = {"pid": conmon_pid, "started_at": time.time(), "log": log_file,
                     "exit": exit_file, "persist": persist, "n": attempt}
        cr = ctx.ctr(c)
        cr.exited = asyncio.Event()
        cr.kill_reason = None
        try:
            await oci.start(ctx.oci, c.cid)
        except oci.OciError:
            # created but not started: conmon sees the exit of the kill and writes it
            await oci.kill(ctx.oci, c.cid, signal.SIGKILL, all_=True)
            raise
        log.debug("pod %s: container %s started in %.3fs", pod.key, c.name, time.monotonic() - t0)
        c.state = {"running": {"startedAt": rfc3339()}}
        # As the kubelet: without a startup probe a running container has started, and
        # without a readiness probe it is ready once started. Said now, with the state, so
        # the status written for Started is already the final one (the prober keeps them).
        c.started = not c.spec.get("startupProbe")
        c.ready = c.started and not c.spec.get("readinessProbe")
        if c.started:
            cr.started.set()
        else:
            cr.started.clear()
        ctx.event(pod, "Normal", "Started", f"Started container {c.name}", c.name)
        ctx.persist(pod)

    def _prune_logs(self, c: Ctr, attempt: int) -> None:
        """Keep the logs of this attempt and the previous one (kubelet keeps one dead container
        per container): a crash loop does not fill the disk with old attempts' logs."""
        log_dir = os.path.dirname(self.ctx.layout.log_path(c, attempt))
        for name in os.listdir(log_dir):
            n = name.split(".", 1)[0]
            if n.isdigit() and int(n) < attempt - 1:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(log_dir, name))

    async def _wait_exit(self, c: Ctr) -> None:
        legacy = "shim_pid" in c.attempt   # started by an older podnetd under shim.py
        pid = c.attempt["shim_pid"] if legacy else c.attempt["pid"]
        if os.path.exists(c.attempt["exit"]) \
                or not host.pid_alive(pid, "shim.py" if legacy else "conmon"):
            host.reap(pid)
            return
        fd = host.pidfd_open(pid)
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        stopped_checks = 0
        try:
            while True:
                try:
                    await within(asyncio.shield(fut), SHIM_CHECK_INTERVAL)
                    break
                except asyncio.TimeoutError:
                    stopped_checks = self._supervisor_outlived_container(c, pid, stopped_checks,
                                                                         legacy)
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        host.reap(pid)

    def _supervisor_outlived_container(self, c: Ctr, pid: int, stopped_checks: int,
                                       legacy: bool) -> int:
        """Watchdog for a supervisor (conmon, or an older podnetd's shim.py) that does not
        finish although the container's init is dead (seen rarely, right after a kill during a
        probe's `runc exec`): after two checks in a row that find init gone, end the supervisor
        so the exit is noticed and the restart policy runs, instead of a pod that never
        restarts. Cheap while init lives (one /proc read). Returns the new count."""
        if _init_alive(self.ctx.layout.ctr_dir(c, "pid")):
            return 0
        if stopped_checks + 1 < 2:
            return stopped_checks + 1
        log.warning("pod %s: container %s has exited but its supervisor %d did not finish; "
                    "ending it", c.pod.key, c.name, pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if legacy:
                os.killpg(pid, signal.SIGKILL)   # the shim led its own process group
            else:
                os.kill(pid, signal.SIGKILL)
        return 0

    async def _watch(self, c: Ctr) -> tuple[int, float]:
        """Probe the running container until it exits; record how it ended.
        Returns (exit code, seconds it ran)."""
        pod, ctx = c.pod, self.ctx
        cr = ctx.ctr(c)
        if cr.exited is None:
            cr.exited = asyncio.Event()
        probing = asyncio.get_running_loop().create_task(self.prober.run(c))
        if "pid" in c.attempt:   # under conmon: podnetd rotates its log
            self.rotator.watch(c.attempt["log"], ctx.layout.ctr_dir(c, "ctl"))
        try:
            await self._wait_exit(c)
        finally:
            self.rotator.unwatch(c.attempt["log"])
            probing.cancel()
            # bounded: the container is gone whatever its probes do; a probe task that does not
            # end must not keep the restart policy from running
            done, _ = await asyncio.wait({probing}, timeout=5.0)
            if not done:
                log.warning("pod %s: container %s: its probes did not stop within 5 s",
                            pod.key, c.name)
        code, finished = 255, time.time()
        try:
            with open(c.attempt["exit"]) as f:
                parts = f.read().split()
                # conmon writes the code only (the file's time is the exit's); shim.py both
                code = int(parts[0])
                finished = float(parts[1]) if len(parts) > 1 else os.fstat(f.fileno()).st_mtime
        except (OSError, ValueError, IndexError):
            if cr.kill_reason:  # we killed it (the watchdog may have ended its shim too)
                code = 128 + signal.SIGKILL
            else:
                ctx.event(pod, "Warning", "ExitUnknown", "the container's exit status was lost",
                          c.name)
        oom = host.oom_killed(c.cgroups_path) or ("persist" in c.attempt and any(
            os.path.exists(os.path.join(d, "oom"))   # conmon: persist dir, or its cwd (v1)
            for d in (c.attempt["persist"], ctx.layout.ctr_dir(c))))
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        started = c.attempt["started_at"]
        term = {"exitCode": code, "reason": reason, "startedAt": rfc3339(started),
                "finishedAt": rfc3339(finished), "containerID": f"runc://{c.cid}"}
        if cr.kill_reason:
            term["message"] = cr.kill_reason
        with contextlib.suppress(oci.OciError):
            await oci.delete(ctx.oci, c.cid)
        c.state = {"terminated": term}
        c.ready = False
        c.attempt = None
        cr.exited.set()
        kind = "Normal" if code == 0 and not oom else "Warning"
        ctx.event(pod, kind, reason if oom else "Exited",
                  f"container {c.name} exited with code {code}" + (" (OOM killed)" if oom else ""),
                  c.name)
        ctx.persist(pod)
        return code, finished - started

    async def kill(self, c: Ctr, grace: float, why: str, restart: bool = False) -> None:
        """preStop, SIGTERM, the grace period, SIGKILL; returns once the container is gone.
        (Called from the container's own probe task when restart is set: then it only
        signals; the supervisor sees the exit.)"""
        ctx = self.ctx
        cr = ctx.ctr(c)
        if c.attempt is None or cr.exited is None:
            return
        cr.kill_reason = why
        deadline = time.monotonic() + grace
        pre = (c.spec.get("lifecycle") or {}).get("preStop")
        if pre and grace > 0:
            ok, msg = await probes.run_handler(pre, runtime=ctx.oci, cid=c.cid,
                                               container=c.spec, pod_ip=c.pod.ip,
                                               timeout=max(grace, 0.1))
            if not ok:
                ctx.event(c.pod, "Warning", "FailedPreStopHook", msg, c.name)
        await oci.kill(ctx.oci, c.cid, signal.SIGTERM)
        left = deadline - time.monotonic()
        if left > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await within(asyncio.shield(cr.exited.wait()), left)
        if not cr.exited.is_set():
            if grace > 0:
                ctx.event(c.pod, "Normal", "Killing",
                          f"grace period over ({grace:.1f}s left at SIGTERM): SIGKILL", c.name)
            await oci.kill(ctx.oci, c.cid, signal.SIGKILL, all_=True)
        if not restart:
            with contextlib.suppress(asyncio.TimeoutError):
                await within(asyncio.shield(cr.exited.wait()), 30)

    async def remove_lost(self, c: Ctr) -> None:
        """A container whose attempt nobody watches (adopted, never watched, or lost): make
        sure it is gone."""
        await oci.kill(self.ctx.oci, c.cid, signal.SIGKILL, all_=True)
        await oci.delete(self.ctx.oci, c.cid)
        c.attempt = None


def _init_alive(pid_file: str) -> bool:
    """Whether the container's init (pid from runc's --pid-file) still runs; True when unknown."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return not os.path.exists(pid_file)  # no pid file yet: still starting
