"""The image a container starts from (kubelet's image manager, EnsureImageExists): the
container's imagePullPolicy (defaulted as the API server does: Always for `:latest` or no tag,
else IfNotPresent) against the image store, a pull from the registry when it says so
(registry.py), and the kubelet's waiting reasons, events and back-off:

  Never, absent           ErrImageNeverPull   `Container image "X" is not present with pull
                                               policy of Never`
  pull failed             ErrImagePull        Failed `Failed to pull image "X": ...`
  within the back-off     ImagePullBackOff    BackOff `Back-off pulling image "X"`
  pulled                                      Pulling / Pulled `Successfully pulled image "X"
                                               in 1.2s (1.2s including waiting)...`
  present (IfNotPresent)                      Pulled `Container image "X" already present on
                                               machine`

The back-off is the kubelet's: per pod and image, from the restart back-off's base (10 s)
doubling to its maximum (300 s), forgotten after twice the maximum without a failure. A failed
pull shows ErrImagePull until the pod worker's next try (the base period, as the kubelet's
worker re-syncs a pod that failed after 10 s); if the back-off still runs then, the container
shows ImagePullBackOff until it ends. Pulls are retried whatever the restart policy (the
container never ran). Concurrent pulls of one image share one skopeo."""
import asyncio
import contextlib
import logging
import time

from ..aio import within
from . import registry
from .context import Context
from .images import ImageStore
from .model import Ctr

log = logging.getLogger(__name__)

PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")


class Backoff:
    """kubelet's flowcontrol.Backoff: per key, base doubling to maximum; an entry idle for
    twice the maximum starts again from the base."""

    def __init__(self, base: float, maximum: float, clock=time.monotonic):
        self.base, self.maximum, self.clock = base, maximum, clock
        self._entries: dict = {}   # key -> (duration, last failure)

    def failed(self, key) -> float:
        """Record a failure; the back-off that starts now."""
        now = self.clock()
        self._gc(now)
        duration, last = self._entries.get(key, (0.0, now))
        duration = self.base if duration == 0 else min(duration * 2, self.maximum)
        self._entries[key] = (duration, now)
        return duration

    def left(self, key) -> float:
        duration, last = self._entries.get(key, (0.0, 0.0))
        return max(0.0, last + duration - self.clock())

    def forget(self, key) -> None:
        self._entries.pop(key, None)

    def _gc(self, now: float) -> None:
        for key, (_, last) in list(self._entries.items()):
            if now - last > 2 * self.maximum:
                del self._entries[key]


def pull_policy(spec: dict, ref: registry.Reference) -> str:
    return spec.get("imagePullPolicy") or registry.default_pull_policy(ref)


def duration(seconds: float) -> str:
    """Go's time.Duration as the kubelet prints it, to the millisecond (1.234s, 812ms)."""
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.3f}s"


