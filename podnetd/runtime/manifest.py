"""Pod manifest validation (apiVersion v1, kind Pod, YAML or JSON). Pure logic.

A manifest is untrusted input: the text is bounded in size, nesting depth and alias expansion
before anything is built from it (a YAML alias bomb never unfolds), duplicate and non-string
keys and non-JSON YAML tags are refused, and `status` is dropped as the API server drops it on
create. Every field the runtime does not implement, and every bad value, is refused with the
field's path and why, before anything is created. parse() returns the document as validated
(what `pod get` shows as spec); the helpers below read the values with Kubernetes' defaults."""
import json
import re
from decimal import ROUND_CEILING, Decimal, localcontext

import yaml

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
CAPABILITY = re.compile(r"(CAP_)?[A-Z_]+")
PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
SECCOMP_TYPES = ("RuntimeDefault", "Unconfined", "Localhost")

# Bounds on the text and on what it may unfold into (see load()).
# 512 KiB: room for Kubernetes' 256 KiB of annotations and a large spec; PyYAML needs up to
# about 2 s for the slowest shapes of this size (off the event loop)
MAX_MANIFEST_BYTES = 512 * 1024
MAX_DEPTH = 64                    # a Pod nests about 8 levels deep
MAX_NODES = 100_000               # YAML nodes as written (parse time grows with them)
MAX_EXPANDED = 2 * MAX_MANIFEST_BYTES  # nodes + scalar characters after alias expansion
MAX_ANNOTATIONS_BYTES = 256 * 1024     # Kubernetes' TotalAnnotationSizeLimitB


class ManifestError(Exception):
    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


