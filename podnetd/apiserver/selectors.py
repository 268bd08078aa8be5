"""Label and field selectors, as Kubernetes reads them.

Label selectors in kubectl's `-l` syntax (`a=b,c!=d,e in (f,g),h notin (i),j,!k`) and as
metav1.LabelSelector (matchLabels + matchExpressions In/NotIn/Exists/DoesNotExist); field
selectors (`metadata.name=web,spec.nodeName!=n1`) over the fields each kind allows. Both parse
untrusted text: a bad selector is a SelectorError with the offending part, never a traceback.
"""
import dataclasses
import re

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
MAX_SELECTOR = 4096


class SelectorError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    op: str                       # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present        # "!"


@dataclasses.dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def empty(self) -> bool:
        return not self.requirements


EVERYTHING = Selector()


class _Nothing(Selector):
    def matches(self, labels) -> bool:
        return False


NOTHING = _Nothing()


def _check_key(key: str, where: str) -> str:
    if not _KEY.match(key):
        raise SelectorError(f"{where}: invalid label key {key!r}")
    return key


def _check_value(value: str, where: str) -> str:
    if not _VALUE.match(value):
        raise SelectorError(f"{where}: invalid label value {value!r}")
    return value


def _split_top(text: str) -> list[str]:
    """Split at commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > 1:
                raise SelectorError(f"{text!r}: nested parentheses")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"{text!r}: unbalanced parentheses")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SelectorError(f"{text!r}: unbalanced parentheses")
    parts.append(text[start:])
    return parts


_SET = re.compile(r"^\s*(\S+?)\s+(in|notin)\s*\((.*)\)\s*$")


def parse(text: str | None) -> Selector:
    """kubectl's -l syntax; an empty text selects everything."""
    text = (text or "").strip()
    if not text:
        return EVERYTHING
    if len(text) > MAX_SELECTOR:
        raise SelectorError(f"label selector longer than {MAX_SELECTOR} characters")
    out = []
    for part in _split_top(text):
        part = part.strip()
        if not part:
            raise SelectorError(f"{text!r}: empty requirement")
        m = _SET.match(part)
        if m:
            key, op, inner = m.groups()
            values = tuple(_check_value(v.strip(), part) for v in inner.split(","))
            out.append(Requirement(_check_key(key, part), op, values))
        elif part.startswith("!"):
            out.append(Requirement(_check_key(part[1:].strip(), part), "!"))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            out.append(Requirement(_check_key(key.strip(), part), "!=",
                                   (_check_value(value.strip(), part),)))
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            out.append(Requirement(_check_key(key.strip(), part), "=",
                                   (_check_value(value.strip(), part),)))
        else:
            out.append(Requirement(_check_key(part, part), "exists"))
    return Selector(tuple(out))


_EXPRESSION_OPS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


def from_label_selector(obj, path: str = "selector") -> Selector:
    """metav1.LabelSelector as a dict. Kubernetes: a null selector selects nothing, an empty one
    ({}) everything."""
    if obj is None:
        return NOTHING
    if not isinstance(obj, dict):
        raise SelectorError(f"{path}: must be an object")
    out = []
    labels = obj.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise SelectorError(f"{path}.matchLabels: must be an object")
    for key, value in labels.items():
        where = f"{path}.matchLabels"
        out.append(Requirement(_check_key(str(key), where), "=",
                               (_check_value(str(value), where),)))
    expressions = obj.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise SelectorError(f"{path}.matchExpressions: must be a list")
    for i, e in enumerate(expressions):
        where = f"{path}.matchExpressions[{i}]"
        if not isinstance(e, dict):
            raise SelectorError(f"{where}: must be an object")
        op = _EXPRESSION_OPS.get(e.get("operator"))
        if op is None:
            raise SelectorError(f"{where}.operator: Unsupported value: {e.get('operator')!r}: "
                                f"supported values: {', '.join(_EXPRESSION_OPS)}")
        values = e.get("values") or []
        if not isinstance(values, list):
            raise SelectorError(f"{where}.values: must be a list")
        if op in ("in", "notin") and not values:
            raise SelectorError(f"{where}.values: Required value: must be specified when "
                                f"`operator` is 'In' or 'NotIn'")
        if op in ("exists", "!") and values:
            raise SelectorError(f"{where}.values: Forbidden: may not be specified when "
                                f"`operator` is 'Exists' or 'DoesNotExist'")
        out.append(Requirement(_check_key(str(e.get("key", "")), where + ".key"), op,
                               tuple(_check_value(str(v), where + ".values") for v in values)))
    return Selector(tuple(out))


# -- field selectors ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FieldRequirement:
    path: str
    equal: bool
    value: str


@dataclasses.dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: dict) -> bool:
        return all((field_value(obj, r.path) == r.value) == r.equal for r in self.requirements)

    def value_of(self, path: str) -> str | None:
        """The value an equality requirement pins path to (the Node authorizer needs
        spec.nodeName=NAME), or None."""
        for r in self.requirements:
            if r.path == path and r.equal:
                return r.value
        return None


def field_value(obj: dict, path: str) -> str:
    cur = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_fields(text: str | None, allowed: frozenset[str]) -> FieldSelector:
    text = (text or "").strip()
    if not text:
        return FieldSelector()
    if len(text) > MAX_SELECTOR:
        raise SelectorError(f"field selector longer than {MAX_SELECTOR} characters")
    out = []
    for part in text.split(","):
        part = part.strip()
        if "!=" in part:
            path, value = part.split("!=", 1)
            equal = False
        elif "=" in part:
            path, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            equal = True
        else:
            raise SelectorError(f"invalid field selector {part!r}: expected FIELD=VALUE or "
                                "FIELD!=VALUE")
        path = path.strip()
        if path not in allowed:
            raise SelectorError(f'field label not supported: {path}')
        out.append(FieldRequirement(path, equal, value.strip()))
    return FieldSelector(tuple(out))