class ImagePuller:
    def __init__(self, ctx: Context, images: ImageStore, cfg: registry.RegistryConfig):
        self.ctx = ctx
        self.images = images
        self.cfg = cfg
        self.backoff = Backoff(ctx.cfg.restart_backoff, ctx.cfg.restart_backoff_max)
        self._pulls: dict[str, _Pull] = {}   # by store name: the pull in flight

    async def close(self) -> None:
        """podnetd stops: pulls in flight end (their skopeo is killed)."""
        tasks = [p.task for p in self._pulls.values()]
        self._pulls.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    async def image_for(self, c: Ctr) -> dict | None:
        """The store's image for container c, pulled if its policy says so, retried with the
        image back-off while it cannot be had; None once the pod is stopping."""
        pod, ctx = c.pod, self.ctx
        stop = ctx.run(pod).stop
        image = c.spec["image"]
        try:
            ref = registry.parse(image)
        except registry.InvalidImageName as e:
            # kubelet: the name never parses, so nothing is retried until the pod goes
            self._wait(c, "InvalidImageName", f"Failed to apply default image tag {image!r}: "
                                              f"{e}", event=("InspectFailed", "Warning"))
            await stop.wait()
            return None
        key = (pod.uid, ref.store_name)
        while not pod.stop_requested:
            left = self.backoff.left(key)
            if left > 0:
                msg = f'Back-off pulling image "{image}"'
                self._wait(c, "ImagePullBackOff", msg, event=("BackOff", "Normal"))
                await self._sleep(stop, left)
                continue
            try:
                found = await self._ensure(c, ref, stop)
            except registry.PullError as e:
                delay = self.backoff.failed(key)
                log.warning("pod %s: container %s: pull %s (next in %gs): %s", pod.key, c.name,
                            image, delay, e)
                ctx.event(pod, "Warning", "Failed", f'Failed to pull image "{image}": {e}',
                          c.name)
                self._wait(c, "ErrImagePull", str(e))
                # the pod worker tries again after its base period; within the back-off it
                # then shows ImagePullBackOff
                await self._sleep(stop, min(self.backoff.base, delay))
                continue
            except _NeverPull as e:
                self._wait(c, "ErrImageNeverPull", str(e),
                           event=("ErrImageNeverPull", "Warning"))
                await self._sleep(stop, self.backoff.base)   # an import may come meanwhile
                continue
            if found is None:   # the pod is stopping
                break
            self.backoff.forget(key)
            if c.state.get("waiting", {}).get("reason") in PULL_REASONS:
                c.state = {"waiting": {"reason": "ContainerCreating"}}
                ctx.persist(pod)
            return found
        return None

    async def _ensure(self, c: Ctr, ref: registry.Reference,
                      stop: asyncio.Event) -> dict | None:
        """The image as the policy has it; None when the pod stops during a pull."""
        pod, ctx, image = c.pod, self.ctx, c.spec["image"]
        policy = pull_policy(c.spec, ref)
        present = await asyncio.to_thread(self.images.get, ref.store_name)
        # a short name cannot be pulled (no registry, no internet): what was imported is it
        if present and (policy != "Always" or not ref.pullable):
            ctx.event(pod, "Normal", "Pulled",
                      f'Container image "{image}" already present on machine', c.name)
            return present
        if policy == "Never":
            raise _NeverPull(f'Container image "{image}" is not present with pull policy of '
                             "Never")
        registry.check_pullable(ref)
        ctx.event(pod, "Normal", "Pulling", f'Pulling image "{image}"', c.name)
        started = time.monotonic()
        result = await self._join(ref, stop)
        if result is None:
            return None
        pulled, pull_time = result
        waited = time.monotonic() - started
        ctx.event(pod, "Normal", "Pulled",
                  f'Successfully pulled image "{image}" in {duration(pull_time)} '
                  f'({duration(waited)} including waiting). Image size: '
                  f'{pulled.get("size", 0)} bytes.', c.name)
        return pulled

    async def _join(self, ref: registry.Reference,
                    stop: asyncio.Event) -> tuple[dict, float] | None:
        """Wait for the pull of ref, starting it unless one is in flight (pods pulling one
        image share it). None when stop is set first; the pull is cancelled (skopeo killed)
        once nobody waits for it any more."""
        name = ref.store_name
        pull = self._pulls.get(name)
        if pull is None:
            pull = self._pulls[name] = _Pull(
                asyncio.get_running_loop().create_task(self._pull(ref)))
            # a pull every waiter left must not log an unread exception
            pull.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        pull.waiters += 1
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([pull.task, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            pull.waiters -= 1
            if pull.waiters == 0 and not pull.task.done():
                pull.task.cancel()
                if self._pulls.get(name) is pull:
                    del self._pulls[name]
        if not pull.task.done():
            return None
        if pull.task.cancelled():   # podnetd stops (close)
            raise asyncio.CancelledError()
        return pull.task.result()   # or its PullError

    async def _pull(self, ref: registry.Reference) -> tuple[dict, float]:
        started = time.monotonic()
        try:
            image = await registry.pull(ref, self.cfg, self.images)
            log.info("pulled image %s in %.2fs", ref.pull_ref, time.monotonic() - started)
            return image, time.monotonic() - started
        except OSError as e:   # the store's disk (full, read-only): one line, retried
            raise registry.PullError(f"{ref.pull_ref}: {e}") from None
        finally:
            pull = self._pulls.get(ref.store_name)
            if pull is not None and pull.task is asyncio.current_task():
                del self._pulls[ref.store_name]

    def _wait(self, c: Ctr, reason: str, message: str,
              event: tuple[str, str] | None = None) -> None:
        """The container waits for its image: reason and message, the event (if any) and the
        kubelet's `Error: REASON`."""
        pod, ctx = c.pod, self.ctx
        waiting = {"reason": reason, "message": message}
        if c.state.get("waiting") == waiting:   # still waiting the same way: told already
            return
        if event:
            ctx.event(pod, event[1], event[0], message, c.name)
        ctx.event(pod, "Warning", "Failed", f"Error: {reason}", c.name)
        c.state = {"waiting": waiting}
        ctx.persist(pod)

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await within(stop.wait(), seconds)


class _NeverPull(Exception):
    pass


class _Pull:
    """A pull in flight and how many containers wait for it."""

    def __init__(self, task: asyncio.Task):
        self.task = task
        self.waiters = 0
