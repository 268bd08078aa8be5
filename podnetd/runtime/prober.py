"""The prober (kubelet's pkg/kubelet/prober): one worker type for startup, liveness and
readiness probes, with one threshold state machine (worker.go's resultRun): a result only
changes after successThreshold successes or failureThreshold failures in a row.

- startup: unknown until it succeeds once (the container is then started) or fails
  failureThreshold times (the container is killed and restarted); liveness and readiness wait
  for it.
- liveness: success until failureThreshold failures in a row: the container is killed and
  restarted (its own terminationGracePeriodSeconds, else the pod's).
- readiness: failure until successThreshold successes; flips Ready both ways.
Every failed startup/liveness probe is an Unhealthy event; readiness reports when Ready drops.
"""
import asyncio
import enum

from . import manifest, probes
from .context import Context
from .model import Ctr


class Kind(enum.Enum):
    STARTUP = "Startup"
    LIVENESS = "Liveness"
    READINESS = "Readiness"

    @property
    def field(self) -> str:
        return self.value[0].lower() + self.value[1:] + "Probe"


INITIAL_RESULT = {Kind.STARTUP: None, Kind.LIVENESS: True, Kind.READINESS: False}


class Thresholds:
    """A probe's result (True, False or None: unknown) from its successive outcomes. Pure."""

    def __init__(self, success_threshold: int, failure_threshold: int, initial: bool | None):
        self.success_threshold, self.failure_threshold = success_threshold, failure_threshold
        self.result = initial
        self._last: bool | None = None
        self._run = 0

    def observe(self, ok: bool) -> bool | None:
        """Take one outcome; returns the new result when this outcome changed it, else None."""
        if ok == self._last:
            self._run += 1
        else:
            self._last, self._run = ok, 1
        needed = self.success_threshold if ok else self.failure_threshold
        if self._run < needed or ok == self.result:
            return None
        self.result = ok
        return ok


class Worker:
    """Probes one container with one probe until the result says it is done (startup:
    decided; liveness: failed) or it is cancelled (the container exited)."""

    def __init__(self, prober: "Prober", c: Ctr, kind: Kind, probe: dict):
        self.prober, self.c, self.kind, self.probe = prober, c, kind, probe
        self.settings = manifest.probe_settings(probe)
        # readiness starts from what the container shows (an adopted one may be Ready)
        initial = c.ready if kind is Kind.READINESS else INITIAL_RESULT[kind]
        self.state = Thresholds(self.settings["successThreshold"],
                                self.settings["failureThreshold"], initial)

    async def run(self) -> bool | None:
        """The result that ended the worker (a readiness worker never ends by itself)."""
        await asyncio.sleep(self.settings["initialDelaySeconds"])
        while True:
            ok, msg = await self.prober.probe_once(self.c, self.probe, self.kind)
            if not ok and self.kind is not Kind.READINESS:
                self.prober.ctx.event(self.c.pod, "Warning", "Unhealthy",
                                      f"{self.kind.value} probe failed: {msg}", self.c.name)
            changed = self.state.observe(ok)
            if changed is not None and await self.prober.on_result(self, changed, msg):
                return changed
            await asyncio.sleep(self.settings["periodSeconds"])


class Prober:
    def __init__(self, ctx: Context, kill):
        self.ctx = ctx
        self._kill = kill   # supervisor.kill(c, grace, why, restart=True)

    async def run(self, c: Ctr) -> None:
        """The probes of a running container: startup gates the others."""
        pod = c.pod
        spec = {kind: c.spec.get(kind.field) for kind in Kind}
        if not c.started:
            if spec[Kind.STARTUP] and \
                    not await Worker(self, c, Kind.STARTUP, spec[Kind.STARTUP]).run():
                return
            c.started = True
            self.ctx.ctr(c).started.set()
            if not spec[Kind.READINESS]:
                c.ready = True
            self.ctx.persist(pod)
        if not spec[Kind.READINESS] and not c.ready:
            c.ready = True
            self.ctx.persist(pod)
        workers = [Worker(self, c, kind, spec[kind]).run()
                   for kind in (Kind.LIVENESS, Kind.READINESS) if spec[kind]]
        if workers:
            await asyncio.gather(*workers)

    async def probe_once(self, c: Ctr, probe: dict, kind: Kind) -> tuple[bool, str]:
        s = manifest.probe_settings(probe)
        ok, msg = await probes.run_handler(probe, runtime=self.ctx.oci, cid=c.cid,
                                           container=c.spec, pod_ip=c.pod.ip,
                                           timeout=s["timeoutSeconds"])
        self.ctx.metrics.probe_results.labels(kind.value.lower(),
                                              "success" if ok else "failure").inc()
        return ok, msg

    async def on_result(self, worker: Worker, result: bool, msg: str) -> bool:
        """Act on a changed result; True ends the worker."""
        c, ctx = worker.c, self.ctx
        grace = manifest.grace_period(c.pod.spec)
        if worker.kind is Kind.STARTUP:
            if not result:
                await self._kill(c, grace, "startup probe failed", restart=True)
            return True
        if worker.kind is Kind.LIVENESS:
            if result:
                return False
            ctx.event(c.pod, "Normal", "Killing",
                      f"Container {c.name} failed liveness probe, will be restarted", c.name)
            await self._kill(c, worker.probe.get("terminationGracePeriodSeconds", grace),
                             "liveness probe failed", restart=True)
            return True
        c.ready = result
        if not result:
            ctx.event(c.pod, "Warning", "Unhealthy", f"Readiness probe failed: {msg}", c.name)
        ctx.persist(c.pod)
        return False
