"""describe pod: node, IP, containers with their state and restarts, conditions, events."""
import time

from . import printers
from .describe import columns, events_of, field, mapping, when
from .resources import Kind
from .session import Session, meta


def _state(name: str, state: dict | None, indent: int) -> list[str]:
    if not state:
        return [field(name, "Waiting", indent, width=indent + 16)] if name == "State" else []
    kind, body = next(iter(state.items()))
    body = body or {}
    out = [field(name, kind.capitalize(), indent, width=indent + 16)]
    sub = indent + 2
    if kind == "running":
        out.append(field("Started", when(body.get("startedAt")), sub, width=indent + 16))
    elif kind == "waiting":
        if body.get("reason"):
            out.append(field("Reason", body["reason"], sub, width=indent + 16))
        if body.get("message"):
            out.append(field("Message", body["message"], sub, width=indent + 16))
    elif kind == "terminated":
        for key, label in (("reason", "Reason"), ("message", "Message"), ("exitCode", "Exit Code"),
                           ("signal", "Signal")):
            if body.get(key) not in (None, ""):
                out.append(field(label, body[key], sub, width=indent + 16))
        out.append(field("Started", when(body.get("startedAt")), sub, width=indent + 16))
        out.append(field("Finished", when(body.get("finishedAt")), sub, width=indent + 16))
    return out


def _resources(title: str, values: dict | None) -> list[str]:
    if not values:
        return []
    width = max(len(k) for k in values) + 3
    return [f"    {title}:"] + [f"      {k + ':':<{width}}{v}" for k, v in values.items()]


def _container(spec: dict, status: dict | None) -> list[str]:
    w = 20
    status = status or {}
    out = [f"  {spec.get('name', '')}:"]
    out.append(field("Container ID", status.get("containerID", ""), 4, w))
    out.append(field("Image", spec.get("image", ""), 4, w))
    out.append(field("Image ID", status.get("imageID", ""), 4, w))
    ports = spec.get("ports") or []
    out.append(field("Port" + ("s" if len(ports) > 1 else ""), ", ".join(
        f"{p.get('containerPort')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>", 4, w))
    host = ", ".join(f"{p.get('hostPort', 0)}/{p.get('protocol', 'TCP')}" for p in ports)
    out.append(field("Host Port" + ("s" if len(ports) > 1 else ""), host or "<none>", 4, w))
    if spec.get("command"):
        out.append("    Command:")
        out += [f"      {c}" for c in spec["command"]]
    if spec.get("args"):
        out.append("    Args:")
        out += [f"      {a}" for a in spec["args"]]
    out += _state("State", status.get("state"), 4)
    out += _state("Last State", status.get("lastState"), 4)
    out.append(field("Ready", str(bool(status.get("ready"))), 4, w))
    out.append(field("Restart Count", status.get("restartCount", 0), 4, w))
    res = spec.get("resources") or {}
    out += _resources("Limits", res.get("limits"))
    out += _resources("Requests", res.get("requests"))
    env = spec.get("env") or []
    if not env:
        out.append(field("Environment", "<none>", 4, w))
    else:
        out.append("    Environment:")
        for e in env:
            value = e.get("value", "") if "value" in e else "<set from a reference>"
            out.append(f"      {e.get('name', '')}:  {value}")
    return out


def _containers(title: str, specs: list, statuses: list) -> list[str]:
    if not specs:
        return []
    by_name = {s.get("name"): s for s in statuses or [] if isinstance(s, dict)}
    out = [f"{title}:"]
    for spec in specs:
        out += _container(spec, by_name.get(spec.get("name")))
    return out


def _status(pod: dict) -> str:
    deleting = meta(pod, "deletionTimestamp")
    if deleting:
        left = printers.parse_time(deleting)
        lasts = printers.human_duration(max(0, time.time() - left)) if left else "?"
        return f"Terminating (lasts {lasts})"
    return (pod.get("status") or {}).get("phase", "Unknown")


def describe_pod(s: Session, kind: Kind, pod: dict) -> list[str]:
    spec, st = pod.get("spec") or {}, pod.get("status") or {}
    node = spec.get("nodeName")
    out = [field("Name", meta(pod, "name")), field("Namespace", meta(pod, "namespace")),
           field("Priority", spec.get("priority", 0))]
    if spec.get("priorityClassName"):
        out.append(field("Priority Class Name", spec["priorityClassName"]))
    host_ip = st.get("hostIP")
    out.append(field("Node", (f"{node}/{host_ip}" if host_ip else node) if node else "<none>"))
    out.append(field("Start Time", when(st.get("startTime")) if st.get("startTime") else None))
    out += mapping("Labels", meta(pod, "labels", None))
    out += mapping("Annotations", meta(pod, "annotations", None))
    out.append(field("Status", _status(pod)))
    if meta(pod, "deletionTimestamp"):
        out.append(field("Termination Grace Period",
                         f"{meta(pod, 'deletionGracePeriodSeconds', 0)}s"))
    if st.get("reason"):
        out.append(field("Reason", st["reason"]))
    if st.get("message"):
        out.append(field("Message", st["message"]))
    out.append(field("IP", st.get("podIP", "")))
    ips = [i.get("ip", "") for i in st.get("podIPs") or [] if isinstance(i, dict)]
    if ips:
        out.append("IPs:")
        out += [f"  IP:  {ip}" for ip in ips]
    else:
        out.append(field("IPs", "<none>"))
    for ref in meta(pod, "ownerReferences", None) or []:
        if ref.get("controller"):
            out.append(field("Controlled By", f"{ref.get('kind')}/{ref.get('name')}"))
    out += _containers("Init Containers", spec.get("initContainers"),
                       st.get("initContainerStatuses"))
    out += _containers("Containers", spec.get("containers"), st.get("containerStatuses"))
    conditions = [c for c in st.get("conditions") or [] if isinstance(c, dict)]
    if conditions:
        out.append("Conditions:")
        out += columns([["Type", "Status"]] + [[c.get("type", ""), c.get("status", "")]
                                              for c in conditions])
    volumes = spec.get("volumes") or []
    if volumes:
        out.append("Volumes:")
        for v in volumes:
            source = next((k for k in v if k != "name"), "")
            out += [f"  {v.get('name', '')}:", f"    Type:  {source}"]
    out += mapping("Node-Selectors", spec.get("nodeSelector"), width=W_SEL)
    tolerations = []
    for t in spec.get("tolerations") or []:
        text = t.get("key", "")
        if t.get("operator") == "Exists" and not text:
            text = "op=Exists"
        elif t.get("value"):
            text += f"={t['value']}"
        if t.get("effect"):
            text += f":{t['effect']}"
        if t.get("operator") == "Exists" and t.get("key"):
            text += " op=Exists"
        if t.get("tolerationSeconds") is not None:
            text += f" for {t['tolerationSeconds']}s"
        tolerations.append(text)
    out.append(field("Tolerations", tolerations[0] if tolerations else "<none>", width=W_SEL))
    out += [" " * W_SEL + t for t in tolerations[1:]]
    return out + events_of(s, pod, kind)


W_SEL = 28
