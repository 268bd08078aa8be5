"""Pod manifest validation (apiVersion v1, kind Pod, YAML or JSON). Pure logic.

Every field the runtime does not implement, and every bad value, is refused with the field's
path and why, before anything is created. parse() returns the document as given (what
`pod get` shows as spec); the helpers below read the values with Kubernetes' defaults."""
import json
import re

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
LABEL_KEY = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
QUANTITY = re.compile(r"^([+]?[0-9]*\.?[0-9]+)(e[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")
SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
          "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "m": 10**-3, None: 1}
CAPABILITY = re.compile(r"^(CAP_)?[A-Z_]+$")
RESTART_POLICIES = ("Always", "OnFailure", "Never")


class ManifestError(Exception):
    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def load(text: str) -> dict:
    """Parse YAML or JSON text into one document."""
    text = text.strip()
    if not text:
        raise ManifestError("manifest", "empty document")
    try:
        if text.startswith("{"):
            doc = json.loads(text)
        else:
            import yaml
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
            if len(docs) != 1:
                raise ManifestError("manifest", f"expected one document, found {len(docs)}")
            doc = docs[0]
    except ManifestError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is one line
        raise ManifestError("manifest", f"cannot parse: {str(e).splitlines()[0]}") from None
    return doc


def parse(text: str) -> dict:
    doc = load(text)
    validate(doc)
    return doc


# -- value checkers ----------------------------------------------------------------------

def _obj(v, path: str, allowed: dict, required: tuple = ()) -> None:
    if not isinstance(v, dict):
        raise ManifestError(path, f"must be an object, got {type(v).__name__}")
    for key in v:
        if key not in allowed:
            raise ManifestError(f"{path}.{key}", "field is not supported by podnet")
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
        raise ManifestError(path, f"must be true or false, got {v!r}")


