"""gRPC services of podnet.v1 on the daemon's unix socket (grpc.aio)."""
import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import events_service
from .api.podnet.v1 import node_pb2, node_pb2_grpc
from .endpoints import AttachError, CheckFailed, UnknownContainer
from .ipam import IpamError, PoolExhausted, Record
from .kernel.errors import KernelError

log = logging.getLogger(__name__)


def endpoint_pb(record: Record, gateway: str) -> node_pb2.Endpoint:
    return node_pb2.Endpoint(
        container_id=record.container_id, ifname=record.ifname, netns=record.netns,
        address=record.address, gateway=gateway, host_ifname=record.host_ifname, mac=record.mac,
        mtu=record.mtu, network=record.network, created_unix=int(record.created),
        state=record.state)


async def _off_loop(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _abort_on_error(context, coro):
    try:
        return await coro
    except UnknownContainer as e:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
    except CheckFailed as e:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
    except PoolExhausted as e:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
    except (AttachError, IpamError, KernelError) as e:
        await context.abort(grpc.StatusCode.INTERNAL, str(e))


class NodeService(node_pb2_grpc.NodeServicer):
    def __init__(self, daemon):
        self.d = daemon

    def _gw(self) -> str:
        return self.d.endpoints.node.gateway

    async def Attach(self, request, context):
        if not (request.container_id and request.ifname and request.netns):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "container_id, ifname and netns are required")
        record = await _abort_on_error(context, _off_loop(
            self.d.endpoints.attach, request.container_id, request.ifname, request.netns, request.network))
        return node_pb2.AttachResponse(endpoint=endpoint_pb(record, self._gw()))

    async def Detach(self, request, context):
        if not (request.container_id and request.ifname):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "container_id and ifname are required")
        record = await _abort_on_error(context, _off_loop(
            self.d.endpoints.detach, request.container_id, request.ifname, request.netns))
        return node_pb2.DetachResponse(released=record is not None)

    async def Check(self, request, context):
        record = await _abort_on_error(context, _off_loop(
            self.d.endpoints.check, request.container_id, request.ifname, request.netns))
        return node_pb2.CheckResponse(endpoint=endpoint_pb(record, self._gw()))

    async def ListEndpoints(self, request, context):
        records = await _off_loop(self.d.ipam.records)
        return node_pb2.ListEndpointsResponse(endpoints=[endpoint_pb(r, self._gw()) for r in records])

    async def GarbageCollect(self, request, context):
        valid = {(a.container_id, a.ifname) for a in request.valid_attachments}
        released = await _abort_on_error(context, _off_loop(
            self.d.endpoints.gc, valid, request.network or None))
        return node_pb2.GarbageCollectResponse(released=[endpoint_pb(r, self._gw()) for r in released])

    async def Status(self, request, context):
        ready, message = await _off_loop(self.d.status)
        return node_pb2.StatusResponse(ready=ready, message=message,
                                       free_addresses=await _off_loop(self.d.ipam.free_count))

    async def GetNodeInfo(self, request, context):
        return await _off_loop(self.d.node_info)


class CniService(node_pb2_grpc.CniServicer):
    def __init__(self, daemon):
        self.d = daemon

    async def Invoke(self, request, context):
        exit_code, stdout = await _off_loop(
            self.d.cni.handle, request.command, request.container_id, request.netns,
            request.ifname, request.config)
        return node_pb2.CniResponse(exit_code=exit_code, stdout=stdout)


# Other features (routing, pod runtime) append a function(server, daemon) -> [service names].
SERVICE_REGISTRARS: list = []


def build(daemon, address: str, interceptors: list | None = None) -> tuple:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], interceptors=interceptors or [])
    node_pb2_grpc.add_NodeServicer_to_server(NodeService(daemon), server)
    node_pb2_grpc.add_CniServicer_to_server(CniService(daemon), server)
    names = [node_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("Node", "Cni")]
    names += events_service.register(server, daemon.events)
    for register in SERVICE_REGISTRARS:
        names += register(server, daemon)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server)
    server.add_insecure_port(address)
    return server, health_servicer, names
