"""podnetctl logs POD [-c C] [-f] [--tail N] and exec POD [-c C] -- CMD for cluster pods; the
API node that answers forwards to the pod's node (podnet.api.v1.PodIOService)."""
import sys

import grpc

from ..api.podnet.api.v1 import api_pb2
from .apiclient import KubectlError, rpc_error
from .pods import tail_lines
from .session import Session


def _pod_name(arg: str) -> str:
    kind, slash, name = arg.partition("/")
    if not slash:
        return arg
    if kind.lower() not in ("pod", "pods", "po"):
        raise KubectlError(f"{arg}: logs and exec take a pod (pod/NAME or NAME)")
    return name


def cmd_logs(args) -> int:
    s = Session(args)
    request = api_pb2.StreamPodLogsRequest(
        namespace=s.target.namespace, name=_pod_name(args.pod), container=args.container or "",
        follow=args.follow, tail_lines=args.tail, previous=args.previous)
    try:
        for chunk in s.client.stream("PodIOService", "StreamPodLogs", request):
            sys.stdout.buffer.write(chunk.data)
            sys.stdout.buffer.flush()
    except grpc.RpcError as e:
        raise rpc_error(e, s.client.server) from None
    return 0


def cmd_exec(args) -> int:
    if not args.cmd:
        raise KubectlError("you must specify at least one command for the container")
    s = Session(args)
    stdin = sys.stdin.buffer.read() if args.stdin and not sys.stdin.isatty() else b""
    answer = s.client.call("PodIOService", "ExecPod", api_pb2.ExecPodRequest(
        namespace=s.target.namespace, name=_pod_name(args.pod), container=args.container or "",
        command=list(args.cmd), stdin=stdin), timeout=None)
    sys.stdout.buffer.write(answer.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(answer.stderr)
    sys.stderr.buffer.flush()
    if answer.exit_code:
        # kubectl says so on stderr and exits with the command's status
        sys.stderr.write(f"command terminated with exit code {answer.exit_code}\n")
    return answer.exit_code


def register(sub, common) -> None:
    p = sub.add_parser("logs", parents=[common], help="a cluster pod's container log")
    p.add_argument("pod", metavar="POD")
    p.add_argument("-c", "--container")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-p", "--previous", action="store_true")
    p.add_argument("--tail", type=tail_lines, default=-1, metavar="N",
                   help="only the last N lines (-1: all)")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("exec", parents=[common], help="run a command in a cluster pod")
    p.add_argument("pod", metavar="POD")
    p.add_argument("-c", "--container")
    p.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    p.add_argument("cmd", nargs="*", help="-- COMMAND [ARGS...]")
    p.set_defaults(func=cmd_exec)
