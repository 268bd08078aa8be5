"""podnetctl taint | cordon | uncordon | drain: a node's schedulability and its pods, as kubectl.

drain cordons the node, then deletes each of its pods with the pod's own grace period (or
--grace-period) and waits until they are gone. As kubectl does, it refuses, unless told: pods
no controller owns (--force: they are not recreated anywhere), DaemonSet pods (--ignore-daemonsets:
left running, the DaemonSet would put them back) and pods with emptyDir data
(--delete-emptydir-data). Mirror pods (a node's own `pod run` pods) are skipped: deleting the
mirror would not stop them.
"""
import datetime
import sys

from .apiclient import KubectlError
from .edit import LABEL_KEY, LABEL_VALUE, update_with_retry, wait_gone
from .resources import split_args
from .session import Session, meta

EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
MIRROR = "kubernetes.io/config.mirror"


# ---- taint


def parse_taint(spec: str) -> tuple[str, dict]:
    """("add"|"remove", taint): key=value:Effect, key:Effect, key-, key:Effect-."""
    removing = spec.endswith("-")
    body = spec[:-1] if removing else spec
    head, colon, effect = body.rpartition(":")
    if not colon:
        head, effect = body, ""
    key, eq, value = head.partition("=")
    valid = LABEL_KEY.fullmatch(key) and LABEL_VALUE.fullmatch(value) and \
        (effect in EFFECTS or (removing and not effect))
    if not valid or (removing and eq):
        raise KubectlError(f"invalid taint spec: {spec}, unknown taint effect or bad format "
                           f"(KEY=VALUE:EFFECT, KEY:EFFECT, KEY- or KEY:EFFECT-; effects "
                           f"{', '.join(EFFECTS)})")
    taint = {"key": key, "effect": effect}
    if value:
        taint["value"] = value
    return ("remove" if removing else "add"), taint


def retaint(node: dict, add: list[dict], remove: list[dict], overwrite: bool) -> bool:
    spec = node.setdefault("spec", {})
    taints = list(spec.get("taints") or [])
    before = [dict(t) for t in taints]
    for r in remove:
        kept = [t for t in taints if not (t.get("key") == r["key"] and
                                          (not r["effect"] or t.get("effect") == r["effect"]))]
        if len(kept) == len(taints):
            raise KubectlError(f'taint "{r["key"]}' + (f':{r["effect"]}' if r["effect"] else "")
                               + '" not found')
        taints = kept
    for a in add:
        same = [t for t in taints if t.get("key") == a["key"] and t.get("effect") == a["effect"]]
        if same and not overwrite:
            raise KubectlError(f"node {meta(node, 'name')} already has {a['key']} taint(s) with "
                               f"same effect(s) and --overwrite is false")
        taints = [t for t in taints if t not in same]
        if a["effect"] == "NoExecute":
            a = dict(a, timeAdded=datetime.datetime.now(datetime.timezone.utc)
                     .strftime("%Y-%m-%dT%H:%M:%SZ"))
        taints.append(a)
    if taints:
        spec["taints"] = taints
    else:
        spec.pop("taints", None)
    return taints != before


def cmd_taint(args) -> int:
    s = Session(args)
    items = list(args.args)
    at = next((i for i, a in enumerate(items) if ":" in a or "=" in a or a.endswith("-")),
              len(items))
    targets, specs = items[:at], items[at:]
    if not specs:
        raise KubectlError("at least one taint update is required")
    parsed = [parse_taint(spec) for spec in specs]
    add = [t for op, t in parsed if op == "add"]
    remove = [t for op, t in parsed if op == "remove"]
    for kind, names in split_args(s.kinds, targets):
        if kind.kind != "Node":
            raise KubectlError(f"taints apply to nodes, not {kind.resource}")
        for name in names or []:
            obj, changed = update_with_retry(s, kind, "", name,
                                             lambda n: retaint(n, add, remove, args.overwrite))
            print(f"node/{name} {'untainted' if remove and not add else 'tainted'}"
                  if changed else f"node/{name} not tainted")
    return 0


# ---- cordon, uncordon


def set_schedulable(s: Session, name: str, cordon: bool) -> str:
    kind = s.kinds.lookup("nodes")

    def change(node: dict) -> bool:
        if bool((node.get("spec") or {}).get("unschedulable")) == cordon:
            return False
        spec = node.setdefault("spec", {})
        if cordon:
            spec["unschedulable"] = True
        else:
            spec.pop("unschedulable", None)
        return True

    _, changed = update_with_retry(s, kind, "", name, change)
    word = "cordoned" if cordon else "uncordoned"
    return f"node/{name} {word}" if changed else f"node/{name} already {word}"


def _names(arg: str) -> str:
    return arg.split("/", 1)[1] if arg.startswith(("node/", "nodes/", "no/")) else arg


def cmd_cordon(args) -> int:
    s = Session(args)
    print(set_schedulable(s, _names(args.node), True))
    return 0


def cmd_uncordon(args) -> int:
    s = Session(args)
    print(set_schedulable(s, _names(args.node), False))
    return 0


