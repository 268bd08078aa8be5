"""podnet.v1.PodService: the gRPC face of the pod runtime."""
import asyncio
import json
import time

import grpc

from .. import apiconv
from ..api.podnet.v1 import pods_pb2, pods_pb2_grpc
from . import logs
from .images import ImageError
from .runtime import PodError, Runtime

_CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
          "exists": grpc.StatusCode.ALREADY_EXISTS,
          "precondition": grpc.StatusCode.FAILED_PRECONDITION}


async def _guard(context, coro):
    try:
        return await coro
    except PodError as e:
        await context.abort(_CODES.get(e.status, grpc.StatusCode.INTERNAL), str(e))
    except ImageError as e:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))


def _image_pb(img: dict) -> pods_pb2.Image:
    return pods_pb2.Image(name=img["name"], id=img["id"], size=img.get("size", 0),
                          create_time=apiconv.timestamp(img.get("created", 0)),
                          layers=img.get("layers", 0))


class PodsService(pods_pb2_grpc.PodServiceServicer):
    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def _pod_json(self, pod) -> str:
        return json.dumps(pod.k8s(self.rt.node_name, self.rt.host_ip))

    async def RunPod(self, request, context):
        async def run():
            pod = await self.rt.run_pod(request.manifest)
            await self.rt.wait_started(pod)
            return pods_pb2.RunPodResponse(pod_json=self._pod_json(pod))
        return await _guard(context, run())

    async def ListPods(self, request, context):
        out = []
        for pod in sorted(self.rt.pods.values(), key=lambda p: p.key):
            ready, total = pod.ready_count()
            out.append(pods_pb2.PodSummary(
                name=pod.name, namespace=pod.namespace, phase=pod.phase(),
                ready=f"{ready}/{total}", restarts=pod.restarts(), ip=pod.ip,
                node=self.rt.node_name, create_time=apiconv.timestamp(pod.created),
                status=pod.display_status()))
        return pods_pb2.ListPodsResponse(pods=out)

    async def GetPod(self, request, context):
        async def get():
            return pods_pb2.GetPodResponse(pod_json=self._pod_json(
                self.rt.get(request.name, request.namespace)))
        return await _guard(context, get())

    async def DescribePod(self, request, context):
        async def describe():
            pod = self.rt.get(request.name, request.namespace)
            return pods_pb2.DescribePodResponse(pod_json=self._pod_json(pod),
                                                events_json=json.dumps(pod.events))
        return await _guard(context, describe())

    def _container(self, pod, name: str):
        if not name:
            apps = pod.apps()
            if len(apps) != 1:
                raise PodError(f"pod {pod.name} has {len(pod.containers)} containers: choose "
                               f"one with -c ({', '.join(pod.containers)})")
            return apps[0]
        c = pod.containers.get(name)
        if c is None:
            raise PodError(f"container {name!r} is not in pod {pod.name} "
                           f"({', '.join(pod.containers)})", "not_found")
        return c

    async def PodLogs(self, request, context):
        try:
            pod = self.rt.get(request.name, request.namespace)
            c = self._container(pod, request.container)
            if request.HasField("tail_lines") and request.tail_lines < -1:
                raise PodError(f"tail_lines {request.tail_lines}: give -1 (all) or more")
        except PodError as e:
            await context.abort(_CODES.get(e.status, grpc.StatusCode.INTERNAL), str(e))
        attempt = c.attempt["n"] if c.attempt else \
            (c.restart_count if logs.rotated(self.rt.log_path(c, c.restart_count))
             else c.restart_count - 1)
        if request.previous:
            attempt = (c.restart_count - 1) if c.attempt or c.restart_count else -1
            if attempt < 0 or not logs.rotated(self.rt.log_path(c, attempt)):
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"previous terminated container {c.name!r} in pod "
                                    f"{pod.name!r} not found")
        path = self.rt.log_path(c, max(attempt, 0))
        tail = request.tail_lines if request.HasField("tail_lines") and \
            request.tail_lines >= 0 else None
        follow = request.follow and not request.previous

        def running() -> bool:
            return c.attempt is not None and c.attempt.get("log") == path
        out: list[bytes] = []
        size = 0
        async for records in logs.read(path, follow=follow, running=running, tail=tail):
            for line in logs.records(records):
                text = logs.parse_line(line, request.timestamps)
                out.append(text)
                size += len(text)
                if size >= logs.CHUNK:
                    yield pods_pb2.PodLogsResponse(data=b"".join(out))
                    out, size = [], 0
            if out and follow:  # a follower wants what came, not a full message
                yield pods_pb2.PodLogsResponse(data=b"".join(out))
                out, size = [], 0
        if out:
            yield pods_pb2.PodLogsResponse(data=b"".join(out))

    async def ExecInPod(self, request, context):
        async def run():
            pod = self.rt.get(request.name, request.namespace)
            c = self._container(pod, request.container)
            if c.attempt is None or not c.running():
                raise PodError(f"container {c.name} is not running", "precondition")
            if not request.command:
                raise PodError("a command is required")
            from . import oci
            try:
                rc, out, err = await oci.exec_(self.rt.oci, c.cid, list(request.command),
                                               stdin=request.stdin,
                                               timeout=apiconv.seconds(request.timeout) or None)
            except asyncio.TimeoutError:
                raise PodError(f"exec timed out after {apiconv.seconds(request.timeout):g}s",
                               "precondition") from None
            return pods_pb2.ExecInPodResponse(exit_code=rc, stdout=out, stderr=err)
        return await _guard(context, run())

    async def StopPod(self, request, context):
        async def stop():
            pod = self.rt.get(request.name, request.namespace)
            await self.rt.stop_pod(pod)
            return pods_pb2.StopPodResponse(pod_json=self._pod_json(pod))
        return await _guard(context, stop())

    async def StopAllPods(self, request, context):
        async def stop_all():
            cap = None
            if request.HasField("max_grace_period"):
                cap = apiconv.seconds(request.max_grace_period)
                if not cap >= 0:
                    raise PodError("max_grace_period: must be 0 or more")
            stopped = await self.rt.stop_all(cap)
            return pods_pb2.StopAllPodsResponse(stopped=stopped)
        return await _guard(context, stop_all())

    async def RemovePod(self, request, context):
        async def rm():
            pod = self.rt.get(request.name, request.namespace)
            await self.rt.remove_pod(pod)
            return pods_pb2.RemovePodResponse(removed=True)
        return await _guard(context, rm())

    async def ImportImage(self, request, context):
        async def imp():
            if not request.name or not request.archive:
                raise PodError("name and archive are required")
            metrics, started = self.rt.metrics, time.monotonic()
            try:
                img = await asyncio.to_thread(self.rt.images.import_archive, request.name,
                                              request.archive)
            except BaseException:
                metrics.image_imports.labels("failure").inc()
                raise
            metrics.image_imports.labels("success").inc()
            metrics.image_import_duration.observe(time.monotonic() - started)
            return pods_pb2.ImportImageResponse(image=_image_pb(img))
        return await _guard(context, imp())

    async def ListImages(self, request, context):
        images = await asyncio.to_thread(self.rt.images.list)
        return pods_pb2.ListImagesResponse(images=[_image_pb(i) for i in images])

    async def RemoveImage(self, request, context):
        async def rm():
            in_use = {i.removeprefix("sha256:") for i in self.rt.images_in_use()}
            removed = await asyncio.to_thread(self.rt.images.remove, request.name, in_use)
            if not removed:
                raise PodError(f"image {request.name!r} not found", "not_found")
            return pods_pb2.RemoveImageResponse(removed=True)
        return await _guard(context, rm())
