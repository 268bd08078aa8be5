"""describe node: conditions, addresses, capacity and allocatable, system info, the pods that
run there with their requests and limits, what they add up to, and events."""
import time

from . import printers, quantity
from .apiclient import ApiError
from .describe import columns, events_of, field, mapping, when
from .resources import Kind
from .session import Session, meta

LEASE_NAMESPACE = "kube-node-lease"
SYSTEM_INFO = (("machineID", "Machine ID"), ("systemUUID", "System UUID"),
               ("bootID", "Boot ID"), ("kernelVersion", "Kernel Version"),
               ("osImage", "OS Image"), ("operatingSystem", "Operating System"),
               ("architecture", "Architecture"),
               ("containerRuntimeVersion", "Container Runtime Version"),
               ("kubeletVersion", "Kubelet Version"), ("kubeProxyVersion", "Kube-Proxy Version"))


def _resource_list(title: str, values: dict | None) -> list[str]:
    if not values:
        return []
    width = max(len(k) for k in values) + 3
    return [f"{title}:"] + [f"  {k + ':':<{width}}{v}" for k, v in values.items()]


def _taints(node: dict) -> list[str]:
    texts = []
    for t in (node.get("spec") or {}).get("taints") or []:
        text = t.get("key", "") + (f"={t['value']}" if t.get("value") else "")
        texts.append(f"{text}:{t.get('effect', '')}")
    if not texts:
        return [field("Taints", "<none>")]
    return [field("Taints", texts[0])] + [" " * 20 + t for t in texts[1:]]


def _lease(s: Session, name: str) -> list[str]:
    try:
        lease = s.client.get("leases", LEASE_NAMESPACE, name)
    except ApiError:
        return []
    spec = lease.get("spec") or {}
    return ["Lease:", field("HolderIdentity", spec.get("holderIdentity", "<unset>"), 2, 19),
            field("AcquireTime", when(spec.get("acquireTime")), 2, 19),
            field("RenewTime", when(spec.get("renewTime")), 2, 19)]


def pods_table(pods: list[dict], allocatable: dict, now: float) -> tuple[list[str], dict, dict]:
    """Non-terminated Pods lines, and the requests and limits they add up to."""
    alloc = {r: quantity.value(allocatable.get(r, 0), r) for r in ("cpu", "memory")}
    rows = [["Namespace", "Name", "CPU Requests", "CPU Limits", "Memory Requests",
             "Memory Limits", "Age"]]
    requests: dict[str, int] = {}
    limits: dict[str, int] = {}
    for pod in pods:
        req, lim = quantity.pod_totals(pod, "requests"), quantity.pod_totals(pod, "limits")
        for res, v in req.items():
            requests[res] = requests.get(res, 0) + v
        for res, v in lim.items():
            limits[res] = limits.get(res, 0) + v
        cells = []
        for res in ("cpu", "memory"):
            for amounts in (req, lim):
                v = amounts.get(res, 0)
                cells.append(f"{quantity.show(v, res)} ({quantity.percent(v, alloc[res])})")
        rows.append([meta(pod, "namespace"), meta(pod, "name"), *cells,
                     printers.age(meta(pod, "creationTimestamp"), now)])
    return columns(rows), requests, limits


def allocated(requests: dict, limits: dict, allocatable: dict) -> list[str]:
    rows = [["Resource", "Requests", "Limits"]]
    for res in ["cpu", "memory"] + sorted((set(requests) | set(limits)) - {"cpu", "memory"}):
        of = quantity.value(allocatable.get(res, 0), res)
        req, lim = requests.get(res, 0), limits.get(res, 0)
        rows.append([res, f"{quantity.show(req, res)} ({quantity.percent(req, of)})",
                     f"{quantity.show(lim, res)} ({quantity.percent(lim, of)})"])
    return ["Allocated resources:", "  (Total limits may be over 100 percent, i.e., "
            "overcommitted.)"] + columns(rows)


def describe_node(s: Session, kind: Kind, node: dict) -> list[str]:
    name, spec, st = meta(node, "name"), node.get("spec") or {}, node.get("status") or {}
    now = time.time()
    out = [field("Name", name), field("Roles", printers.node_roles(node))]
    out += mapping("Labels", meta(node, "labels", None))
    out += mapping("Annotations", meta(node, "annotations", None))
    out.append(field("CreationTimestamp", when(meta(node, "creationTimestamp"))))
    out += _taints(node)
    out.append(field("Unschedulable", str(bool(spec.get("unschedulable"))).lower()))
    out += _lease(s, name)
    conditions = [c for c in st.get("conditions") or [] if isinstance(c, dict)]
    out.append("Conditions:")
    out += columns([["Type", "Status", "LastHeartbeatTime", "LastTransitionTime", "Reason",
                     "Message"]] + [[c.get("type", ""), c.get("status", ""),
                                     when(c.get("lastHeartbeatTime")),
                                     when(c.get("lastTransitionTime")), c.get("reason", ""),
                                     c.get("message", "")] for c in conditions])
    addresses = [a for a in st.get("addresses") or [] if isinstance(a, dict)]
    out += _resource_list("Addresses", {a.get("type", ""): a.get("address", "")
                                        for a in addresses}) or ["Addresses:"]
    out += _resource_list("Capacity", st.get("capacity"))
    out += _resource_list("Allocatable", st.get("allocatable"))
    info = st.get("nodeInfo") or {}
    if info:
        out.append("System Info:")
        out += [field(label, info.get(key, ""), 2, 29) for key, label in SYSTEM_INFO
                if key in info]
    out.append(field("PodCIDR", spec.get("podCIDR", ""), width=29))
    out.append(field("PodCIDRs", ",".join(spec.get("podCIDRs") or []), width=29))
    try:
        pods = s.client.list("pods", "", "", f"spec.nodeName={name}").get("items") or []
    except ApiError as e:
        out.append(f"Non-terminated Pods:  <unknown> ({e})")
        return out + events_of(s, node, kind)
    running = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded",
                                                                             "Failed")]
    allocatable = st.get("allocatable") or {}
    table, requests, limits = pods_table(running, allocatable, now)
    out.append(field("Non-terminated Pods", f"({len(running)} in total)", width=29))
    out += table
    out += allocated(requests, limits, allocatable)
    return out + events_of(s, node, kind)
