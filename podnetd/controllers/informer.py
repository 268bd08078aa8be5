"""An informer, as client-go's: a list, then a watch from the list's resourceVersion, a local
cache of the objects, and handlers called on every change. A cut watch resumes from the last
resourceVersion seen; "too old" lists again (handlers see the differences as changes)."""
import asyncio
import contextlib
import logging
from typing import Callable

from ..apiserver import objects

log = logging.getLogger(__name__)

RETRY_FIRST, RETRY_MAX = 0.5, 10.0


def key_of(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


class Informer:
    def __init__(self, client, resource: str, namespace: str = "", field_selector: str = "",
                 on_change: Callable[[str, dict | None, dict | None], None] | None = None):
        """on_change(key, old, new): new None = deleted, old None = added."""
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.field_selector = field_selector
        self.on_change = on_change or (lambda key, old, new: None)
        self.cache: dict[str, dict] = {}
        self.synced = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def _set(self, key: str, new: dict | None) -> None:
        old = self.cache.get(key)
        if new is None:
            if old is None:
                return
            del self.cache[key]
        else:
            self.cache[key] = new
        try:
            self.on_change(key, old, new)
        except Exception:  # noqa: BLE001 - a handler's bug must not end the informer
            log.exception("informer %s: handler failed for %s", self.resource, key)

    async def _run(self) -> None:
        delay = RETRY_FIRST
        rv = ""
        while True:
            try:
                if not rv:
                    listing = await self.client.list(self.resource, self.namespace, "",
                                                     self.field_selector)
                    fresh = {key_of(o): o for o in listing["items"]}
                    for key in [k for k in self.cache if k not in fresh]:
                        self._set(key, None)
                    for key, obj in fresh.items():
                        if self.cache.get(key) != obj:
                            self._set(key, obj)
                    rv = listing["metadata"]["resourceVersion"]
                    self.synced.set()
                async for kind, obj in self.client.watch(self.resource, self.namespace, "",
                                                         self.field_selector, rv):
                    rv = obj["metadata"].get("resourceVersion") or rv
                    delay = RETRY_FIRST
                    if kind == "BOOKMARK":
                        continue
                    self._set(key_of(obj), None if kind == "DELETED" else obj)
            except objects.Gone:
                rv = ""
                continue
            except objects.ApiError as e:
                log.debug("informer %s: %s (retrying in %.1f s)", self.resource, e.message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
