"""podnetctl apply -f FILE|DIR|- and create -f: objects from manifests to the cluster.

apply creates what is missing and updates what exists (merge.applied: the live object with the
manifest's fields, the fields the last apply set and this one dropped removed), sending the
fetched resourceVersion so a concurrent change is refused rather than overwritten; on that
Conflict it fetches and merges once more. Each object is reported as kubectl does
(`pod/web created|configured|unchanged`); one that fails does not stop the others, and the
command exits 1 if any failed.
"""
import copy
import sys

from . import manifests, merge, printers
from .apiclient import ApiError, KubectlError
from .manifests import Manifest
from .resources import Kind
from .session import Session, dump, meta


def _kind_of(s: Session, m: Manifest) -> Kind:
    try:
        return s.kinds.by_kind(m.obj["kind"], m.obj["apiVersion"])
    except KubectlError as e:
        raise KubectlError(f'resource mapping not found for name: "{meta(m.obj, "name")}" '
                           f'namespace: "{meta(m.obj, "namespace")}" from "{m.source}": '
                           f"{e.args[0]}") from None


def _placed(s: Session, kind: Kind, m: Manifest, args) -> tuple[dict, str]:
    """The object with its namespace settled (-n, the manifest's, the context's)."""
    obj = copy.deepcopy(m.obj)
    if not kind.namespaced:
        return obj, ""
    own = meta(obj, "namespace")
    if own and args.namespace and own != args.namespace:
        raise KubectlError(f'the namespace from the provided object "{own}" does not match the '
                           f'namespace "{args.namespace}". You must pass '
                           f"'--namespace={own}' to perform this operation.")
    ns = own or s.target.namespace
    obj["metadata"]["namespace"] = ns
    return obj, ns


def _server_error(e: ApiError, when: str, source: str) -> ApiError:
    """kubectl's wording for a failure with a file: `... error when creating "pod.yaml": ...`."""
    if e.code.name in ("UNAVAILABLE", "UNAUTHENTICATED", "UNIMPLEMENTED"):
        return e                                   # about the connection, not the file
    return ApiError(e.code, f'error when {when} "{source}": {e.details}', e.server)


def apply_one(s: Session, m: Manifest, args) -> tuple[str, dict]:
    kind = _kind_of(s, m)
    obj, ns = _placed(s, kind, m, args)
    name = meta(obj, "name")
    if not name:
        raise KubectlError(f'error when applying "{m.source}": cannot use generateName with apply')
    for attempt in range(2):
        try:
            live = s.client.get(kind.resource, ns, name)
        except ApiError as e:
            if e.reason != "NotFound":
                raise _server_error(e, f'retrieving current configuration of {kind.resource} '
                                       f'"{name}" from', m.source) from None
            try:
                return "created", s.client.create(kind.resource, ns, merge.with_last_applied(obj))
            except ApiError as e:
                if e.reason == "AlreadyExists" and attempt == 0:
                    continue                     # created meanwhile: update it instead
                raise _server_error(e, "creating", m.source) from None
        merged, changed = merge.applied(live, obj)
        if not changed:
            return "unchanged", live
        try:
            return "configured", s.client.update(kind.resource, ns, merged)
        except ApiError as e:
            if e.reason == "Conflict" and attempt == 0:
                continue
            raise _server_error(e, "applying", m.source) from None
    raise AssertionError("unreachable")


def create_one(s: Session, m: Manifest, args) -> tuple[str, dict]:
    kind = _kind_of(s, m)
    obj, ns = _placed(s, kind, m, args)
    try:
        return "created", s.client.create(kind.resource, ns, obj)
    except ApiError as e:
        raise _server_error(e, "creating", m.source) from None


def _report(s: Session, m: Manifest, verdict: str, obj: dict, fmt: str) -> None:
    kind = s.kinds.by_kind(m.obj["kind"], m.obj["apiVersion"])
    if fmt in ("json", "yaml"):
        dump(obj, fmt)
    elif fmt == "name":
        print(printers.name_of(kind.qualified, obj))
    else:
        print(f"{printers.name_of(kind.qualified, obj)} {verdict}")


def run(args, one) -> int:
    objects = manifests.load(args.filename, args.recursive)
    s = Session(args)
    failed = 0
    for m in objects:
        try:
            verdict, obj = one(s, m, args)
        except (ApiError, KubectlError) as e:
            if getattr(e, "code", None) is not None and e.code.name in ("UNAVAILABLE",
                                                                       "UNAUTHENTICATED"):
                raise                              # the same for every object: say it once
            sys.stdout.flush()
            sys.stderr.write(f"{e}\n")
            failed += 1
            continue
        _report(s, m, verdict, obj, args.output)
    return 1 if failed else 0


def cmd_apply(args) -> int:
    return run(args, apply_one)


def cmd_create(args) -> int:
    return run(args, create_one)


def register(sub, common) -> None:
    for name, fn, helptext in (
            ("apply", cmd_apply, "create or update objects from manifests (kubectl apply)"),
            ("create", cmd_create, "create objects from manifests (kubectl create -f)")):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("-f", "--filename", action="append", required=True,
                       help="a YAML/JSON file, a directory of them, or - for stdin (repeatable)")
        p.add_argument("-R", "--recursive", action="store_true",
                       help="-f DIR: the directories under it too")
        p.add_argument("-o", "--output", default="", choices=["", "name", "json", "yaml"])
        p.set_defaults(func=fn)
