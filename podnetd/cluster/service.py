"""podnet.v1.ClusterService on the daemon's unix socket: the views behind `podnetctl nodes/routes`."""
import asyncio

from .. import apiconv
from ..api.podnet.v1 import cluster_pb2, cluster_pb2_grpc
from .backends import ROUTE_PROTO


class ClusterService(cluster_pb2_grpc.ClusterServiceServicer):
    def __init__(self, component, node_name: str):
        self.c = component  # cluster.component.ClusterComponent, None when cluster mode is off
        self.node_name = node_name

    async def ListNodes(self, request, context):
        c = self.c
        if c is None:
            return cluster_pb2.ListNodesResponse(self_name=self.node_name,
                                                 problem="cluster mode is off on this node")
        cfg = c.cfg
        nodes = [cluster_pb2.ClusterNode(
            name=n["name"], underlay_ip=n["underlay_ip"], pod_cidr=n["pod_cidr"],
            vtep_mac=n["vtep_mac"], heartbeat_age=apiconv.duration(round(n["age"], 3)),
            mode=apiconv.enum_value(cluster_pb2.PeerMode, n["mode"]),
            problem=n["problem"], peer_address=n["peer_address"]) for n in c.nodes()]
        return cluster_pb2.ListNodesResponse(
            nodes=nodes, self_name=self.node_name, cluster_cidr=cfg.cluster_cidr,
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


def register(server, ctx, component) -> list[str]:
    """Served in every mode: without cluster mode it says so."""
    cluster_pb2_grpc.add_ClusterServiceServicer_to_server(
        ClusterService(component, ctx.config.node_name), server)
    return [cluster_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name]
