"""podnetctl auth can-i VERB RESOURCE [NAME] and auth whoami (podnet.api.v1.AccessService)."""
import sys

from ..api.podnet.api.v1 import api_pb2
from .apiclient import KubectlError
from .printers import format_rows
from .session import Session, dump

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "*")


def resource_of(s: Session, text: str, subresource: str) -> str:
    """The resource to check, as RBAC names it: pods, pods/log (po -> pods)."""
    head, _, rest = text.partition("/")
    try:
        resource = s.kinds.lookup(head).resource if head != "*" else head
    except KubectlError:
        sys.stderr.write(f"Warning: the server doesn't have a resource type '{head}'\n")
        resource = head
    sub = subresource or rest
    return f"{resource}/{sub}" if sub else resource


def cmd_can_i(args) -> int:
    s = Session(args)
    if args.verb not in VERBS:
        sys.stderr.write(f"Warning: verb '{args.verb}' is not a known verb\n")
    resource = resource_of(s, args.resource, args.subresource or "")
    answer = s.client.call("AccessService", "CheckAccess", api_pb2.CheckAccessRequest(
        verb=args.verb, resource=resource, name=args.name,
        namespace="" if args.all_namespaces else s.target.namespace))
    if not args.quiet:
        print("yes" if answer.allowed
              else "no" + (f" - {answer.reason}" if answer.reason else ""))
    return 0 if answer.allowed else 1


def cmd_whoami(args) -> int:
    s = Session(args)
    who = s.client.call("AccessService", "WhoAmI", api_pb2.WhoAmIRequest())
    if args.output in ("json", "yaml"):
        user = {"username": who.username, "groups": list(who.groups)}
        if who.uid:
            user["uid"] = who.uid
        dump({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
              "metadata": {"creationTimestamp": None}, "status": {"userInfo": user}}, args.output)
        return 0
    rows = [["Username", who.username]]
    if who.uid:
        rows.append(["UID", who.uid])
    rows.append(["Groups", f"[{' '.join(who.groups)}]"])
    sys.stdout.write(format_rows(["ATTRIBUTE", "VALUE"], rows))
    return 0


def register(sub, common) -> None:
    auth = sub.add_parser("auth", help="who you are and what you may do (kubectl auth)")
    asub = auth.add_subparsers(dest="auth_command", required=True, metavar="COMMAND")
    p = asub.add_parser("can-i", parents=[common], help="may I VERB RESOURCE? (yes/no, exit 0/1)")
    p.add_argument("verb")
    p.add_argument("resource", metavar="RESOURCE", help="pods, pods/log, nodes, pod/NAME, ...")
    p.add_argument("name", nargs="?", default="")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--subresource", default="")
    p.add_argument("-q", "--quiet", action="store_true", help="no output, only the exit status")
    p.set_defaults(func=cmd_can_i)
    p = asub.add_parser("whoami", parents=[common], help="the user the server sees")
    p.add_argument("-o", "--output", default="", choices=["", "json", "yaml"])
    p.set_defaults(func=cmd_whoami)
