"""kubectl's table columns, one entry per kind (a new kind is one entry in PRINTERS), its ages
(5s, 3m2s, 4h, 2d) and its -o name."""
import dataclasses
import datetime
import time
from typing import Callable

Row = Callable[[dict, float], str]


def parse_time(text) -> float | None:
    """An RFC 3339 timestamp (2024-05-01T10:00:00Z, with fractions or an offset) as epoch."""
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.timestamp()


def human_duration(seconds: float) -> str:
    """kubectl's duration.HumanDuration: precise while short, coarser as it grows."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = hours // 24 // 365, hours // 24 % 365
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{hours // 24 // 365}y"


def age(text, now: float) -> str:
    t = parse_time(text)
    return "<unknown>" if t is None else human_duration(now - t)


def _get(obj, *path, default=None):
    for key in path:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(key)
    return default if obj is None else obj


def _meta_age(obj: dict, now: float) -> str:
    return age(_get(obj, "metadata", "creationTimestamp"), now)


# ---- pods


def pod_ready(pod: dict) -> str:
    statuses = _get(pod, "status", "containerStatuses", default=[])
    total = len(_get(pod, "spec", "containers", default=[])) or len(statuses)
    ready = sum(1 for c in statuses if isinstance(c, dict) and c.get("ready"))
    return f"{ready}/{total}"


def _has_condition(pod: dict, kind: str) -> bool:
    return any(isinstance(c, dict) and c.get("type") == kind and c.get("status") == "True"
               for c in _get(pod, "status", "conditions", default=[]))


def pod_status(pod: dict) -> str:
    """kubectl's STATUS of a pod: the reason that best says where it is."""
    st = _get(pod, "status", default={})
    reason = st.get("reason") or st.get("phase") or "Unknown"
    init_specs = _get(pod, "spec", "initContainers", default=[])
    initializing = False
    for i, c in enumerate(st.get("initContainerStatuses") or []):
        state = c.get("state") or {}
        term, wait = state.get("terminated"), state.get("waiting")
        if term and term.get("exitCode") == 0:
            continue
        initializing = True
        if term:
            reason = "Init:" + (term.get("reason") or (f"Signal:{term['signal']}" if term.get(
                "signal") else f"ExitCode:{term.get('exitCode')}"))
        elif wait and wait.get("reason") and wait["reason"] != "PodInitializing":
            reason = f"Init:{wait['reason']}"
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        break
    if not initializing:
        running = False
        for c in reversed(st.get("containerStatuses") or []):
            state = c.get("state") or {}
            wait, term = state.get("waiting"), state.get("terminated")
            if wait and wait.get("reason"):
                reason = wait["reason"]
            elif term and term.get("reason"):
                reason = term["reason"]
            elif term:
                reason = (f"Signal:{term['signal']}" if term.get("signal")
                          else f"ExitCode:{term.get('exitCode')}")
            elif state.get("running") and c.get("ready"):
                running = True
        if reason == "Completed" and running:
            reason = "Running" if _has_condition(pod, "Ready") else "NotReady"
    if _get(pod, "metadata", "deletionTimestamp"):
        reason = "Unknown" if st.get("reason") == "NodeLost" else "Terminating"
    return reason


def pod_restarts(pod: dict, now: float) -> str:
    restarts, last = 0, None
    for c in _get(pod, "status", "containerStatuses", default=[]):
        restarts += int(c.get("restartCount") or 0)
        finished = parse_time(_get(c, "lastState", "terminated", "finishedAt"))
        if finished is not None and (last is None or finished > last):
            last = finished
    if restarts and last is not None:
        return f"{restarts} ({human_duration(now - last)} ago)"
    return str(restarts)


def _gates(pod: dict) -> str:
    gates = _get(pod, "spec", "readinessGates", default=[])
    if not gates:
        return "<none>"
    done = sum(1 for g in gates if _has_condition(pod, g.get("conditionType")))
    return f"{done}/{len(gates)}"


