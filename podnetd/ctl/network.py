"""podnetctl endpoints | node | status."""
from ..api.podnet.v1 import node_pb2, node_pb2_grpc
from ..apiconv import message_dict
from . import output
from .client import call, channel


def _node_stub(args):
    return node_pb2_grpc.NodeServiceStub(channel(args.socket))


def cmd_endpoints(args) -> int:
    resp = call(_node_stub(args).ListEndpoints, node_pb2.ListEndpointsRequest())
    rows = [message_dict(e, defaults=False) for e in resp.endpoints]
    for row in rows:
        row["container"] = row.get("container_id", "")[:12]
    output.emit(rows, [("CONTAINER", "container"), ("IFNAME", "ifname"), ("ADDRESS", "address"),
                       ("HOST-IF", "host_ifname"), ("NETWORK", "network"), ("NETNS", "netns")],
                args.output)
    return 0


def cmd_node(args) -> int:
    info = call(_node_stub(args).GetNodeInfo, node_pb2.GetNodeInfoRequest()).node_info
    row = message_dict(info)
    output.emit([row], [("NODE", "node_name"), ("POD-CIDR", "pod_cidr"), ("GATEWAY", "gateway"),
                        ("BRIDGE", "bridge"), ("MTU", "mtu"), ("POD-GSO", "pod_gso_max_size"),
                        ("ALLOCATED", "allocated"), ("CAPACITY", "capacity")], args.output, raw=row)
    return 0


def cmd_status(args) -> int:
    resp = call(_node_stub(args).Status, node_pb2.StatusRequest())
    row = {"ready": resp.ready, "message": resp.message, "free_addresses": resp.free_addresses}
    output.emit([row], [("READY", "ready"), ("FREE", "free_addresses"), ("MESSAGE", "message")],
                args.output, raw=row)
    return 0 if resp.ready else 1


def register(sub, common) -> None:
    p = sub.add_parser("endpoints", parents=[common], help="pod attachments on this node")
    p.set_defaults(func=cmd_endpoints)
    p = sub.add_parser("node", parents=[common], help="this node's network facts")
    p.set_defaults(func=cmd_node)
    p = sub.add_parser("status", parents=[common], help="is the daemon ready")
    p.set_defaults(func=cmd_status)
