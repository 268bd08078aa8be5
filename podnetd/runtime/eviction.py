"""kubelet's local storage eviction for emptyDir sizeLimit on disk (a Memory emptyDir is a
tmpfs of that size): a running pod whose emptyDir holds more than its sizeLimit is evicted,
without grace. The volume is what its containers wrote: it is measured in a worker thread,
without following links, and only up to the limit."""
import asyncio
import logging

from . import host, manifest
from .context import Context

log = logging.getLogger(__name__)
EVICTION_PERIOD = 10.0     # seconds between checks of emptyDir sizeLimits (kubelet: 10 s)


async def watch_local_storage(ctx: Context, pods: dict, evict) -> None:
    """Forever: evict(pod) (a coroutine function) each pod over an emptyDir sizeLimit."""
    while True:
        await asyncio.sleep(EVICTION_PERIOD)
        for pod in list(pods.values()):
            if pod.stop_requested or not pod.sandbox:
                continue
            for vol in pod.spec.get("volumes") or []:
                ed = vol.get("emptyDir")
                if ed is None or ed.get("medium") == "Memory" or not ed.get("sizeLimit"):
                    continue
                limit = int(manifest.quantity(ed["sizeLimit"], ""))
                try:
                    used = await asyncio.to_thread(
                        host.disk_usage, ctx.layout.pod_dir(pod, "volumes", vol["name"]), limit)
                except OSError:
                    continue
                if used > limit and not pod.stop_requested:
                    message = (f"Usage of EmptyDir volume \"{vol['name']}\" exceeds the "
                               f"limit \"{ed['sizeLimit']}\". ")
                    log.warning("pod %s: evicted: %s", pod.key, message)
                    ctx.event(pod, "Warning", "Evicted", message)
                    pod.reason = "Evicted"
                    evict(pod)
                    break
