"""podnetctl describe KIND NAME...: kubectl's sections. Pods and nodes have their own layouts
(describe_pod, describe_node); any other kind shows its metadata, spec and status and events."""
import sys
import time

import yaml

from . import printers
from .apiclient import ApiError
from .resources import Kind, split_args
from .session import Session, meta

W = 20        # the width of the top-level field names, as kubectl's tabwriter lines them up


def when(text) -> str:
    """kubectl's describe timestamps: Mon, 02 Jan 2006 15:04:05 -0700."""
    t = printers.parse_time(text)
    return "<unset>" if t is None else time.strftime("%a, %d %b %Y %H:%M:%S %z", time.localtime(t))


def field(name: str, value, indent: int = 0, width: int = W) -> str:
    label = f"{' ' * indent}{name}:"
    return f"{label:<{width}}{'' if value is None else value}".rstrip()


def mapping(name: str, values: dict | None, width: int = W) -> list[str]:
    """Labels:  a=b / (aligned) c=d, or <none>, one per line as kubectl prints them."""
    items = [f"{k}={v}" if name != "Annotations" else f"{k}: {v}"
             for k, v in sorted((values or {}).items())]
    if not items:
        return [field(name, "<none>", width=width)]
    return [field(name, items[0], width=width)] + [" " * width + i for i in items[1:]]


def columns(rows: list[list[str]], indent: int = 2) -> list[str]:
    """A table with a dashed line under its header, as describe's sub-tables are."""
    header = rows[0]
    rows = [header, ["-" * len(h) for h in header]] + rows[1:]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    return [(" " * indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths))).rstrip()
            for r in rows]


def events_of(s: Session, obj: dict, kind: Kind) -> list[str]:
    """The Events section: the events whose involvedObject is this object, oldest first."""
    ns = meta(obj, "namespace") if kind.namespaced else ""
    try:
        events = s.client.list("events", ns).get("items") or []
    except ApiError:
        return [field("Events", "<unknown>")]
    uid, name = meta(obj, "uid"), meta(obj, "name")
    mine = []
    for e in events:
        ref = e.get("involvedObject") or {}
        # a node's events carry the node's name as uid, as the kubelet's do
        if ref.get("kind") == kind.kind and ref.get("name") == name and \
                ref.get("uid") in (None, "", uid, name):
            mine.append(e)
    if not mine:
        return [field("Events", "<none>")]
    now = time.time()
    mine.sort(key=lambda e: printers.parse_time(e.get("lastTimestamp")
                                                or e.get("eventTime")) or 0)
    rows = [["Type", "Reason", "Age", "From", "Message"]]
    for e in mine:
        count = e.get("count") or 1
        age = printers.last_seen(e, now)
        if count > 1:
            age = f"{age} (x{count} over {printers.age(e.get('firstTimestamp'), now)})"
        source = (e.get("source") or {}).get("component") or e.get("reportingComponent") or ""
        rows.append([e.get("type", ""), e.get("reason", ""), age, source,
                     printers.event_message(e)])
    return ["Events:"] + columns(rows)


def describe_generic(s: Session, kind: Kind, obj: dict) -> list[str]:
    out = [field("Name", meta(obj, "name"))]
    if kind.namespaced:
        out.append(field("Namespace", meta(obj, "namespace")))
    out += mapping("Labels", meta(obj, "labels", None))
    out += mapping("Annotations", meta(obj, "annotations", None))
    out.append(field("API Version", obj.get("apiVersion", "")))
    out.append(field("Kind", obj.get("kind", "")))
    out.append(field("CreationTimestamp", when(meta(obj, "creationTimestamp"))))
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "metadata"):
            continue
        out.append(f"{key[:1].upper()}{key[1:]}:")
        body = yaml.safe_dump(value, sort_keys=False, default_flow_style=False).rstrip("\n")
        out += ["  " + line for line in body.splitlines()]
    return out + events_of(s, obj, kind)


def cmd_describe(args) -> int:
    from .describe_node import describe_node
    from .describe_pod import describe_pod
    layouts = {"Pod": describe_pod, "Node": describe_node}
    s = Session(args)
    failed, first = 0, True
    for kind, names in split_args(s.kinds, args.resources):
        ns = s.namespace(kind, args.all_namespaces)
        if names:
            objects = []
            for name in names:
                try:
                    objects.append(s.client.get(kind.resource, ns, name))
                except ApiError as e:
                    if e.reason != "NotFound":
                        raise
                    sys.stderr.write(f"{e}\n")
                    failed += 1
        else:
            objects = s.client.list(kind.resource, ns, args.selector or "").get("items") or []
        for obj in objects:
            if not first:
                print("\n")
            first = False
            print("\n".join(layouts.get(kind.kind, describe_generic)(s, kind, obj)))
    return 1 if failed else 0


def register(sub, common) -> None:
    p = sub.add_parser("describe", parents=[common], help="an object in detail, with its events")
    p.add_argument("resources", nargs="+", metavar="KIND [NAME...]")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-l", "--selector")
    p.set_defaults(func=cmd_describe, positional_rest="resources")
