"""podnetctl delete KIND NAME... [--grace-period N] [--wait] and label KIND NAME k=v k2-."""
import re
import sys
import time

from .apiclient import ApiError, KubectlError
from .resources import Kind, split_args
from .session import Session, meta


def update_with_retry(s: Session, kind: Kind, ns: str, name: str, change) -> tuple[dict, bool]:
    """Get, change (a function returning whether it changed anything), update with the fetched
    resourceVersion; once more on Conflict. (object, changed)."""
    for attempt in range(2):
        obj = s.client.get(kind.resource, ns, name)
        if not change(obj):
            return obj, False
        try:
            return s.client.update(kind.resource, ns, obj), True
        except ApiError as e:
            if e.reason != "Conflict" or attempt:
                raise
    raise AssertionError("unreachable")


# ---- delete


def wait_gone(s: Session, kind: Kind, ns: str, name: str, uid: str, timeout: float) -> bool:
    """Until the object (this uid: not a new one of the same name) is gone."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    delay = 0.1
    while deadline is None or time.monotonic() < deadline:
        try:
            obj = s.client.get(kind.resource, ns, name)
        except ApiError as e:
            if e.reason == "NotFound":
                return True
            raise
        if uid and meta(obj, "uid") != uid:
            return True
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    return False


def cmd_delete(args) -> int:
    s = Session(args)
    if args.grace_period is not None and args.grace_period < -1:
        raise KubectlError("--grace-period must be -1 (the object's own) or more")
    grace = None if args.grace_period in (None, -1) else float(args.grace_period)
    if args.now:
        grace = 1.0
    if args.force and grace is None:
        grace = 0.0
    if args.force and grace == 0:
        sys.stderr.write("Warning: Immediate deletion does not wait for confirmation that the "
                         "running resource has been terminated. The resource may continue to "
                         "run on the cluster indefinitely.\n")
    failed = 0
    for kind, names in split_args(s.kinds, args.resources):
        if not names:
            raise KubectlError("resource(s) were provided, but no name was specified")
        ns = s.namespace(kind)
        for name in names:
            try:
                obj = s.client.delete(kind.resource, ns, name, grace_period=grace)
            except ApiError as e:
                if e.reason == "NotFound" and args.ignore_not_found:
                    continue
                if e.code.name in ("UNAVAILABLE", "UNAUTHENTICATED"):
                    raise
                sys.stderr.write(f"{e}\n")
                failed += 1
                continue
            if args.wait and not wait_gone(s, kind, ns, name, meta(obj, "uid"), args.timeout):
                sys.stderr.write(f'error: timed out waiting for the condition on '
                                 f'{kind.resource}/{name}\n')
                failed += 1
                continue
            print(f'{kind.qualified} "{name}" deleted')
    return 1 if failed else 0


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(text)


# ---- label

# a label key: an optional DNS-subdomain prefix and a name of at most 63 characters
LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def parse_labels(specs: list[str]) -> tuple[dict[str, str], list[str]]:
    """k=v to set, k- to remove, checked as kubectl checks them."""
    add, remove = {}, []
    for spec in specs:
        if spec.endswith("-") and "=" not in spec:
            key = spec[:-1]
            if not LABEL_KEY.fullmatch(key):
                raise KubectlError(f"invalid label spec: {spec}")
            remove.append(key)
            continue
        key, eq, value = spec.partition("=")
        if not eq or not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            raise KubectlError(f"invalid label spec: {spec}")
        add[key] = value
    both = set(add) & set(remove)
    if both:
        raise KubectlError(f"can not both modify and remove a label in the same command: "
                           f"{', '.join(sorted(both))}")
    return add, remove


def relabel(obj: dict, add: dict[str, str], remove: list[str], overwrite: bool) -> bool:
    labels = obj.setdefault("metadata", {}).get("labels") or {}
    for key, value in add.items():
        if key in labels and labels[key] != value and not overwrite:
            raise KubectlError(f"'{key}' already has a value ({labels[key]}), and --overwrite "
                               f"is false")
    before = dict(labels)
    for key in remove:
        if key not in labels:
            sys.stderr.write(f'label "{key}" not found.\n')
        labels.pop(key, None)
    labels.update(add)
    obj["metadata"]["labels"] = labels
    return labels != before


def cmd_label(args) -> int:
    s = Session(args)
    items = args.args
    specs_at = next((i for i, a in enumerate(items) if "=" in a or (a.endswith("-") and i)),
                    len(items))
    targets, specs = items[:specs_at], items[specs_at:]
    if not specs:
        raise KubectlError("at least one label update is required")
    add, remove = parse_labels(specs)
    for kind, names in split_args(s.kinds, targets):
        if not names:
            raise KubectlError("resource(s) were provided, but no name was specified")
        ns = s.namespace(kind)
        for name in names:
            obj, changed = update_with_retry(
                s, kind, ns, name, lambda o: relabel(o, add, remove, args.overwrite))
            verdict = ("not labeled" if not changed
                       else "unlabeled" if remove and not add else "labeled")
            print(f"{kind.qualified}/{name} {verdict}")
    return 0


def register(sub, common) -> None:
    p = sub.add_parser("delete", parents=[common], help="delete objects (kubectl delete)")
    p.add_argument("resources", nargs="+", metavar="KIND NAME...")
    p.add_argument("--grace-period", type=int, default=None, metavar="SECONDS",
                   help="seconds the pod gets to stop (-1: its own; 0 with --force: at once)")
    p.add_argument("--now", action="store_true", help="a grace period of 1 s")
    p.add_argument("--force", action="store_true", help="delete at once (grace period 0)")
    p.add_argument("--wait", nargs="?", const=True, default=True, type=_bool,
                   help="wait until the object is gone (default true; --wait=false: do not)")
    p.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                   help="how long --wait waits (0: as long as it takes)")
    p.add_argument("--ignore-not-found", action="store_true")
    p.set_defaults(func=cmd_delete, positional_rest="resources")

    p = sub.add_parser("label", parents=[common], help="set or remove labels (kubectl label)")
    p.add_argument("args", nargs="+", metavar="KIND NAME k=v k2-")
    p.add_argument("--overwrite", action="store_true", help="change a label that has a value")
    p.set_defaults(func=cmd_label, positional_rest="args")
