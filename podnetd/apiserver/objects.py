"""ObjectMeta as kube-apiserver keeps it: what a client may set (name, generateName, namespace,
labels, annotations, finalizers, ownerReferences), what the server sets (uid, resourceVersion,
generation, creationTimestamp, deletionTimestamp, deletionGracePeriodSeconds), and the API's
error types (each maps to one gRPC code in service.py)."""
import json
import secrets
import uuid

from .. import timestamps
from . import validation as v
from .kinds import Kind
from .validation import Errors

CLIENT_FIELDS = {"name", "generateName", "namespace", "labels", "annotations", "finalizers",
                 "ownerReferences"}
SERVER_FIELDS = {"uid", "resourceVersion", "generation", "creationTimestamp",
                 "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"}
MAX_OBJECT_BYTES = 1536 * 1024   # etcd's default request limit is 1.5 MiB; the API's 3 MiB
MAX_REQUEST_BYTES = 3 * 1024 * 1024
MAX_DEPTH = 64   # a Pod nests about 10 levels deep (affinity terms), its status a few more


class ApiError(Exception):
    reason = "InternalError"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(ApiError):
    reason = "NotFound"


class AlreadyExists(ApiError):
    reason = "AlreadyExists"


class Conflict(ApiError):
    reason = "Conflict"


class Invalid(ApiError):
    reason = "Invalid"


class BadRequest(ApiError):
    reason = "BadRequest"


class Gone(ApiError):
    """A watch's resourceVersion is older than the history kept: list again."""
    reason = "Expired"


class Forbidden(ApiError):
    reason = "Forbidden"


class Unauthorized(ApiError):
    reason = "Unauthorized"


class TooLarge(ApiError):
    reason = "RequestEntityTooLarge"


class Corrupt(ApiError):
    """A stored value that is not an object of ours (INTERNAL, as kube-apiserver's decode
    errors)."""
    reason = "InternalError"


class Unavailable(ApiError):
    reason = "ServiceUnavailable"


def not_found(kind: Kind, name: str) -> NotFound:
    return NotFound(f'{kind.resource} "{name}" not found')


def conflict(kind: Kind, name: str) -> Conflict:
    return Conflict(f'Operation cannot be fulfilled on {kind.resource} "{name}": the object has '
                    'been modified; please apply your changes to the latest version and try '
                    'again')


def decode(data: bytes, what: str = "object") -> dict:
    if len(data) > MAX_REQUEST_BYTES:
        raise TooLarge(f"Request entity too large: limit is {MAX_REQUEST_BYTES}")
    try:
        obj = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise BadRequest(f"{what}: not valid JSON: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"{what}: must be a JSON object")
    check_depth(obj, what)
    return obj


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e400 would be read as inf and written back as "Infinity", which is not JSON
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def check_depth(obj, what: str = "object") -> None:
    """Refuse objects nested deeper than any kind needs: the server walks and copies objects
    recursively, and a 900-deep one would end in RecursionError instead of an answer."""
    todo = [(obj, 1)]
    while todo:
        node, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"{what}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            todo.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            todo.extend((v, depth + 1) for v in node)


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def check_kind(obj: dict, kind: Kind) -> None:
    if obj.get("kind") != kind.kind:
        raise BadRequest(f"the object's kind {v.show(obj.get('kind'))} is not {kind.kind} "
                         f"(the request is for {kind.resource})")
    if obj.get("apiVersion") != kind.api_version:
        raise BadRequest(f"{kind.kind}: apiVersion {v.show(obj.get('apiVersion'))} is not "
                         f"served; use {kind.api_version}")


def validate_metadata(e: Errors, kind: Kind, meta: dict) -> None:
    v.only(e, meta, "metadata", CLIENT_FIELDS | SERVER_FIELDS)
    if kind.name_rule == "path":
        name = v.string(e, meta, "name", "metadata", required=True, maxlen=253)
        if name is not None and (name in (".", "..") or "/" in name or "%" in name or not name):
            e.add("metadata.name", f"Invalid value: {v.show(name)}: may not be '.' or '..' and "
                                   "may not contain '/' or '%'")
    else:
        label = kind.name_rule == "label"
        maxlen = 63 if label else 253
        name = v.string(e, meta, "name", "metadata", required=True, maxlen=maxlen)
        if name is not None and not (v.DNS_LABEL if label else v.DNS_SUBDOMAIN).fullmatch(name):
            e.add("metadata.name", f"Invalid value: {v.show(name)}: a lowercase RFC 1123 "
                  f"{'label' if label else 'subdomain'} must consist of lower case "
                  "alphanumeric characters, '-' or '.', and must start and end with an "
                  "alphanumeric character")
    if kind.namespaced:
        v.string(e, meta, "namespace", "metadata", pattern=v.DNS_LABEL, maxlen=63)
    v.string_map(e, meta, "labels", "metadata", labels=True)
    v.string_map(e, meta, "annotations", "metadata", labels=False)
    finalizers = v.sequence(e, meta, "finalizers", "metadata", 64)
    for i, f in enumerate(finalizers):
        if not isinstance(f, str) or "/" not in f or len(f) > 316:
            e.add(f"metadata.finalizers[{i}]", f"Invalid value: {v.show(f)}: a finalizer must "
                                              "be a qualified name with a domain prefix")
    for i, ref in enumerate(v.sequence(e, meta, "ownerReferences", "metadata", 64)):
        where = f"metadata.ownerReferences[{i}]"
        if not isinstance(ref, dict):
            e.add(where, "Invalid value: must be an object")
            continue
        v.only(e, ref, where, {"apiVersion", "kind", "name", "uid", "controller",
                               "blockOwnerDeletion"})
        for key in ("apiVersion", "kind", "name", "uid"):
            v.string(e, ref, key, where, required=True, maxlen=253)
    if sum(1 for ref in meta.get("ownerReferences") or []
           if isinstance(ref, dict) and ref.get("controller") is True) > 1:
        e.add("metadata.ownerReferences", "Invalid value: Only one reference can have "
                                          "Controller set to true")


def invalid(kind: Kind, name: str, errors: Errors) -> Invalid:
    return Invalid(f'{kind.kind} "{name}" is invalid: ' + ", ".join(errors.items))


def new_metadata(kind: Kind, meta: dict, namespace: str) -> dict:
    """The metadata of a new object: client fields kept, server fields set (resourceVersion
    is added when read back from the store)."""
    out = {k: meta[k] for k in CLIENT_FIELDS if k in meta and k != "generateName"}
    if not out.get("name") and meta.get("generateName"):
        out["name"] = meta["generateName"] + _suffix()
        out["generateName"] = meta["generateName"]
    out.pop("namespace", None)   # kube-apiserver drops it from cluster-scoped objects
    if kind.namespaced:
        out["namespace"] = namespace
    out["uid"] = str(uuid.uuid4())
    out["creationTimestamp"] = timestamps.rfc3339()
    out["generation"] = 1
    return out


def _suffix() -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"   # kube's: no vowels, no look-alikes
    return "".join(secrets.choice(alphabet) for _ in range(5))
