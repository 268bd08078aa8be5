"""podnetctl get KIND [NAME...] [-n NS | -A] [-l SEL] [--field-selector SEL] [-o ...] [-w].

`get events` against the local podnetd with no client config (a node used on its own, or
--socket) shows the node's own event record (podnet.v1.EventService, with --for), as podnetctl
did before the cluster API; with a cluster (a config context or --server) it lists the
cluster's Event objects like any other kind.
"""
import copy
import sys

from . import events, printers
from .apiclient import ApiError, KubectlError
from .resources import Kind, split_args
from .session import Session, as_list, dump, meta, target
from .watch import Watcher

EVENT_NAMES = {"events", "event", "ev"}


def _local_events_socket(args) -> str | None:
    """The local podnetd's socket when `get events` means the node's own events."""
    if len(args.resources) != 1 or args.resources[0].lower() not in EVENT_NAMES:
        return None
    t = target(args)
    return t.servers[0][len("unix:"):] if t.local else None


def _node_events(args, socket: str) -> int:
    local = copy.copy(args)
    local.socket = socket
    local.output = args.output if args.output in ("json", "yaml") else "table"
    local.namespace = args.namespace or "default"
    return events.cmd_get_events(local)


def _for_selector(args, kind: Kind) -> str:
    """--for KIND/NAME as kubectl get events --for does: a field selector on involvedObject."""
    selector = args.field_selector or ""
    if not args.for_:
        return selector
    if kind.kind != "Event":
        raise KubectlError("--for is only supported for events")
    ref_kind, _, name = args.for_.partition("/")
    if not ref_kind or not name:
        raise KubectlError(f"--for must be in resource/name form: {args.for_!r}")
    try:
        ref = _session(args).kinds.lookup(ref_kind).kind
    except KubectlError:
        ref = ref_kind
    extra = f"involvedObject.kind={ref},involvedObject.name={name}"
    return f"{selector},{extra}" if selector else extra


def _session(args) -> Session:
    """One session per command (its kinds asked once)."""
    if getattr(args, "session", None) is None:
        args.session = Session(args)
    return args.session


def _fetch(s: Session, kind: Kind, names: list[str], args, field_selector: str):
    """(objects, list resourceVersion, errors)."""
    ns = s.namespace(kind, args.all_namespaces)
    if not names:
        listed = s.client.list(kind.resource, ns, args.selector or "", field_selector)
        return listed.get("items") or [], str(meta(listed, "resourceVersion")), []
    objects, errors = [], []
    for name in names:
        try:
            objects.append(s.client.get(kind.resource, ns, name))
        except ApiError as e:
            if e.reason != "NotFound":
                raise
            errors.append(str(e))
    return objects, "", errors


def _print(kind: Kind, objects: list[dict], args, prefix: bool, header: bool = True) -> None:
    if args.output == "name":
        for obj in objects:
            print(printers.name_of(kind.qualified, obj))
    else:
        sys.stdout.write(printers.table(
            kind.kind, objects, wide=args.output == "wide",
            namespace_column=args.all_namespaces and kind.namespaced,
            name_prefix=kind.qualified if prefix else "", header=header,
            show_labels=args.show_labels))


def _no_resources(s: Session, pairs, args) -> str:
    if args.all_namespaces or not any(k.namespaced for k, _ in pairs):
        return "No resources found"
    return f"No resources found in {s.target.namespace} namespace."


