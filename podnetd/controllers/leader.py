"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection: the holder
renews spec.renewTime every retry period; a candidate takes the lease over once the record
has not changed for leaseDurationSeconds as measured by its own clock (never by comparing
another node's timestamps, so clock skew cannot elect two leaders). Every write is an update
with the resourceVersion read, so of two candidates acting at once the store lets one win.

With one node (the SQLite store) the same code elects that node at once."""
import asyncio
import contextlib
import logging
import time
from typing import Awaitable, Callable

from .. import timestamps
from ..apiserver import objects

log = logging.getLogger(__name__)

NAMESPACE = "kube-system"


class LeaderElector:
    def __init__(self, client, name: str, identity: str, *, lease_duration: float = 15.0,
                 renew_deadline: float = 10.0, retry_period: float = 2.0,
                 lead: Callable[[], Awaitable[None]]):
        """lead(): the work to do while leading (cancelled when leadership is lost)."""
        self.client = client
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.lead = lead
        self.leading = False
        self._observed: tuple | None = None       # (holder, renewTime, transitions)
        self._observed_at = 0.0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        was_leading = self.leading
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if was_leading:
            await self._release()

    async def _run(self) -> None:
        while True:
            while not await self._try():
                await asyncio.sleep(self.retry_period)
            log.info("%s: %s is the leader", self.name, self.identity)
            self.leading = True
            work = asyncio.get_running_loop().create_task(self.lead())
            try:
                await self._keep(work)
            finally:
                self.leading = False
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
            failure = work.exception() if work.done() and not work.cancelled() else None
            if failure is not None:
                # a bug in the work must not leave a leader that does nothing: said, and the
                # work started again (after a pause: not a hot loop on a lasting fault)
                log.error("%s: the leader's work failed; starting it again", self.name,
                          exc_info=failure)
                await asyncio.sleep(self.retry_period)
            elif work.done() and not work.cancelled():
                log.warning("%s: the leader's work ended; starting it again", self.name)
                await asyncio.sleep(self.retry_period)
            else:
                log.warning("%s: %s lost the lease", self.name, self.identity)

    async def _keep(self, work: asyncio.Task) -> None:
        """Renew every retry period; give up when no renewal succeeded for renew_deadline."""
        last_renewed = time.monotonic()
        while not work.done():
            await asyncio.sleep(self.retry_period)
            if await self._try():
                last_renewed = time.monotonic()
            elif time.monotonic() - last_renewed > self.renew_deadline:
                return

    async def _try(self) -> bool:
        """Acquire or renew; True when this identity holds the lease now."""
        now = timestamps.rfc3339_micro()
        try:
            lease = await self.client.get("leases", NAMESPACE, self.name)
        except objects.NotFound:
            try:
                await self.client.create("leases", NAMESPACE, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": NAMESPACE},
                    "spec": {"holderIdentity": self.identity,
                             "leaseDurationSeconds": int(self.lease_duration),
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}})
                return True
            except objects.ApiError:
                return False
        except objects.ApiError as e:
            log.debug("%s: %s", self.name, e.message)
            return False
        spec = lease.setdefault("spec", {})
        record = (spec.get("holderIdentity"), spec.get("renewTime"),
                  spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        holder = spec.get("holderIdentity")
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        if holder and holder != self.identity and \
                time.monotonic() - self._observed_at < duration:
            return False
        if holder != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update({"holderIdentity": self.identity, "renewTime": now,
                     "leaseDurationSeconds": int(self.lease_duration)})
        try:
            await self.client.update("leases", NAMESPACE, lease)   # with the rv read: CAS
        except objects.ApiError:
            return False
        return True

    async def _release(self) -> None:
        """Hand the lease back at a clean stop, so another node need not wait it out."""
        with contextlib.suppress(objects.ApiError):
            lease = await self.client.get("leases", NAMESPACE, self.name)
            if lease["spec"].get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                await self.client.update("leases", NAMESPACE, lease)
