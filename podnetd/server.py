"""gRPC services of podnet.v1 on the daemon's unix socket (grpc.aio): NodeService here, the
others registered by their features (SERVICE_REGISTRARS)."""
import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import apiconv, cni, events_service, socket_dir
from .api.podnet.v1 import node_pb2, node_pb2_grpc
from .endpoints import AttachError, CheckFailed, InterfaceExists, InvalidNetns, UnknownContainer
from .ipam import IpamError, PoolExhausted, Record
from .kernel.errors import KernelError

log = logging.getLogger(__name__)

# Limits of the API socket. A message may be up to 16 MiB (a CNI config is refused past 4 MiB
# with the spec's error, which needs it to arrive first); larger ones are refused by gRPC with
# RESOURCE_EXHAUSTED before any handler runs. A connection has at most MAX_STREAMS calls open at
# once, and the daemon at most MAX_CONCURRENT_RPCS in flight (calls and open streams); beyond it
# a call is refused at once with RESOURCE_EXHAUSTED (the plugin's "try again later"), so memory
# held by pending requests stays bounded (~MAX_CONCURRENT_RPCS x MAX_MESSAGE_BYTES at worst).
MAX_MESSAGE_BYTES = 16 << 20
MAX_STREAMS = 16
MAX_CONCURRENT_RPCS = 64
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_concurrent_streams", MAX_STREAMS),
]


def endpoint_pb(record: Record, gateway: str) -> node_pb2.Endpoint:
    return node_pb2.Endpoint(
        container_id=record.container_id, ifname=record.ifname, netns=record.netns,
        address=record.address, gateway=gateway, host_ifname=record.host_ifname, mac=record.mac,
        mtu=record.mtu, network=record.network, create_time=apiconv.timestamp(record.created),
        state=apiconv.enum_value(node_pb2.EndpointState, record.state))


async def _off_loop(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _abort_on_error(context, coro):
    try:
        return await coro
    except UnknownContainer as e:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
    except (InvalidNetns, InterfaceExists) as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except CheckFailed as e:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
    except PoolExhausted as e:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
    except (AttachError, IpamError, KernelError) as e:
        await context.abort(grpc.StatusCode.INTERNAL, str(e))


async def _check_attachment(context, command: str, request) -> None:
    """The CNI checks of container id, netns and ifname for the Node API's calls too."""
    try:
        cni.validate_env(command, request.container_id, request.netns, request.ifname)
    except cni.CniError as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{e.msg}: {e.details}")


class NodeService(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, daemon):
        self.d = daemon

    def _gw(self) -> str:
        return self.d.endpoints.node.gateway

    async def Attach(self, request, context):
        if not (request.container_id and request.ifname and request.netns):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "container_id, ifname and netns are required")
        await _check_attachment(context, "ADD", request)
        record = await _abort_on_error(context, _off_loop(
            self.d.endpoints.attach, request.container_id, request.ifname, request.netns, request.network))
        return node_pb2.AttachResponse(endpoint=endpoint_pb(record, self._gw()))

    async def Detach(self, request, context):
        if not (request.container_id and request.ifname):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "container_id and ifname are required")
        await _check_attachment(context, "DEL", request)
        record = await _abort_on_error(context, _off_loop(
            self.d.endpoints.detach, request.container_id, request.ifname, request.netns))
        return node_pb2.DetachResponse(released=record is not None)

    async def Check(self, request, context):
        await _check_attachment(context, "CHECK", request)
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
        return node_pb2.GetNodeInfoResponse(node_info=await _off_loop(self.d.node_info))


def build(daemon, address: str, interceptors: list | None = None, more_services=None) -> tuple:
    """The server with NodeService, EventService and what more_services(server) adds (the
    features' services; it returns their full names), health and reflection."""
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors or [],
                             maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeService(daemon), server)
    names = [node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name]
    names += events_service.register(server, daemon.events)
    if more_services is not None:
        names += more_services(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server)
    with socket_dir.private_umask():  # grpc binds here, not in start(): the socket is born 0600
        server.add_insecure_port(address)
    return server, health_servicer, names
