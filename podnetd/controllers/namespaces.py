"""The namespace controller: a namespace being deleted (deletionTimestamp, held by the
kubernetes.io/namespace-content finalizer) has every object in it deleted; once none is left
the finalizer goes and the namespace with it."""
import asyncio
import contextlib
import logging

from ..apiserver import kinds, objects
from .informer import Informer

log = logging.getLogger(__name__)

FINALIZER = "kubernetes.io/namespace-content"


class NamespaceController:
    def __init__(self, client):
        self.client = client
        self.namespaces = Informer(client, "namespaces", on_change=self._changed)
        self._wake = asyncio.Event()

    def _changed(self, key, old, new) -> None:
        if new is not None and new["metadata"].get("deletionTimestamp"):
            self._wake.set()

    async def run(self) -> None:
        await self.namespaces.start()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):   # not wait_for: 3.11's may eat a cancel
                        await self._wake.wait()
                self._wake.clear()
                for name, ns in list(self.namespaces.cache.items()):
                    if ns["metadata"].get("deletionTimestamp"):
                        try:
                            await self._finish(name)
                        except objects.ApiError as e:
                            log.debug("namespace %s: %s", name, e.message)
        finally:
            await self.namespaces.stop()

    async def _finish(self, name: str) -> None:
        left = 0
        for kind in kinds.KINDS:
            if not kind.namespaced:
                continue
            listing = await self.client.list(kind.resource, name)
            for obj in listing["items"]:
                left += 1
                if not obj["metadata"].get("deletionTimestamp"):
                    with contextlib.suppress(objects.NotFound):
                        await self.client.delete(kind.resource, name, obj["metadata"]["name"])
        if left:
            self._wake.set()
            await asyncio.sleep(1.0)
            return
        ns = await self.client.get("namespaces", "", name)
        ns["metadata"]["finalizers"] = [f for f in ns["metadata"].get("finalizers") or []
                                        if f != FINALIZER]
        await self.client.update("namespaces", "", ns)
        log.info("namespace %s: emptied and deleted", name)