# ---- nodes


def node_status(node: dict) -> str:
    status = []
    for c in _get(node, "status", "conditions", default=[]):
        if isinstance(c, dict) and c.get("type") == "Ready":
            status.append("Ready" if c.get("status") == "True" else "NotReady")
    if not status:
        status.append("Unknown")
    if _get(node, "spec", "unschedulable"):
        status.append("SchedulingDisabled")
    return ",".join(status)


def node_roles(node: dict) -> str:
    roles = set()
    for key, value in _get(node, "metadata", "labels", default={}).items():
        if key.startswith("node-role.kubernetes.io/") and key != "node-role.kubernetes.io/":
            roles.add(key.split("/", 1)[1])
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(roles)) or "<none>"


def _address(node: dict, kind: str) -> str:
    for a in _get(node, "status", "addresses", default=[]):
        if isinstance(a, dict) and a.get("type") == kind:
            return a.get("address") or "<none>"
    return "<none>"


def _info(key: str) -> Row:
    return lambda node, now: str(_get(node, "status", "nodeInfo", key, default="<unknown>"))


# ---- everything else


def _involved(event: dict) -> str:
    obj = event.get("involvedObject") or event.get("regarding") or {}
    return f"{str(obj.get('kind', '')).lower()}/{obj.get('name', '')}"


def last_seen(event: dict, now: float) -> str:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        if parse_time(event.get(key)) is not None:
            return age(event[key], now)
    return _meta_age(event, now)


def event_message(event: dict) -> str:
    return str(event.get("message") or "").strip().replace("\n", " ")


def _role_ref(binding: dict) -> str:
    ref = binding.get("roleRef") or {}
    return f"{ref.get('kind', '')}/{ref.get('name', '')}"


def _subjects(kind: str) -> Row:
    return lambda b, now: ", ".join(s.get("name", "") for s in b.get("subjects") or []
                                    if isinstance(s, dict) and s.get("kind") == kind)


def _name(obj: dict, now: float) -> str:
    return str(_get(obj, "metadata", "name", default=""))


@dataclasses.dataclass(frozen=True)
class Printer:
    columns: tuple[tuple[str, Row], ...]
    wide: tuple[tuple[str, Row], ...] = ()


NAME = ("NAME", _name)
AGE = ("AGE", _meta_age)

PRINTERS: dict[str, Printer] = {
    "Pod": Printer(
        (NAME, ("READY", lambda p, now: pod_ready(p)), ("STATUS", lambda p, now: pod_status(p)),
         ("RESTARTS", pod_restarts), AGE),
        (("IP", lambda p, now: _get(p, "status", "podIP", default="<none>")),
         ("NODE", lambda p, now: _get(p, "spec", "nodeName", default="<none>")),
         ("NOMINATED NODE", lambda p, now: _get(p, "status", "nominatedNodeName",
                                                default="<none>")),
         ("READINESS GATES", lambda p, now: _gates(p)))),
    "Node": Printer(
        (NAME, ("STATUS", lambda n, now: node_status(n)), ("ROLES", lambda n, now: node_roles(n)),
         AGE, ("VERSION", _info("kubeletVersion"))),
        (("INTERNAL-IP", lambda n, now: _address(n, "InternalIP")),
         ("EXTERNAL-IP", lambda n, now: _address(n, "ExternalIP")),
         ("OS-IMAGE", _info("osImage")), ("KERNEL-VERSION", _info("kernelVersion")),
         ("CONTAINER-RUNTIME", _info("containerRuntimeVersion")))),
    "Namespace": Printer((NAME, ("STATUS", lambda n, now: _get(n, "status", "phase", default="")),
                          AGE)),
    "Event": Printer(
        (("LAST SEEN", last_seen), ("TYPE", lambda e, now: str(e.get("type", ""))),
         ("REASON", lambda e, now: str(e.get("reason", ""))),
         ("OBJECT", lambda e, now: _involved(e)), ("MESSAGE", lambda e, now: event_message(e))),
        (("SUBOBJECT", lambda e, now: _get(e, "involvedObject", "fieldPath", default="")),
         ("SOURCE", lambda e, now: ", ".join(str(v) for v in (e.get("source") or {}).values())),
         ("FIRST SEEN", lambda e, now: age(e.get("firstTimestamp"), now)),
         ("COUNT", lambda e, now: str(e.get("count", ""))), NAME)),
    "Lease": Printer((NAME, ("HOLDER", lambda l, now: _get(l, "spec", "holderIdentity",
                                                          default="")), AGE)),
    "Role": Printer((NAME, ("CREATED AT", lambda r, now: _get(r, "metadata",
                                                              "creationTimestamp", default="")))),
    "RoleBinding": Printer(
        (NAME, ("ROLE", lambda b, now: _role_ref(b)), AGE),
        (("USERS", _subjects("User")), ("GROUPS", _subjects("Group")),
         ("SERVICEACCOUNTS", _subjects("ServiceAccount")))),
}
PRINTERS["ClusterRole"] = PRINTERS["Role"]
PRINTERS["ClusterRoleBinding"] = PRINTERS["RoleBinding"]
DEFAULT = Printer((NAME, AGE))


