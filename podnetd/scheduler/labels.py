"""Label selectors as Kubernetes has them (k8s.io/apimachinery/pkg/labels and the node affinity
helpers), compiled once and matched many times:

- `parse(text)`: kubectl's `-l` syntax (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`,
  `!a`, `a>1`, `a<1`, comma-separated and ANDed);
- `from_label_selector(obj)`: a metav1.LabelSelector (matchLabels + matchExpressions);
- `node_selector(obj)`: a v1.NodeSelector (nodeSelectorTerms ORed, each term's matchExpressions
  and matchFields ANDed; Gt/Lt compare integers), as required node affinity uses it.

Selectors are immutable and hashable, so identical terms of many replicas collapse into one key.
"""
import dataclasses
import re
from typing import Mapping

from podnetd.runtime.manifest import DNS_SUBDOMAIN, LABEL_NAME, LABEL_VALUE

IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GT, LT = "In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"
# `=`/`==` are In with one value and `!=` NotIn with one value, as labels.Requirement treats them
LABEL_SELECTOR_OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)
NODE_SELECTOR_OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GT, LT)
MAX_SELECTOR_CHARS = 64 * 1024


class SelectorError(ValueError):
    """A selector that cannot be parsed or is not valid; the message says where and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str
    values: tuple = ()          # sorted, without duplicates

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == IN:
            v = labels.get(self.key)
            return v is not None and v in self.values
        if op == NOT_IN:
            return self.key not in labels or labels[self.key] not in self.values
        if op == EXISTS:
            return self.key in labels
        if op == DOES_NOT_EXIST:
            return self.key not in labels
        # Gt / Lt: both sides must be integers (strconv.ParseInt), else no match
        have = _int(labels.get(self.key))
        if have is None:
            return False
        want = int(self.values[0])
        return have > want if op == GT else have < want

    def __str__(self) -> str:
        if self.op == EXISTS:
            return self.key
        if self.op == DOES_NOT_EXIST:
            return "!" + self.key
        if self.op in (GT, LT):
            return f"{self.key}{'>' if self.op == GT else '<'}{self.values[0]}"
        if len(self.values) == 1:
            return f"{self.key}{'=' if self.op == IN else '!='}{self.values[0]}"
        return f"{self.key} {'in' if self.op == IN else 'notin'} ({','.join(self.values)})"


def _int(text) -> int | None:
    if not isinstance(text, str) or not re.fullmatch(r"[+-]?[0-9]{1,19}", text):
        return None
    n = int(text)
    return n if -2**63 <= n < 2**63 else None


@dataclasses.dataclass(frozen=True, slots=True)
class Selector:
    """Requirements ANDed. `nothing` is the selector of a nil metav1.LabelSelector: it matches no
    object (an empty one, with no requirement, matches every object)."""
    requirements: tuple = ()
    nothing: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.nothing:
            return False
        for r in self.requirements:
            if not r.matches(labels):
                return False
        return True

    def empty(self) -> bool:
        return not self.requirements and not self.nothing

    def __str__(self) -> str:
        return "<none>" if self.nothing else ",".join(map(str, self.requirements))


EVERYTHING = Selector()
NOTHING = Selector(nothing=True)


def _check_key(key, where: str) -> str:
    if not isinstance(key, str) or not key:
        raise SelectorError(f"{where}: key must be a non-empty string")
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.fullmatch(prefix)):
        raise SelectorError(f"{where}: invalid label key {key!r}: prefix part must be a DNS "
                            "subdomain (at most 253 characters)")
    if len(name) > 63 or not LABEL_NAME.fullmatch(name):
        raise SelectorError(f"{where}: invalid label key {key!r}: name part must consist of "
                            "alphanumeric characters, '-', '_' or '.', and must start and end "
                            "with an alphanumeric character (at most 63)")
    return key


def _check_value(value, where: str) -> str:
    if not isinstance(value, str):
        raise SelectorError(f"{where}: value must be a string, got {type(value).__name__}")
    if len(value) > 63 or not LABEL_VALUE.fullmatch(value):
        raise SelectorError(f"{where}: invalid label value {value!r}: a valid label must be an "
                            "empty string or consist of alphanumeric characters, '-', '_' or "
                            "'.', and must start and end with an alphanumeric character "
                            "(at most 63)")
    return value


def requirement(key, op: str, values, where: str = "selector",
                operators: tuple = NODE_SELECTOR_OPERATORS) -> Requirement:
    """A checked requirement (labels.NewRequirement's rules)."""
    _check_key(key, where)
    if op not in operators:
        raise SelectorError(f"{where}: operator {op!r} is not one of "
                            + ", ".join(operators))
    if values is None:
        values = []
    if not isinstance(values, (list, tuple)):
        raise SelectorError(f"{where}: values must be a list of strings")
    if op in (IN, NOT_IN) and not values:
        raise SelectorError(f"{where}: values: Required value: must be specified when "
                            "`operator` is 'In' or 'NotIn'")
    if op in (EXISTS, DOES_NOT_EXIST) and values:
        raise SelectorError(f"{where}: values: Forbidden: may not be specified when "
                            "`operator` is 'Exists' or 'DoesNotExist'")
    if op in (GT, LT):
        if len(values) != 1 or _int(values[0]) is None:
            raise SelectorError(f"{where}: values: for 'Gt', 'Lt' operators, exactly one "
                                "integer value is required")
        return Requirement(key, op, (values[0],))
    for v in values:
        _check_value(v, where)
    return Requirement(key, op, tuple(sorted(set(values))))


# -- kubectl's -l syntax -------------------------------------------------------------------

# identifiers run up to whitespace or one of the operator characters (labels' lexer)
_TOKEN = re.compile(r"\s*(?:(?P<op>==|!=|=|!|\(|\)|,|>|<)|(?P<id>[^\s=!(),<>]+))")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while True:
        m = _TOKEN.match(text, pos)
        if not m:
            if text[pos:].strip():
                raise SelectorError(f"unable to parse requirement: unexpected {text[pos:]!r}")
            out.append(("end", "", len(text)))
            return out
        group = "op" if m.group("op") else "id"
        lit, start = m.group(group), m.start(group)
        kind = lit if group == "id" and lit in ("in", "notin") else group
        out.append((kind, lit, start))
        pos = m.end()


def parse(text: str) -> Selector:
    """kubectl's label selector syntax, or SelectorError naming what was found where."""
    if not isinstance(text, str):
        raise SelectorError("a selector must be a string")
    if len(text) > MAX_SELECTOR_CHARS:
        raise SelectorError(f"a selector is at most {MAX_SELECTOR_CHARS} characters")
    toks = _tokens(text)
    i = 0

    def fail(expected: str):
        kind, lit, pos = toks[i]
        found = lit if kind != "end" else ""
        raise SelectorError(f"unable to parse requirement: found {found!r} at position {pos}, "
                            f"expected: {expected}")

    def where() -> str:
        return f"{text!r}"

    if toks[0][0] == "end":
        return EVERYTHING
    reqs = []
    while True:
        kind, lit, _ = toks[i]
        if kind == "op" and lit == "!":
            i += 1
            if toks[i][0] != "id":
                fail("identifier after '!'")
            reqs.append(requirement(toks[i][1], DOES_NOT_EXIST, [], where()))
            i += 1
        elif kind == "id":
            key = lit
            i += 1
            kind, lit, _ = toks[i]
            if kind == "end" or (kind == "op" and lit == ","):
                reqs.append(requirement(key, EXISTS, [], where()))
            elif kind == "op" and lit in ("=", "==", "!="):
                i += 1
                vk, vl, _ = toks[i]
                if vk == "id":
                    value = vl
                    i += 1
                elif vk == "end" or (vk == "op" and vl == ","):
                    value = ""           # `a=` selects the empty value
                else:
                    fail("identifier")
                reqs.append(requirement(key, IN if lit != "!=" else NOT_IN, [value], where()))
            elif kind == "op" and lit in (">", "<"):
                i += 1
                if toks[i][0] != "id":
                    fail("integer")
                reqs.append(requirement(key, GT if lit == ">" else LT, [toks[i][1]], where()))
                i += 1
            elif kind in ("in", "notin"):
                i += 1
                if toks[i][:2] != ("op", "("):
                    fail("'('")
                i += 1
                values = []
                while True:
                    vk, vl, _ = toks[i]
                    if vk == "id":
                        values.append(vl)
                        i += 1
                        vk, vl, _ = toks[i]
                    elif vk == "op" and vl in (",", ")"):
                        values.append("")    # `a in (x,)` / `a in ()` hold the empty value
                    else:
                        fail("identifier or ')'")
                    if (vk, vl) == ("op", ")"):
                        i += 1
                        break
                    if (vk, vl) != ("op", ","):
                        fail("',' or ')'")
                    i += 1
                reqs.append(requirement(key, IN if kind == "in" else NOT_IN, values, where()))
            else:
                fail("'=', '!=', '==', 'in', 'notin', '>', '<', ',' or the end")
        else:
            fail("'!' or identifier")
        kind, lit, _ = toks[i]
        if kind == "end":
            break
        if (kind, lit) != ("op", ","):
            fail("','")
        i += 1
    return Selector(tuple(sorted(reqs, key=lambda r: (r.key, r.op, r.values))))


# -- metav1.LabelSelector --------------------------------------------------------------------

def from_label_selector(obj, path: str = "labelSelector") -> Selector:
    """metav1.LabelSelectorAsSelector: None matches nothing, {} everything."""
    if obj is None:
        return NOTHING
    if not isinstance(obj, dict):
        raise SelectorError(f"{path}: must be an object")
    reqs = []
    labels = obj.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise SelectorError(f"{path}.matchLabels: must be a map of strings")
    for k, v in labels.items():
        reqs.append(requirement(k, IN, [v], f"{path}.matchLabels", LABEL_SELECTOR_OPERATORS))
    exprs = obj.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise SelectorError(f"{path}.matchExpressions: must be a list")
    for i, e in enumerate(exprs):
        where = f"{path}.matchExpressions[{i}]"
        if not isinstance(e, dict):
            raise SelectorError(f"{where}: must be an object")
        reqs.append(requirement(e.get("key"), e.get("operator"), e.get("values"), where,
                                LABEL_SELECTOR_OPERATORS))
    return Selector(tuple(sorted(set(reqs), key=lambda r: (r.key, r.op, r.values))))


# -- v1.NodeSelector (required node affinity) --------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class NodeSelectorTerm:
    labels: Selector
    fields: Selector            # over {"metadata.name": node name}

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if not self.labels.requirements and not self.fields.requirements:
            return False            # an empty term matches no node
        return self.labels.matches(labels) and (
            not self.fields.requirements or self.fields.matches({"metadata.name": name}))


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSelector:
    terms: tuple                 # of NodeSelectorTerm | None (a term that is not valid)

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        for t in self.terms:
            if t is not None and t.matches(name, labels):
                return True
        return False


def node_selector_term(obj, path: str = "nodeSelectorTerm") -> NodeSelectorTerm:
    if not isinstance(obj, dict):
        raise SelectorError(f"{path}: must be an object")
    out = {}
    for field in ("matchExpressions", "matchFields"):
        exprs = obj.get(field) or []
        if not isinstance(exprs, list):
            raise SelectorError(f"{path}.{field}: must be a list")
        reqs = []
        for i, e in enumerate(exprs):
            where = f"{path}.{field}[{i}]"
            if not isinstance(e, dict):
                raise SelectorError(f"{where}: must be an object")
            if field == "matchFields":
                if e.get("key") != "metadata.name":
                    raise SelectorError(f"{where}.key: Invalid value: {e.get('key')!r}: not a "
                                        "valid field selector key (only metadata.name)")
                if e.get("operator") not in (IN, NOT_IN) or len(e.get("values") or []) != 1:
                    raise SelectorError(f"{where}: must be 'In' or 'NotIn' with exactly one "
                                        "value")
                reqs.append(Requirement("metadata.name", e["operator"], (str(e["values"][0]),)))
            else:
                reqs.append(requirement(e.get("key"), e.get("operator"), e.get("values"), where))
        out[field] = Selector(tuple(reqs))
    return NodeSelectorTerm(out["matchExpressions"], out["matchFields"])


def node_selector(obj, path: str = "nodeSelector") -> NodeSelector:
    """A v1.NodeSelector. As kube-scheduler (nodeaffinity.NewLazyErrorNodeSelector), a term that
    is not valid matches no node instead of failing the others; a selector that is not an object
    or has no term list raises SelectorError."""
    if not isinstance(obj, dict) or not isinstance(obj.get("nodeSelectorTerms") or [], list):
        raise SelectorError(f"{path}: must be an object with a list nodeSelectorTerms")
    terms = []
    for i, t in enumerate(obj.get("nodeSelectorTerms") or []):
        try:
            terms.append(node_selector_term(t, f"{path}.nodeSelectorTerms[{i}]"))
        except SelectorError:
            terms.append(None)
    return NodeSelector(tuple(terms))