# -- loading -----------------------------------------------------------------------------

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):
    """PyYAML's safe loader, stricter: string keys only, no duplicate keys, and only the
    types JSON has (a Kubernetes object is JSON); timestamps stay strings, as in kubectl."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {_show(key)} is not a string (quote it)",
                        key_node.start_mark)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_show(key)}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)

    def _refuse_tag(self, node):
        raise yaml.constructor.ConstructorError(
            None, None, f"tag {node.tag} is not allowed in a manifest", node.start_mark)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", lambda ld, n: ld.construct_scalar(n))
for _tag in ("binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _Loader._refuse_tag)


def _check_events(text: str) -> None:
    """One pass over the YAML events (the parser is iterative, nothing is built): nesting depth,
    and the size the document would have once every alias is expanded (a node counts 1, a
    scalar also its length; an alias counts what its anchor holds), so a billion-laughs
    document is refused from its few hundred bytes. Recursive aliases too."""
    anchors: dict[str, int] = {}
    stack: list[list] = []   # [anchor, weight of the subtree so far] per open collection
    total = nodes = 0
    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise ManifestError("manifest", f"nested deeper than {MAX_DEPTH} levels "
                                                f"(line {event.start_mark.line + 1})")
            stack.append([event.anchor, 1])
            weight = 1
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, subtree = stack.pop()
            if anchor is not None:
                anchors[anchor] = subtree
            if stack:
                stack[-1][1] += subtree
            continue
        elif isinstance(event, yaml.ScalarEvent):
            weight = 1 + len(event.value)
            if event.anchor is not None:
                anchors[event.anchor] = weight
        elif isinstance(event, yaml.AliasEvent):
            if any(frame[0] == event.anchor for frame in stack):
                raise ManifestError("manifest", f"alias *{event.anchor} refers to itself "
                                                f"(line {event.start_mark.line + 1})")
            if event.anchor not in anchors:
                raise ManifestError("manifest", f"alias *{event.anchor} is not defined "
                                                f"(line {event.start_mark.line + 1})")
            weight = anchors[event.anchor]
        else:
            continue
        nodes += 1
        if nodes > MAX_NODES:
            raise ManifestError("manifest", f"more than {MAX_NODES} nodes")
        total += weight
        if total > MAX_EXPANDED:
            raise ManifestError("manifest", "too large once its aliases are expanded "
                                            f"(over {MAX_EXPANDED} bytes)")
        if stack and not isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            stack[-1][1] += weight


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_show(key)}")
        out[key] = value
    return out


def _depth(doc) -> int:
    deepest, todo = 0, [(doc, 0)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                todo.extend((v, depth) for v in (node.values() if isinstance(node, dict)
                                                 else node))
    return deepest


def load(text: str) -> dict:
    """Parse YAML or JSON text into one document, within the bounds above."""
    if not isinstance(text, str):
        raise ManifestError("manifest", f"must be text, got {type(text).__name__}")
    if len(text) > MAX_MANIFEST_BYTES or len(text.encode("utf-8", "surrogatepass")) \
            > MAX_MANIFEST_BYTES:
        raise ManifestError("manifest", f"larger than {MAX_MANIFEST_BYTES} bytes")
    text = text.strip()
    if not text:
        raise ManifestError("manifest", "empty document")
    try:
        if text.startswith("{"):
            doc = json.loads(text, parse_constant=_refuse_constant,
                             object_pairs_hook=_no_duplicates)
            if _depth(doc) > MAX_DEPTH:
                raise ManifestError("manifest", f"nested deeper than {MAX_DEPTH} levels")
        else:
            _check_events(text)
            docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
            if len(docs) != 1:
                raise ManifestError("manifest", f"expected one document, found {len(docs)}")
            doc = docs[0]
    except ManifestError:
        raise
    except RecursionError:
        raise ManifestError("manifest", f"nested deeper than {MAX_DEPTH} levels") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is one line
        lines = str(e).splitlines() or [type(e).__name__]
        raise ManifestError("manifest", f"cannot parse: {' '.join(x.strip() for x in lines)}"
                            ) from None
    return doc


def _drop_nulls(node) -> None:
    """`field: null` means unset, as Kubernetes decodes it (validated depth: no recursion)."""
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, dict):
            for k in [k for k, v in n.items() if v is None]:
                del n[k]
            todo.extend(n.values())
        elif isinstance(n, list):
            todo.extend(n)


def parse(text: str) -> dict:
    doc = load(text)
    if isinstance(doc, dict):
        # the API server ignores a submitted status on create; so do we (never persisted)
        doc.pop("status", None)
        _drop_nulls(doc)
    validate(doc)
    return doc


# -- value checkers ----------------------------------------------------------------------

def _obj(v, path: str, allowed: dict, required: tuple = ()) -> None:
    if not isinstance(v, dict):
        raise ManifestError(path, f"must be an object, got {type(v).__name__}")
    for key in v:
        if key not in allowed:
            shown = key if isinstance(key, str) and len(key) <= 64 and key.isprintable() \
                else _show(key)
            raise ManifestError(f"{path}.{shown}", "field is not supported by podnet")
    for key in required:
        if v.get(key) in (None, "", [], {}):
            raise ManifestError(f"{path}.{key}", "required")
    for key, check in allowed.items():
        if key in v and v[key] is not None and check is not None:
            check(v[key], f"{path}.{key}")


def _str(v, path):
    if not isinstance(v, str):
        raise ManifestError(path, f"must be a string, got {type(v).__name__}")


def _bool(v, path):
    if not isinstance(v, bool):
        raise ManifestError(path, f"must be true or false, got {_show(v)}")


def _int(lo=None, hi=None):
    def check(v, path):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ManifestError(path, f"must be an integer, got {_show(v)}")
        if lo is not None and v < lo:
            raise ManifestError(path, f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise ManifestError(path, f"must be <= {hi}, got {v}")
    return check


def _enum(*values):
    def check(v, path):
        if v not in values:
            raise ManifestError(path, f"unsupported value {_show(v)}: expected one of "
                                      f"{', '.join(repr(x) for x in values)}")
    return check


def _strlist(v, path):
    if not isinstance(v, list):
        raise ManifestError(path, "must be a list of strings")
    for i, item in enumerate(v):
        if not isinstance(item, str):
            raise ManifestError(f"{path}[{i}]", f"must be a string, got {_show(item)}")


def _list(item_check):
    def check(v, path):
        if not isinstance(v, list):
            raise ManifestError(path, f"must be a list, got {type(v).__name__}")
        for i, item in enumerate(v):
            item_check(item, f"{path}[{i}]")
    return check


def _show(v) -> str:
    """A value for an error message: repr, cut short (the value may be a megabyte)."""
    text = repr(v)
    return text if len(text) <= 80 else text[:72] + "...'(cut)"


def _regex(pattern, why, maxlen=253):
    def check(v, path):
        _str(v, path)
        if len(v) > maxlen or not pattern.fullmatch(v):
            raise ManifestError(path, f"{_show(v)} is not {why}")
    return check


_label = _regex(DNS_LABEL, "a DNS label (lower case letters, digits, '-', at most 63)", 63)
_subdomain = _regex(DNS_SUBDOMAIN, "a DNS subdomain", 253)


def _abspath(v, path):
    _str(v, path)
    if not v.startswith("/"):
        raise ManifestError(path, f"{_show(v)} must be an absolute path")
    if "\0" in v:
        raise ManifestError(path, "must not contain a NUL character")


def _key_problem(key) -> str | None:
    """Kubernetes' qualified name rule for label and annotation keys, or None when valid."""
    if not isinstance(key, str) or not key:
        return "must be a non-empty string"
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.fullmatch(prefix)):
        return "prefix part must be a DNS subdomain (at most 253 characters)"
    if len(name) > 63 or not LABEL_NAME.fullmatch(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character (at most 63)")
    return None


def _string_map(labels: bool):
    def check(v, path):
        if not isinstance(v, dict):
            raise ManifestError(path, "must be a map of strings")
        size = 0
        for k, val in v.items():
            why = _key_problem(k)
            if why:
                raise ManifestError(f"{path}.{_show(k)}", f"invalid key: {why}")
            if not isinstance(val, str):
                raise ManifestError(f"{path}.{k}", f"value must be a string, got {_show(val)}")
            if labels and (len(val) > 63 or not LABEL_VALUE.fullmatch(val)):
                raise ManifestError(f"{path}.{k}", f"{_show(val)}: a label value must be empty "
                                    "or consist of alphanumeric characters, '-', '_' or '.', "
                                    "and must start and end with an alphanumeric character "
                                    "(at most 63)")
            size += len(k) + len(val)
        if not labels and size > MAX_ANNOTATIONS_BYTES:
            raise ManifestError(path, f"Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes")
    return check


key_problem = _key_problem
string_map = _string_map  # the API server validates every kind's labels and annotations with it


# -- quantities (k8s.io/apimachinery resource.Quantity) ------------------------------------

# <sign><digits>[.<digits>]<suffix>; the suffix scan is Kubernetes' (letters of
# "eEinumkKMGTP", an optional sign, digits), then interpreted below.
QUANTITY = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?([eEinumkKMGTP]*[+-]?[0-9]*)")
DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15,
              "E": 18}
BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
EXPONENT = re.compile(r"[eE]([+-]?[0-9]+)")
MAX_QUANTITY_CHARS = 100
MAX_QUANTITY = Decimal(2**63 - 1)   # Kubernetes caps every quantity here
NANO = Decimal("1e-9")              # ...and rounds non-zero values up to 1n


def parse_quantity(text: str) -> Decimal:
    """A quantity's exact value, as resource.ParseQuantity computes it (capped at 2^63-1,
    rounded up to nano units), or ValueError with why. Decimal arithmetic on bounded input:
    a huge exponent costs nothing (the value is capped before it is computed)."""
    if len(text) > MAX_QUANTITY_CHARS:
        raise ValueError(f"longer than {MAX_QUANTITY_CHARS} characters")
    m = QUANTITY.fullmatch(text)
    if not m or not text:
        raise ValueError("quantities must match the regular expression "
                         "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    sign, whole, frac, suffix = m.group(1), m.group(2), m.group(3) or "", m.group(4)
    if not whole and not frac:
        raise ValueError("unable to parse numeric part of quantity")
    mantissa = int(whole + frac or "0")
    scale = -len(frac)                    # value = mantissa * 10^scale * suffix
    binary = 0
    if suffix in DECIMAL_SI:
        scale += DECIMAL_SI[suffix]
    elif suffix in BINARY_SI:
        binary = BINARY_SI[suffix]
    else:
        e = EXPONENT.fullmatch(suffix)
        if not e or abs(int(e.group(1))) > 2**63 - 1:   # Go's ParseInt(.., 64)
            raise ValueError("unable to parse quantity's suffix")
        scale += int(e.group(1))
    if mantissa == 0:
        return Decimal(0)
    # mantissa < 10^100: beyond these exponents the result is the cap or 1n whatever it is
    if scale > 40:
        value = MAX_QUANTITY
    elif scale < -(MAX_QUANTITY_CHARS + 20):
        value = NANO
    else:
        with localcontext() as ctx:
            ctx.prec, ctx.Emax, ctx.Emin = 400, 10**6, -10**6
            value = Decimal(mantissa).scaleb(scale) * (2 ** binary)
            value = min(value.quantize(NANO, rounding=ROUND_CEILING), MAX_QUANTITY)
    return -value if sign == "-" else value


def quantity(v, path: str) -> Decimal:
    """A quantity field (a string, or a JSON number as Kubernetes accepts one)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ManifestError(path, f"must be a quantity like 128Mi or 500m, got {_show(v)}")
    if isinstance(v, int) and v.bit_length() > 400:
        raise ManifestError(path, f"longer than {MAX_QUANTITY_CHARS} characters")
    text = (v if isinstance(v, str) else repr(v)).strip()
    try:
        return parse_quantity(text)
    except ValueError as e:
        raise ManifestError(path, f"{_show(v)} is not a quantity (e.g. 128Mi, 1G, 500m, 0.5): "
                                  f"{e}") from None


def _nonnegative(v, path) -> Decimal:
    q = quantity(v, path)
    if q < 0:
        raise ManifestError(path, f"{_show(v)}: must be greater than or equal to 0")
    return q


def _memory(v, path):
    q = _nonnegative(v, path)
    if q < 4096 * 1024 and q != 0:
        raise ManifestError(path, f"{_show(v)} is below the 4Mi a container needs")


def _cpu(v, path):
    q = _nonnegative(v, path)
    if q < Decimal("0.001"):
        raise ManifestError(path, f"{_show(v)}: cpu must be at least 1m")


def _port(v, path):
    if isinstance(v, str):
        if not PORT_NAME.fullmatch(v) or len(v) > 15:
            raise ManifestError(path, f"{_show(v)} is neither a port number nor a port name")
        return
    _int(1, 65535)(v, path)


# -- objects -----------------------------------------------------------------------------

def _env_var(v, path):
    _obj(v, path, {"name": _regex(ENV_NAME, "a valid environment variable name"),
                   "value": _str}, ("name",))


def _container_port(v, path):
    _obj(v, path, {"containerPort": _int(1, 65535), "hostPort": _int(1, 65535),
                   "protocol": _enum("TCP", "UDP", "SCTP"), "name": _port, "hostIP": _str},
         ("containerPort",))


def _volume_mount(v, path):
    _obj(v, path, {"name": _label, "mountPath": _abspath, "readOnly": _bool,
                   "subPath": _str}, ("name", "mountPath"))
    sub = v.get("subPath")
    if sub and (sub.startswith("/") or ".." in sub.split("/") or "\0" in sub):
        raise ManifestError(f"{path}.subPath", "must be a relative path without '..'")


def _resource_list(v, path):
    _obj(v, path, {"cpu": _cpu, "memory": _memory})


def _resources(v, path):
    _obj(v, path, {"requests": _resource_list, "limits": _resource_list})
    req, lim = v.get("requests") or {}, v.get("limits") or {}
    for key in ("cpu", "memory"):
        if key in req and key in lim and quantity(req[key], "") > quantity(lim[key], ""):
            raise ManifestError(f"{path}.requests.{key}", "must be less than or equal to the "
                                                          f"{key} limit")


def _capabilities(v, path):
    def caps(value, p):
        _strlist(value, p)
        for i, c in enumerate(value):
            if not CAPABILITY.fullmatch(c):
                raise ManifestError(f"{p}[{i}]", f"{_show(c)} is not a capability name")
    _obj(v, path, {"add": caps, "drop": caps})


def _seccomp_profile(v, path):
    """Kubernetes' validateSeccompProfileField: Localhost names a file below the node's
    profile root (podnetd --seccomp-profile-root), by a relative path without '..'."""
    _obj(v, path, {"type": _enum(*SECCOMP_TYPES), "localhostProfile": _str}, ("type",))
    local = v.get("localhostProfile")
    if v["type"] != "Localhost":
        if local is not None:
            raise ManifestError(f"{path}.localhostProfile",
                                "can only be set when seccomp type is Localhost")
        return
    if not local:
        raise ManifestError(f"{path}.localhostProfile",
                            "must be set when seccomp type is Localhost")
    if local.startswith("/"):
        raise ManifestError(f"{path}.localhostProfile", "must be a relative path")
    if ".." in local.split("/"):
        raise ManifestError(f"{path}.localhostProfile", "must not contain '..'")
    if "\0" in local or len(local) > 4096:
        raise ManifestError(f"{path}.localhostProfile", "is not a valid path")


def _security_context(v, path):
    _obj(v, path, {"runAsUser": _int(0, 2**31 - 1), "runAsGroup": _int(0, 2**31 - 1),
                   "runAsNonRoot": _bool, "readOnlyRootFilesystem": _bool,
                   "capabilities": _capabilities, "allowPrivilegeEscalation": _bool,
                   "privileged": _bool, "seccompProfile": _seccomp_profile})
    if v.get("privileged") and v.get("allowPrivilegeEscalation") is False:
        raise ManifestError(f"{path}.allowPrivilegeEscalation",
                            "cannot be false when privileged is true")
    if v.get("runAsNonRoot") and v.get("runAsUser") == 0:
        raise ManifestError(f"{path}.runAsUser", "is 0 while runAsNonRoot is true")


def _pod_security_context(v, path):
    _obj(v, path, {"runAsUser": _int(0, 2**31 - 1), "runAsGroup": _int(0, 2**31 - 1),
                   "runAsNonRoot": _bool, "supplementalGroups": _list(_int(0, 2**31 - 1)),
                   "seccompProfile": _seccomp_profile})


def _exec_action(v, path):
    _obj(v, path, {"command": _strlist}, ("command",))


def _http_get(v, path):
    _obj(v, path, {"path": _str, "port": _port, "host": _str, "scheme": _enum("HTTP"),
                   "httpHeaders": _list(lambda h, p: _obj(h, p, {"name": _str, "value": _str},
                                                          ("name",)))}, ("port",))


def _tcp_socket(v, path):
    _obj(v, path, {"port": _port, "host": _str}, ("port",))


def _one_handler(v, path, handlers):
    present = [h for h in handlers if v.get(h) is not None]
    if len(present) != 1:
        raise ManifestError(path, f"needs exactly one of {', '.join(handlers)}")


def _probe(kind):
    def check(v, path):
        _obj(v, path, {"exec": _exec_action, "httpGet": _http_get, "tcpSocket": _tcp_socket,
                       "initialDelaySeconds": _int(0), "timeoutSeconds": _int(1),
                       "periodSeconds": _int(1), "successThreshold": _int(1),
                       "failureThreshold": _int(1), "terminationGracePeriodSeconds": _int(1)})
        _one_handler(v, path, ("exec", "httpGet", "tcpSocket"))
        if kind != "readiness" and v.get("successThreshold", 1) != 1:
            raise ManifestError(f"{path}.successThreshold", f"must be 1 for a {kind} probe")
    return check


def _lifecycle(v, path):
    def handler(h, p):
        _obj(h, p, {"exec": _exec_action, "httpGet": _http_get, "tcpSocket": _tcp_socket,
                    "sleep": lambda s, sp: _obj(s, sp, {"seconds": _int(1)}, ("seconds",))})
        _one_handler(h, p, ("exec", "httpGet", "tcpSocket", "sleep"))
    _obj(v, path, {"preStop": handler})


CONTAINER_FIELDS = {
    "name": _label, "image": _str, "imagePullPolicy": _enum("Always", "IfNotPresent", "Never"),
    "command": _strlist, "args": _strlist, "env": _list(_env_var), "workingDir": _abspath,
    "ports": _list(_container_port), "volumeMounts": _list(_volume_mount),
    "resources": _resources, "securityContext": _security_context,
    "startupProbe": _probe("startup"), "livenessProbe": _probe("liveness"),
    "readinessProbe": _probe("readiness"), "lifecycle": _lifecycle,
    "terminationMessagePolicy": _enum("File"), "terminationMessagePath": _abspath,
}


def _container(init: bool):
    fields = dict(CONTAINER_FIELDS)
    if init:
        fields["restartPolicy"] = _enum("Always")

    def check(v, path):
        _obj(v, path, fields, ("name", "image"))
        sidecar = init and v.get("restartPolicy") == "Always"
        if init and not sidecar:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe", "lifecycle"):
                if probe in v:
                    raise ManifestError(f"{path}.{probe}", "not allowed in an init container "
                                                           "(only in a sidecar: restartPolicy Always)")
    return check


def _volume(v, path):
    def empty_dir(e, p):
        _obj(e, p, {"medium": _enum("", "Memory"), "sizeLimit": _memory})

    def host_path(h, p):
        _obj(h, p, {"path": _abspath, "type": _enum("", "Directory", "DirectoryOrCreate",
                                                     "File", "FileOrCreate")}, ("path",))
    _obj(v, path, {"name": _label, "emptyDir": empty_dir, "hostPath": host_path}, ("name",))
    _one_handler(v, path, ("emptyDir", "hostPath"))


SPEC_FIELDS = {
    "containers": _list(_container(False)), "initContainers": _list(_container(True)),
    "restartPolicy": _enum(*RESTART_POLICIES),
    "terminationGracePeriodSeconds": _int(0, 3600), "hostname": _label,
    "subdomain": _label, "hostNetwork": _bool, "shareProcessNamespace": _bool,
    "volumes": _list(_volume), "securityContext": _pod_security_context, "nodeName": _str,
    "enableServiceLinks": _bool, "dnsPolicy": _enum("ClusterFirst", "Default"),
}


def validate(doc) -> None:
    if not isinstance(doc, dict):
        raise ManifestError("manifest", "must be an object (apiVersion v1, kind Pod)")
    _obj(doc, "", {"apiVersion": _enum("v1"), "kind": _enum("Pod"), "metadata": None,
                   "spec": None, "status": None}, ("apiVersion", "kind", "metadata", "spec"))
    _obj(doc["metadata"], "metadata", {
        "name": _label, "namespace": _label, "labels": _string_map(True),
        "annotations": _string_map(False)}, ("name",))
    spec = doc["spec"]
    _obj(spec, "spec", SPEC_FIELDS, ("containers",))
    names = {}
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            if c["name"] in names:
                raise ManifestError(f"spec.{group}[{i}].name",
                                    f"{c['name']!r} is already used by {names[c['name']]}")
            names[c["name"]] = f"spec.{group}[{i}]"
    volumes = {}
    for i, vol in enumerate(spec.get("volumes") or []):
        if vol["name"] in volumes:
            raise ManifestError(f"spec.volumes[{i}].name", f"duplicate volume {vol['name']!r}")
        volumes[vol["name"]] = vol
    host_ports = {}
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            for j, m in enumerate(c.get("volumeMounts") or []):
                if m["name"] not in volumes:
                    raise ManifestError(f"spec.{group}[{i}].volumeMounts[{j}].name",
                                        f"no volume named {m['name']!r} in spec.volumes")
            for j, p in enumerate(c.get("ports") or []):
                if "hostPort" in p:
                    key = (p["hostPort"], p.get("protocol", "TCP"))
                    if key in host_ports:
                        raise ManifestError(f"spec.{group}[{i}].ports[{j}].hostPort",
                                            f"{key[0]}/{key[1]} is already used")
                    host_ports[key] = True
                    if spec.get("hostNetwork") and p["hostPort"] != p["containerPort"]:
                        raise ManifestError(f"spec.{group}[{i}].ports[{j}].hostPort",
                                            "must equal containerPort with hostNetwork")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                pr = c.get(probe) or {}
                for h in ("httpGet", "tcpSocket"):
                    port = (pr.get(h) or {}).get("port")
                    if isinstance(port, str) and port not in {
                            x.get("name") for x in c.get("ports") or []}:
                        raise ManifestError(f"spec.{group}[{i}].{probe}.{h}.port",
                                            f"no container port named {port!r}")


# -- reading values with defaults --------------------------------------------------------

def restart_policy(spec: dict) -> str:
    return spec.get("restartPolicy") or "Always"


def grace_period(spec: dict) -> int:
    value = spec.get("terminationGracePeriodSeconds")
    return 30 if value is None else value


def is_sidecar(container: dict) -> bool:
    return container.get("restartPolicy") == "Always"


def quantity_value(v) -> int:
    """A validated quantity in whole units, rounded up (Quantity.Value())."""
    return int(quantity(v, "").to_integral_value(ROUND_CEILING))


def memory_bytes(container: dict) -> int | None:
    lim = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return quantity_value(lim) if lim is not None else None


def cpu_millis(container: dict, kind: str) -> int | None:
    """Millicores, rounded up (Quantity.MilliValue())."""
    value = ((container.get("resources") or {}).get(kind) or {}).get("cpu")
    if value is None:
        return None
    return max(1, int((quantity(value, "") * 1000).to_integral_value(ROUND_CEILING)))


def security(pod_spec: dict, container: dict) -> dict:
    """The effective security settings: the container's override the pod's."""
    pod = pod_spec.get("securityContext") or {}
    ctr = container.get("securityContext") or {}
    merged = {k: pod[k] for k in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile")
              if k in pod}
    merged.update(ctr)
    merged["supplementalGroups"] = pod.get("supplementalGroups") or []
    return merged


def probe_settings(probe: dict) -> dict:
    return {"initialDelaySeconds": probe.get("initialDelaySeconds", 0),
            "timeoutSeconds": probe.get("timeoutSeconds", 1),
            "periodSeconds": probe.get("periodSeconds", 10),
            "successThreshold": probe.get("successThreshold", 1),
            "failureThreshold": probe.get("failureThreshold", 3)}
