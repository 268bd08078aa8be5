"""Events about cluster objects written to the API (core/v1 Event), as client-go's recorder:
named OBJECT.HEX, in the object's namespace ("default" for cluster-scoped objects, as
Kubernetes does), correlated (the same object, reason and message again: count and
lastTimestamp go up on the existing Event). Recording never blocks and never fails the caller:
events go into a bounded queue that one worker writes, one at a time, as client-go's
broadcaster does, so a burst of pods (five events each) does not compete with the writes that
matter (bindings, status) for the store; when the queue is full an event is dropped (debug
log)."""
import asyncio
import contextlib
import logging
import secrets

from .. import timestamps
from ..apiserver import objects

log = logging.getLogger(__name__)

MAX_CORRELATED = 4096
QUEUE = 1024


class ApiEventRecorder:
    def __init__(self, client, component: str, host: str = ""):
        self.client = client
        self.source = {"component": component, **({"host": host} if host else {})}
        self._names: dict[tuple, str] = {}
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def __call__(self, obj: dict, type_: str, reason: str, message: str) -> None:
        if self._worker is None or self._worker.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._queue = asyncio.Queue(QUEUE)
            self._worker = loop.create_task(self._drain())
        try:
            self._queue.put_nowait((obj, type_, reason, message))
        except asyncio.QueueFull:
            log.debug("event dropped (queue full): %s %s", reason, message[:100])

    async def _drain(self) -> None:
        while True:
            obj, type_, reason, message = await self._queue.get()
            try:
                await self._record(obj, type_, reason, message)
            except Exception as e:  # noqa: BLE001 - an event is never worth a failure
                log.debug("event %s not recorded: %s", reason, e)

    async def _record(self, obj: dict, type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        key = (obj.get("kind"), namespace, meta.get("name"), meta.get("uid"), type_, reason,
               message)
        now = timestamps.rfc3339()
        with contextlib.suppress(objects.ApiError):
            name = self._names.get(key)
            if name is not None:
                try:
                    event = await self.client.get("events", namespace, name)
                    event["count"] = int(event.get("count") or 1) + 1
                    event["lastTimestamp"] = now
                    await self.client.update("events", namespace, event)
                    return
                except objects.NotFound:
                    pass
            name = f"{meta.get('name', 'unknown')}.{secrets.token_hex(8)}"
            await self.client.create("events", namespace, {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": {"kind": obj.get("kind", ""),
                                   "apiVersion": obj.get("apiVersion", "v1"),
                                   "name": meta.get("name", ""),
                                   "namespace": meta.get("namespace", ""),
                                   "uid": meta.get("uid", "")},
                "reason": reason, "message": message[:4096], "type": type_,
                "source": self.source, "count": 1, "firstTimestamp": now,
                "lastTimestamp": now, "reportingComponent": self.source["component"],
                "reportingInstance": self.source.get("host", "")})
            if len(self._names) > MAX_CORRELATED:
                self._names.clear()
            self._names[key] = name