def cmd_get(args) -> int:
    socket = _local_events_socket(args)
    if socket:
        return _node_events(args, socket)
    s = _session(args)
    pairs = split_args(s.kinds, args.resources)
    if args.all_namespaces and any(names for _, names in pairs):
        raise KubectlError("a resource cannot be retrieved by name across all namespaces")
    if args.watch and (len(pairs) > 1 or len(pairs[0][1]) > 1):
        raise KubectlError("you may only specify a single resource type and at most one name "
                           "with --watch")
    results, errors = [], []
    for kind, names in pairs:
        objects, rv, errs = _fetch(s, kind, names, args, _for_selector(args, kind))
        results.append((kind, objects, rv))
        errors += errs
    shown = [r for r in results if r[1]]
    if args.watch and args.output_watch_events:
        pass                                   # the watch shows them, as ADDED
    elif args.output in ("json", "yaml"):
        single = len(pairs) == 1 and len(pairs[0][1]) == 1
        if single and shown:
            dump(shown[0][1][0], args.output)
        elif not single:
            dump(as_list([o for _, objs, _ in results for o in objs],
                         results[0][2] if len(results) == 1 else ""), args.output)
    else:
        for i, (kind, objects, _) in enumerate(shown):
            if i:
                print()
            _print(kind, objects, args, prefix=len(pairs) > 1)
            if kind.kind == "Node" and any(printers.node_local_api(o) for o in objects):
                sys.stderr.write(printers.NODE_LOCAL_NOTE + "\n")
        if not shown and not errors and not args.watch:
            sys.stderr.write(_no_resources(s, pairs, args) + "\n")
    sys.stdout.flush()
    for line in errors:
        sys.stderr.write(line + "\n")
    if args.watch:
        kind, names = pairs[0]
        return _watch(s, kind, names, results[0], args, header=not shown)
    return 1 if errors else 0


def _watch(s: Session, kind: Kind, names: list[str], result, args, header: bool) -> int:
    _, objects, rv = result
    selector = _for_selector(args, kind)
    if names:
        named = f"metadata.name={names[0]}"
        selector = f"{selector},{named}" if selector else named
        rv = max((meta(o, "resourceVersion") for o in objects), default="", key=_rv_key)
    state = {"header": header}

    def emit(event_type: str, obj: dict) -> None:
        if args.output in ("json", "yaml"):
            dump({"type": event_type, "object": obj} if args.output_watch_events else obj,
                 args.output)
        elif args.output == "name":
            print(printers.name_of(kind.qualified, obj))
        else:
            text = printers.table(kind.kind, [obj], wide=args.output == "wide",
                                  namespace_column=args.all_namespaces and kind.namespaced,
                                  header=state["header"], show_labels=args.show_labels)
            if args.output_watch_events:
                lines = text.splitlines(keepends=True)
                lines = ([f"{'EVENT':<10}{lines[0]}"] if state["header"] else []) + \
                    [f"{event_type:<10}{lines[-1]}"]
                text = "".join(lines)
            state["header"] = False
            sys.stdout.write(text)
        sys.stdout.flush()

    if args.output_watch_events:
        state["header"] = True
        for obj in objects:
            emit("ADDED", obj)
    watcher = Watcher(s.client, kind.resource, s.namespace(kind, args.all_namespaces),
                      args.selector or "", selector, emit)
    watcher.seed(objects, rv)
    watcher.run()
    return 0


def _rv_key(rv) -> int:
    try:
        return int(rv)
    except (TypeError, ValueError):
        return -1


def register(sub, common) -> None:
    p = sub.add_parser("get", parents=[common], help="list or show objects (kubectl get)")
    p.add_argument("resources", nargs="+", metavar="KIND [NAME...]",
                   help="pods, nodes, namespaces, events, ... (podnetctl api-resources)")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-l", "--selector", help="label selector: a=b,c!=d,e in (f,g),!h")
    p.add_argument("--field-selector", help="e.g. spec.nodeName=n1,status.phase=Running")
    p.add_argument("-o", "--output", default="", choices=["", "wide", "json", "yaml", "name"])
    p.add_argument("--show-labels", action="store_true", help="a LABELS column")
    p.add_argument("-w", "--watch", action="store_true", help="after listing, watch for changes")
    p.add_argument("--output-watch-events", action="store_true",
                   help="with -w: show the event type (ADDED, MODIFIED, DELETED)")
    p.add_argument("--for", dest="for_", metavar="KIND/NAME",
                   help="events: only those of this object (pod/NAME, node/NAME)")
    p.set_defaults(func=cmd_get, positional_rest="resources")

