"""podnetctl api-resources: the kinds the server stores (ListKinds), as kubectl lists them."""
import sys

from .printers import format_rows
from .session import Session


def cmd_api_resources(args) -> int:
    s = Session(args)
    kinds = sorted(s.kinds.kinds, key=lambda k: (k.group, k.resource))
    if args.namespaced is not None:
        kinds = [k for k in kinds if k.namespaced == args.namespaced]
    if args.output == "name":
        for k in kinds:
            print(f"{k.resource}.{k.group}" if k.group else k.resource)
        return 0
    headers = ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    if args.output == "wide":
        headers.append("VERBS")
    rows = [[k.resource, ",".join(k.short_names), k.api_version, str(k.namespaced).lower(),
             k.kind] + ([f"[{' '.join(k.verbs)}]"] if args.output == "wide" else [])
            for k in kinds]
    sys.stdout.write(format_rows(headers, rows))
    return 0


def _bool(text: str) -> bool:
    return text.lower() in ("true", "1", "yes")


def register(sub, common) -> None:
    p = sub.add_parser("api-resources", parents=[common], help="the kinds the server serves")
    p.add_argument("-o", "--output", default="", choices=["", "wide", "name"])
    p.add_argument("--namespaced", type=_bool, default=None, metavar="true|false")
    p.set_defaults(func=cmd_api_resources)
