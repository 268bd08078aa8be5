"""apply's merge: the live object, the configuration applied last time and the new one.

As `kubectl apply` (client side): fields of the new configuration replace the live ones, fields
the last configuration had and the new one dropped are removed, and everything else the live
object carries (status, defaults, spec.nodeName the scheduler set) is kept. Lists of named
mappings (containers, ports with names, env) merge element by element by name, as strategic
merge patch does for them; other lists are replaced whole. The last configuration lives in the
annotation kubectl uses.
"""
import copy
import json

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _named_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, dict) and isinstance(v.get("name"), str) for v in value)


def _merge_value(live, last, desired):
    if isinstance(desired, dict) and isinstance(live, dict):
        return merge(live, last if isinstance(last, dict) else {}, desired)
    if _named_list(desired) and _named_list(live):
        live_by = {v["name"]: v for v in live}
        last_by = {v["name"]: v for v in last} if _named_list(last) else {}
        return [merge(live_by[d["name"]], last_by.get(d["name"], {}), d)
                if d["name"] in live_by else copy.deepcopy(d) for d in desired]
    return copy.deepcopy(desired)


def merge(live: dict, last: dict, desired: dict) -> dict:
    out = copy.deepcopy(live)
    for key in last:
        if key not in desired:
            out.pop(key, None)
    for key, value in desired.items():
        out[key] = _merge_value(live.get(key), last.get(key), value)
    return out


def contains(live, desired) -> bool:
    """Whether live already carries every field of desired (as given: defaults the server added
    do not count as a difference)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v)
                                              for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(
            contains(a, b) for a, b in zip(live, desired))
    if isinstance(desired, (int, float)) and not isinstance(desired, bool) and \
            isinstance(live, (int, float)) and not isinstance(live, bool):
        return live == desired
    return type(live) is type(desired) and live == desired


def last_applied(obj: dict) -> dict:
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        doc = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def with_last_applied(desired: dict) -> dict:
    """The configuration as applied: itself, annotated with itself (without the annotation)."""
    clean = copy.deepcopy(desired)
    annotations = (clean.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(LAST_APPLIED, None)
        if not annotations:
            del clean["metadata"]["annotations"]
    out = copy.deepcopy(clean)
    meta = out.setdefault("metadata", {})
    meta.setdefault("annotations", {})[LAST_APPLIED] = json.dumps(
        clean, separators=(",", ":"), sort_keys=True)
    return out


def applied(live: dict, desired: dict) -> tuple[dict, bool]:
    """(the object to send, whether anything changes)."""
    target = with_last_applied(desired)
    last = last_applied(live)
    merged = merge(live, last, target)
    # a change: a field to set, or one the last configuration had that goes away now
    changed = not contains(live, target) or merged != merge(live, {}, target)
    meta = merged.setdefault("metadata", {})
    meta["resourceVersion"] = (live.get("metadata") or {}).get("resourceVersion", "")
    return merged, changed

