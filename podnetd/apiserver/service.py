"""podnet.api.v1 over gRPC: ObjectService and AccessService (PodIOService: podio.py). The same
servicers serve the local unix socket (root = cluster admin) and the TLS listener; what tells
them apart is the `authenticate(context) -> user` they are built with."""
import logging
from typing import Awaitable, Callable

import grpc

from ..api.podnet.api.v1 import api_pb2, api_pb2_grpc
from . import kinds, objects
from .api import Api

log = logging.getLogger(__name__)

CODES = {
    objects.NotFound: "NOT_FOUND", objects.AlreadyExists: "ALREADY_EXISTS",
    objects.Conflict: "ABORTED", objects.Invalid: "INVALID_ARGUMENT",
    objects.BadRequest: "INVALID_ARGUMENT", objects.Gone: "OUT_OF_RANGE",
    objects.Forbidden: "PERMISSION_DENIED", objects.Unauthorized: "UNAUTHENTICATED",
    objects.TooLarge: "RESOURCE_EXHAUSTED", objects.Unavailable: "UNAVAILABLE",
}
EVENT_TYPES = {
    "ADDED": api_pb2.WATCH_EVENT_TYPE_ADDED, "MODIFIED": api_pb2.WATCH_EVENT_TYPE_MODIFIED,
    "DELETED": api_pb2.WATCH_EVENT_TYPE_DELETED, "BOOKMARK": api_pb2.WATCH_EVENT_TYPE_BOOKMARK,
}

Authenticate = Callable[[grpc.aio.ServicerContext], Awaitable[object]]


async def abort(context, e: objects.ApiError):
    await context.abort(getattr(grpc.StatusCode, CODES.get(type(e), "INTERNAL")), e.message)


def _decode(data: bytes) -> dict:
    return objects.decode(data)


class ObjectService(api_pb2_grpc.ObjectServiceServicer):
    def __init__(self, api: Api, authenticate: Authenticate):
        self.api, self.authenticate = api, authenticate

    async def _call(self, context, fn):
        try:
            user = await self.authenticate(context)
            return await fn(user)
        except objects.ApiError as e:
            await abort(context, e)

    async def CreateObject(self, request, context):
        async def run(user):
            obj = await self.api.create(user, request.resource, request.namespace,
                                        _decode(request.object), request.subresource,
                                        request.name)
            return api_pb2.CreateObjectResponse(object=objects.encode(obj))
        return await self._call(context, run)

    async def GetObject(self, request, context):
        async def run(user):
            obj = await self.api.get(user, request.resource, request.namespace, request.name)
            return api_pb2.GetObjectResponse(object=objects.encode(obj))
        return await self._call(context, run)

    async def ListObjects(self, request, context):
        async def run(user):
            result = await self.api.list(user, request.resource, request.namespace,
                                         request.label_selector, request.field_selector)
            return api_pb2.ListObjectsResponse(list=objects.encode(result))
        return await self._call(context, run)

    async def UpdateObject(self, request, context):
        async def run(user):
            obj = await self.api.update(user, request.resource, request.namespace,
                                        _decode(request.object), request.subresource)
            return api_pb2.UpdateObjectResponse(object=objects.encode(obj))
        return await self._call(context, run)

    async def DeleteObject(self, request, context):
        async def run(user):
            grace = request.grace_period.seconds if request.HasField("grace_period") else None
            obj = await self.api.delete(user, request.resource, request.namespace, request.name,
                                        grace, request.resource_version)
            return api_pb2.DeleteObjectResponse(object=objects.encode(obj))
        return await self._call(context, run)

    async def WatchObjects(self, request, context):
        try:
            user = await self.authenticate(context)
            stream = self.api.watch(user, request.resource, request.namespace,
                                    request.label_selector, request.field_selector,
                                    request.resource_version)
            async for kind, obj in stream:
                await context.write(api_pb2.WatchObjectsResponse(
                    type=EVENT_TYPES[kind], object=objects.encode(obj)))
        except objects.ApiError as e:
            await abort(context, e)

    async def ListKinds(self, request, context):
        await self._call(context, lambda user: _noop())
        return api_pb2.ListKindsResponse(kinds=[
            api_pb2.KindInfo(kind=k.kind, resource=k.resource, api_version=k.api_version,
                             namespaced=k.namespaced, short_names=list(k.short_names),
                             verbs=["create", "delete", "get", "list", "update", "watch"])
            for k in kinds.KINDS])


async def _noop():
    return None


class AccessService(api_pb2_grpc.AccessServiceServicer):
    def __init__(self, api: Api, authenticate: Authenticate):
        self.api, self.authenticate = api, authenticate

    async def WhoAmI(self, request, context):
        try:
            user = await self.authenticate(context)
        except objects.ApiError as e:
            await abort(context, e)
        return api_pb2.WhoAmIResponse(username=user.name, uid=user.uid or "",
                                      groups=list(user.groups))

    async def CheckAccess(self, request, context):
        try:
            user = await self.authenticate(context)
        except objects.ApiError as e:
            await abort(context, e)
        allowed, reason = self.api.can(user, request.verb, request.resource,
                                       request.namespace, request.name)
        return api_pb2.CheckAccessResponse(allowed=allowed, reason=reason)


def register(server, api: Api, authenticate: Authenticate, podio=None) -> list[str]:
    api_pb2_grpc.add_ObjectServiceServicer_to_server(ObjectService(api, authenticate), server)
    api_pb2_grpc.add_AccessServiceServicer_to_server(AccessService(api, authenticate), server)
    names = ["ObjectService", "AccessService"]
    if podio is not None:
        api_pb2_grpc.add_PodIOServiceServicer_to_server(podio, server)
        names.append("PodIOService")
    return [api_pb2.DESCRIPTOR.services_by_name[n].full_name for n in names]
