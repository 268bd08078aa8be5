"""Events about cluster objects written to the API (core/v1 Event), as client-go's recorder:
named OBJECT.HEX, in the object's namespace ("default" for cluster-scoped objects, as
Kubernetes does), correlated (the same object, reason and message again: count and
lastTimestamp go up on the existing Event). Recording never blocks and never fails the caller:
it is a task; a lost event is logged at debug level."""
import asyncio
import contextlib
import logging
import secrets

from .. import timestamps
from ..apiserver import objects

log = logging.getLogger(__name__)

MAX_CORRELATED = 4096


class ApiEventRecorder:
    def __init__(self, client, component: str, host: str = ""):
        self.client = client
        self.source = {"component": component, **({"host": host} if host else {})}
        self._names: dict[tuple, str] = {}
        self._tasks: set[asyncio.Task] = set()

    def __call__(self, obj: dict, type_: str, reason: str, message: str) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._record(obj, type_, reason,
                                                                       message))
        except RuntimeError:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