# ---- drain


def _controller(pod: dict) -> dict | None:
    for ref in meta(pod, "ownerReferences", None) or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return ref
    return None


Refs = dict[str, list[str]]


def classify(pods: list[dict], force: bool, ignore_daemonsets: bool,
             delete_emptydir_data: bool) -> tuple[list[dict], Refs, Refs]:
    """(pods to delete, {fatal message: [ns/name]}, {warning: [ns/name]}), as kubectl's filters."""
    delete, fatal, warn = [], {}, {}
    for pod in pods:
        ref = f"{meta(pod, 'namespace')}/{meta(pod, 'name')}"
        if MIRROR in (meta(pod, "annotations", None) or {}):
            continue
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        owner = _controller(pod)
        if owner and owner.get("kind") == "DaemonSet" and not finished:
            if ignore_daemonsets:
                warn.setdefault("ignoring DaemonSet-managed Pods", []).append(ref)
            else:
                fatal.setdefault("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets "
                                 "to ignore)", []).append(ref)
            continue
        problem = False
        if owner is None and not finished:
            if force:
                warn.setdefault("deleting Pods that declare no controller", []).append(ref)
            else:
                fatal.setdefault("cannot delete Pods declare no controller (use --force to "
                                 "override)", []).append(ref)
                problem = True
        volumes = (pod.get("spec") or {}).get("volumes") or []
        if not finished and any(isinstance(v, dict) and "emptyDir" in v for v in volumes):
            if delete_emptydir_data:
                warn.setdefault("deleting Pods with local storage", []).append(ref)
            else:
                fatal.setdefault("cannot delete Pods with local storage (use "
                                 "--delete-emptydir-data to override)", []).append(ref)
                problem = True
        if not problem:
            delete.append(pod)
    return delete, fatal, warn


def cmd_drain(args) -> int:
    s = Session(args)
    name = _names(args.node)
    print(set_schedulable(s, name, True))
    sys.stdout.flush()
    pods_kind = s.kinds.lookup("pods")
    pods = s.client.list("pods", "", args.pod_selector or "",
                         f"spec.nodeName={name}").get("items") or []
    delete, fatal, warn = classify(pods, args.force, args.ignore_daemonsets,
                                   args.delete_emptydir_data)
    if fatal:
        # kubectl's words, its missing space after "error:" and its brackets around several
        errors = [f"{m}: {', '.join(refs)}" for m, refs in fatal.items()]
        joined = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
        sys.stderr.write(f'error: unable to drain node "{name}" due to error:{joined}, '
                         f"continuing command...\nThere are pending nodes to be drained:\n"
                         f" {name}\n{joined}\n")
        return 1
    if warn:
        sys.stderr.write("Warning: " + "; ".join(f"{m}: {', '.join(r)}" for m, r in warn.items())
                         + "\n")
    grace = None if args.grace_period < 0 else float(args.grace_period)
    doomed = []
    for pod in delete:
        ns, pod_name = meta(pod, "namespace"), meta(pod, "name")
        print(f"evicting pod {ns}/{pod_name}")
        sys.stdout.flush()
        gone = s.client.delete("pods", ns, pod_name, grace_period=grace)
        doomed.append((ns, pod_name, meta(gone, "uid")))
    for ns, pod_name, uid in doomed:
        if not wait_gone(s, pods_kind, ns, pod_name, uid, args.timeout):
            sys.stderr.write(f'error: unable to drain node "{name}": timed out waiting for pod '
                             f'"{pod_name}" in namespace "{ns}" to be deleted\n')
            return 1
        print(f"pod/{pod_name} evicted")
        sys.stdout.flush()
    print(f"node/{name} drained")
    return 0


def register(sub, common) -> None:
    p = sub.add_parser("taint", parents=[common], help="add or remove node taints (kubectl taint)")
    p.add_argument("args", nargs="+", metavar="nodes NAME KEY=VALUE:EFFECT | KEY-")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_taint, positional_rest="args")
    for verb, fn, helptext in (("cordon", cmd_cordon, "mark a node unschedulable"),
                               ("uncordon", cmd_uncordon, "mark a node schedulable")):
        p = sub.add_parser(verb, parents=[common], help=helptext)
        p.add_argument("node", metavar="NODE")
        p.set_defaults(func=fn)
    p = sub.add_parser("drain", parents=[common],
                       help="cordon a node and evict its pods (kubectl drain)")
    p.add_argument("node", metavar="NODE")
    p.add_argument("--force", action="store_true", help="delete pods no controller owns too")
    p.add_argument("--ignore-daemonsets", action="store_true")
    p.add_argument("--delete-emptydir-data", action="store_true")
    p.add_argument("--grace-period", type=int, default=-1,
                   help="seconds each pod gets (-1: its own terminationGracePeriodSeconds)")
    p.add_argument("--timeout", type=float, default=0, help="seconds to wait (0: no limit)")
    p.add_argument("--pod-selector", help="only the pods this label selector picks")
    p.set_defaults(func=cmd_drain)