def printer(kind: str) -> Printer:
    return PRINTERS.get(kind, DEFAULT)


def labels_text(obj: dict, now: float = 0) -> str:
    labels = _get(obj, "metadata", "labels", default={})
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def _headers_and_cells(kind: str, objects: list[dict], wide: bool, namespace_column: bool,
                       name_prefix: str, now: float, show_labels: bool = False
                       ) -> tuple[list[str], list[list[str]]]:
    p = printer(kind)
    columns = list(p.columns) + (list(p.wide) if wide else [])
    if show_labels:
        columns.append(("LABELS", labels_text))
    headers = (["NAMESPACE"] if namespace_column else []) + [h for h, _ in columns]
    rows = []
    for obj in objects:
        cells = [str(_get(obj, "metadata", "namespace", default=""))] if namespace_column else []
        for header, fn in columns:
            value = fn(obj, now)
            if header == "NAME" and name_prefix:
                value = f"{name_prefix}/{value}"
            cells.append(str(value))
        rows.append(cells)
    return headers, rows


def format_rows(headers: list[str], rows: list[list[str]], widths: list[int] | None = None,
                header: bool = True) -> str:
    """Columns padded to the widest cell, three spaces apart as kubectl's tabwriter does."""
    cells = ([headers] if header else []) + rows
    if widths is None:
        widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n"
                   for r in cells)


def table(kind: str, objects: list[dict], *, wide: bool = False, namespace_column: bool = False,
          name_prefix: str = "", header: bool = True, now: float | None = None,
          show_labels: bool = False) -> str:
    now = time.time() if now is None else now
    headers, rows = _headers_and_cells(kind, objects, wide, namespace_column, name_prefix, now,
                                       show_labels)
    return format_rows(headers, rows, header=header)


def name_of(kind_qualified: str, obj: dict) -> str:
    """-o name: pod/web, clusterrole.rbac.authorization.k8s.io/admin."""
    return f"{kind_qualified}/{_get(obj, 'metadata', 'name', default='')}"


# A node agent annotates its Node when its cluster API is node-local (no etcd): a user sees one
# node because the store holds one node, not because the others are gone.
NODE_LOCAL_NOTE = ("note: this cluster API is node-local (podnetd without --store etcd keeps the "
                   "cluster's objects on this node only); other nodes are not listed here")


def node_local_api(node: dict) -> bool:
    from ..kubelet.node_object import API_SCOPE
    return ((node.get("metadata") or {}).get("annotations") or {}).get(API_SCOPE) == "node-local"
