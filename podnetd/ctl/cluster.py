"""podnetctl nodes | routes: the cluster as this node's podnetd sees it (podnet.v1.Cluster)."""
from google.protobuf import json_format

from ..api.podnet.v1 import cluster_pb2, cluster_pb2_grpc
from . import output
from .client import CtlError, call, channel


def _stub(args):
    return cluster_pb2_grpc.ClusterStub(channel(args.socket))


def _call(method, request):
    try:
        return call(method, request)
    except CtlError as e:
        if str(e).startswith("unimplemented"):
            raise CtlError("this podnetd serves no cluster view (podnet.v1.Cluster)") from None
        raise


def _dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _age(seconds: float, mode: str) -> str:
    return "-" if mode == "self" else f"{seconds:.1f}s"


def cmd_nodes(args) -> int:
    resp = _call(_stub(args).ListNodes, cluster_pb2.ListNodesRequest())
    rows = [_dict(n) for n in resp.nodes]
    for row, n in zip(rows, resp.nodes):
        row["heartbeat"] = _age(n.heartbeat_age_seconds, n.mode)
        row["vtep"] = n.vtep_mac or "-"
    output.emit(rows, [("NAME", "name"), ("UNDERLAY", "underlay_ip"), ("POD-CIDR", "pod_cidr"),
                       ("MODE", "mode"), ("VTEP-MAC", "vtep"), ("HEARTBEAT", "heartbeat"),
                       ("PROBLEM", "problem")], args.output, raw=_dict(resp))
    if args.output == "table" and resp.problem:
        print(f"problem: {resp.problem}")
    return 0


def cmd_routes(args) -> int:
    resp = _call(_stub(args).ListRoutes, cluster_pb2.ListRoutesRequest())
    rows = [_dict(e) for e in resp.entries]
    output.emit(rows, [("KIND", "kind"), ("NODE", "node"), ("MODE", "mode"),
                       ("DESTINATION", "destination"), ("VIA", "via"), ("DEV", "dev"),
                       ("STATE", "state")], args.output, raw=_dict(resp))
    return 0


def register(sub, common) -> None:
    p = sub.add_parser("nodes", parents=[common], help="every node this podnetd knows")
    p.set_defaults(func=cmd_nodes)
    p = sub.add_parser("routes", parents=[common],
                       help="routes, neighbours and FDB entries podnetd programmed for its peers")
    p.set_defaults(func=cmd_routes)
