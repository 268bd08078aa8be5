"""Field validation shared by the kinds: errors collected with their field paths, worded as
kube-apiserver words them (`spec.taints[0].effect: Unsupported value: "Sometimes": supported
values: "NoSchedule", "PreferNoSchedule", "NoExecute"`)."""
import json
import re

from ..runtime import manifest

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = manifest.DNS_SUBDOMAIN
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
MAX_STRING = 64 * 1024


class Errors:
    def __init__(self):
        self.items: list[str] = []

    def add(self, path: str, why: str) -> None:
        if len(self.items) < 20:   # a hostile object with 10^5 bad fields gets a bounded answer
            self.items.append(f"{path}: {why}")

    def required(self, path: str) -> None:
        self.add(path, "Required value")

    def __bool__(self) -> bool:
        return bool(self.items)


def show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def string(e: Errors, obj: dict, key: str, path: str, required=False, pattern=None,
           maxlen=MAX_STRING) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            e.required(f"{path}.{key}" if path else key)
        return None
    where = f"{path}.{key}" if path else key
    if not isinstance(value, str):
        e.add(where, f"Invalid value: {show(value)}: must be a string")
        return None
    if len(value) > maxlen:
        e.add(where, f"Too long: may not be more than {maxlen} bytes")
        return None
    if pattern is not None and not pattern.fullmatch(value):
        e.add(where, f"Invalid value: {show(value)}")
        return None
    return value


def integer(e: Errors, obj: dict, key: str, path: str, lo=None, hi=None, required=False):
    value = obj.get(key)
    where = f"{path}.{key}" if path else key
    if value is None:
        if required:
            e.required(where)
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        e.add(where, f"Invalid value: {show(value)}: must be an integer")
        return None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        e.add(where, f"Invalid value: {value}: must be between {lo} and {hi}, inclusive")
        return None
    return value


def enum(e: Errors, obj: dict, key: str, path: str, values: tuple, required=False):
    value = obj.get(key)
    where = f"{path}.{key}" if path else key
    if value is None:
        if required:
            e.required(where)
        return None
    if value not in values:
        e.add(where, f"Unsupported value: {show(value)}: supported values: "
                     + ", ".join(f'"{v}"' for v in values))
        return None
    return value


def mapping(e: Errors, obj: dict, key: str, path: str) -> dict:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        e.add(f"{path}.{key}" if path else key, f"Invalid value: {show(value)}: must be an object")
        return {}
    return value


def sequence(e: Errors, obj: dict, key: str, path: str, max_items=10000) -> list:
    value = obj.get(key)
    if value is None:
        return []
    where = f"{path}.{key}" if path else key
    if not isinstance(value, list):
        e.add(where, f"Invalid value: {show(value)}: must be a list")
        return []
    if len(value) > max_items:
        e.add(where, f"Too many: {len(value)}: must have at most {max_items} items")
        return []
    return value


def only(e: Errors, obj: dict, path: str, allowed: set) -> None:
    """Fields this server does not know are refused (as kubectl's strict field validation)."""
    for key in obj:
        if key not in allowed:
            e.add(f"{path}.{key}" if path else str(key), "unknown field")


def string_map(e: Errors, obj: dict, key: str, path: str, labels: bool) -> dict:
    value = obj.get(key)
    if value is None:
        return {}
    try:
        manifest.string_map(labels)(value, f"{path}.{key}")
    except manifest.ManifestError as err:
        e.add(err.path, err.why)
        return {}
    return value


def quantity(e: Errors, value, path: str) -> None:
    try:
        manifest.quantity(value, path)
    except manifest.ManifestError as err:
        e.add(err.path, err.why)


def timestamp(e: Errors, obj: dict, key: str, path: str) -> None:
    string(e, obj, key, path, pattern=RFC3339)
