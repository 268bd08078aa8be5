"""podnet.v1.ClusterService on the daemon's unix socket: the views behind `podnetctl nodes/routes`."""
import asyncio

from .. import apiconv
from ..api.podnet.v1 import cluster_pb2, cluster_pb2_grpc
from .backends import ROUTE_PROTO


_STATUS_WORDS = {"Ready": "ready", "NotReady": "not-ready"}


class ClusterService(cluster_pb2_grpc.ClusterServiceServicer):
    def __init__(self, daemon):
        self.d = daemon

    @property
    def c(self):
        return getattr(self.d, "cluster", None)

    async def ListNodes(self, request, context):
        c, cfg = self.c, self.d.cfg
        if c is None:
            return cluster_pb2.ListNodesResponse(self_name=cfg.node_name,
                                                 problem="cluster mode is off on this node")
        nodes = [cluster_pb2.ClusterNode(
            name=n["name"], underlay_ip=n["underlay_ip"], pod_cidr=n["pod_cidr"],
            vtep_mac=n["vtep_mac"], heartbeat_age=apiconv.duration(round(n["age"], 3)),
            mode=apiconv.enum_value(cluster_pb2.PeerMode, n["mode"]),
            problem=n["problem"], peer_address=n["peer_address"],
            status=apiconv.enum_value(cluster_pb2.NodeStatus, _STATUS_WORDS[n["status"]]))
            for n in c.nodes()]
        return cluster_pb2.ListNodesResponse(
            nodes=nodes, self_name=cfg.node_name, cluster_cidr=cfg.cluster_cidr or "",
            store=apiconv.enum_value(cluster_pb2.Store, cfg.store),
            backend=apiconv.enum_value(cluster_pb2.Backend, cfg.backend),
            problem=c.cluster_problem() or "")

    async def ListRoutes(self, request, context):
        if self.c is None:
            return cluster_pb2.ListRoutesResponse(route_protocol=ROUTE_PROTO)
        seen = await asyncio.get_running_loop().run_in_executor(None, self.c.routes)
        underlay = self.c.underlay.get("dev", "")  # host-gw routes leave by the underlay device
        return cluster_pb2.ListRoutesResponse(route_protocol=ROUTE_PROTO, entries=[
            cluster_pb2.ProgrammedEntry(kind=apiconv.enum_value(cluster_pb2.EntryKind, e.kind),
                                        node=e.node,
                                        mode=apiconv.enum_value(cluster_pb2.PeerMode, e.mode),
                                        destination=e.destination, via=e.via, dev=e.dev or underlay,
                                        state=apiconv.enum_value(cluster_pb2.EntryState, state))
            for e, state in seen])


def register(server, daemon) -> list[str]:
    cluster_pb2_grpc.add_ClusterServiceServicer_to_server(ClusterService(daemon), server)
    return [cluster_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name]