def _int(lo=None, hi=None):
    def check(v, path):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ManifestError(path, f"must be an integer, got {v!r}")
        if lo is not None and v < lo:
            raise ManifestError(path, f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise ManifestError(path, f"must be <= {hi}, got {v}")
    return check


def _enum(*values):
    def check(v, path):
        if v not in values:
            raise ManifestError(path, f"unsupported value {v!r}: expected one of "
                                      f"{', '.join(repr(x) for x in values)}")
    return check


def _strlist(v, path):
    if not isinstance(v, list):
        raise ManifestError(path, "must be a list of strings")
    for i, item in enumerate(v):
        if not isinstance(item, str):
            raise ManifestError(f"{path}[{i}]", f"must be a string, got {item!r}")


def _list(item_check):
    def check(v, path):
        if not isinstance(v, list):
            raise ManifestError(path, f"must be a list, got {type(v).__name__}")
        for i, item in enumerate(v):
            item_check(item, f"{path}[{i}]")
    return check


def _regex(pattern, why, maxlen=253):
    def check(v, path):
        _str(v, path)
        if len(v) > maxlen or not pattern.match(v):
            raise ManifestError(path, f"{v!r} is not {why}")
    return check


_label = _regex(DNS_LABEL, "a DNS label (lower case letters, digits, '-', at most 63)", 63)
_subdomain = _regex(DNS_SUBDOMAIN, "a DNS subdomain", 253)


def _abspath(v, path):
    _str(v, path)
    if not v.startswith("/"):
        raise ManifestError(path, f"{v!r} must be an absolute path")


def _string_map(v, path):
    if not isinstance(v, dict):
        raise ManifestError(path, "must be a map of strings")
    for k, val in v.items():
        if not isinstance(k, str) or not LABEL_KEY.match(k) or len(k) > 316:
            raise ManifestError(f"{path}.{k}", "invalid key")
        if not isinstance(val, str):
            raise ManifestError(f"{path}.{k}", f"value must be a string, got {val!r}")


def quantity(v, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ManifestError(path, f"must be a quantity like 128Mi or 500m, got {v!r}")
    m = QUANTITY.match(str(v).strip())
    if not m:
        raise ManifestError(path, f"{v!r} is not a quantity (e.g. 128Mi, 1G, 500m, 0.5)")
    number, suffix = float(m.group(1)), m.group(2)
    if suffix and suffix.startswith("e"):
        return number * 10 ** int(suffix[1:])
    return number * SUFFIX[suffix]


def _memory(v, path):
    q = quantity(v, path)
    if q < 4096 * 1024 and q != 0:
        raise ManifestError(path, f"{v!r} is below the 4Mi a container needs")


def _cpu(v, path):
    q = quantity(v, path)
    if q < 0.001:
        raise ManifestError(path, f"{v!r}: cpu must be at least 1m")


def _port(v, path):
    if isinstance(v, str):
        if not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", v) or len(v) > 15:
            raise ManifestError(path, f"{v!r} is neither a port number nor a port name")
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
    if sub and (sub.startswith("/") or ".." in sub.split("/")):
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
            if not CAPABILITY.match(c):
                raise ManifestError(f"{p}[{i}]", f"{c!r} is not a capability name")
    _obj(v, path, {"add": caps, "drop": caps})


def _security_context(v, path):
    _obj(v, path, {"runAsUser": _int(0, 2**31 - 1), "runAsGroup": _int(0, 2**31 - 1),
                   "runAsNonRoot": _bool, "readOnlyRootFilesystem": _bool,
                   "capabilities": _capabilities, "allowPrivilegeEscalation": _bool,
                   "privileged": _bool})
    if v.get("privileged") and v.get("allowPrivilegeEscalation") is False:
        raise ManifestError(f"{path}.allowPrivilegeEscalation",
                            "cannot be false when privileged is true")
    if v.get("runAsNonRoot") and v.get("runAsUser") == 0:
        raise ManifestError(f"{path}.runAsUser", "is 0 while runAsNonRoot is true")


def _pod_security_context(v, path):
    _obj(v, path, {"runAsUser": _int(0, 2**31 - 1), "runAsGroup": _int(0, 2**31 - 1),
                   "runAsNonRoot": _bool, "supplementalGroups": _list(_int(0, 2**31 - 1))})


def _exec_action(v, path):
    _obj(v, path, {"command": _strlist}, ("command",))


def _http_get(v, path):
    _obj(v, path, {"path": _str, "port": _port, "host": _str, "scheme": _enum("HTTP"),
                   "httpHeaders": _list(lambda h, p: _obj(h, p, {"name": _str, "value": _str},
                                                          ("name",)))}, ("port",))


def _tcp_socket(v, path):
    _obj(v, path, {"port": _port, "host": _str}, ("port",))


def _one_handler(v, path, handlers):
    present = [h for h in handlers if h in v]
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
        "name": _label, "namespace": _label, "labels": _string_map,
        "annotations": _string_map}, ("name",))
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


def memory_bytes(container: dict) -> int | None:
    lim = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return int(quantity(lim, "")) if lim is not None else None


def cpu_millis(container: dict, kind: str) -> int | None:
    value = ((container.get("resources") or {}).get(kind) or {}).get("cpu")
    return max(1, int(round(quantity(value, "") * 1000))) if value is not None else None


def security(pod_spec: dict, container: dict) -> dict:
    """The effective security settings: the container's override the pod's."""
    pod = pod_spec.get("securityContext") or {}
    ctr = container.get("securityContext") or {}
    merged = {k: pod[k] for k in ("runAsUser", "runAsGroup", "runAsNonRoot") if k in pod}
    merged.update(ctr)
    merged["supplementalGroups"] = pod.get("supplementalGroups") or []
    return merged


def probe_settings(probe: dict) -> dict:
    return {"initialDelaySeconds": probe.get("initialDelaySeconds", 0),
            "timeoutSeconds": probe.get("timeoutSeconds", 1),
            "periodSeconds": probe.get("periodSeconds", 10),
            "successThreshold": probe.get("successThreshold", 1),
            "failureThreshold": probe.get("failureThreshold", 3)}
