"""podnetctl nodes | routes: the cluster as this node's podnetd sees it (podnet.v1.ClusterService)."""
from ..api.podnet.v1 import cluster_pb2, cluster_pb2_grpc
from ..apiconv import message_dict, seconds
from . import output
from .client import CtlError, call, channel


def _stub(args):
    return cluster_pb2_grpc.ClusterServiceStub(channel(args.socket))


def _call(method, request):
    try:
        return call(method, request)
    except CtlError as e:
        if str(e).startswith("unimplemented"):
            raise CtlError("this podnetd serves no cluster view (podnet.v1.ClusterService)") from None
        raise


_dict = message_dict


def _age(node) -> str:
    return "-" if node.mode == cluster_pb2.PEER_MODE_SELF else f"{seconds(node.heartbeat_age):.1f}s"


# kubectl's words for a node's status (a daemon that does not say: Unknown)
_STATUS = {cluster_pb2.NODE_STATUS_READY: "Ready", cluster_pb2.NODE_STATUS_NOT_READY: "NotReady"}


def cmd_nodes(args) -> int:
    resp = _call(_stub(args).ListNodes, cluster_pb2.ListNodesRequest())
    rows = [_dict(n) for n in resp.nodes]
    for row, n in zip(rows, resp.nodes):
        row["heartbeat"] = _age(n)
        row["vtep"] = n.vtep_mac or "-"
        row["status_shown"] = _STATUS.get(n.status, "Unknown")
    output.emit(rows, [("NAME", "name"), ("STATUS", "status_shown"), ("UNDERLAY", "underlay_ip"), ("POD-CIDR", "pod_cidr"),
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
