"""Label selectors as the scheduler matches them (k8s.io/apimachinery/pkg/labels and the node
affinity helpers), compiled once and matched many times:

- `from_label_selector(obj)` / `parse(text)`: a metav1.LabelSelector / kubectl's `-l` text, read
  (and refused with the field path) by podnetd.apiserver.selectors, the API server's reader,
  then normalized here (`=` is In with one value, `!=` NotIn);
- `node_selector(obj)`: a v1.NodeSelector (nodeSelectorTerms ORed, each term's matchExpressions
  and matchFields ANDed; Gt/Lt compare integers), as required node affinity uses it.

Selectors are immutable and hashable, so identical terms of many replicas collapse into one key.
"""
import dataclasses
import re
from typing import Mapping

from podnetd.apiserver import selectors
from podnetd.runtime.manifest import DNS_SUBDOMAIN, LABEL_NAME, LABEL_VALUE

IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GT, LT = "In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"
# `=`/`==` are In with one value and `!=` NotIn with one value, as labels.Requirement treats them
LABEL_SELECTOR_OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)
NODE_SELECTOR_OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GT, LT)


# one error for every selector, whichever module read it
SelectorError = selectors.SelectorError


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
        raise SelectorError(f"{where}.operator: Unsupported value: {op!r}: supported values: "
                            + ", ".join(operators))
    if values is None:
        values = []
    if not isinstance(values, (list, tuple)):
        raise SelectorError(f"{where}.values: must be a list of strings")
    if op in (IN, NOT_IN) and not values:
        raise SelectorError(f"{where}.values: Required value: must be specified when "
                            "`operator` is 'In' or 'NotIn'")
    if op in (EXISTS, DOES_NOT_EXIST) and values:
        raise SelectorError(f"{where}.values: Forbidden: may not be specified when "
                            "`operator` is 'Exists' or 'DoesNotExist'")
    if op in (GT, LT):
        if len(values) != 1 or _int(values[0]) is None:
            raise SelectorError(f"{where}.values: for 'Gt', 'Lt' operators, exactly one "
                                "integer value is required")
        return Requirement(key, op, (values[0],))
    for v in values:
        _check_value(v, where)
    return Requirement(key, op, tuple(sorted(set(values))))


# -- metav1.LabelSelector (read by the API server's reader, compiled here) -----------------

_FROM_API = {"=": IN, "in": IN, "!=": NOT_IN, "notin": NOT_IN, "exists": EXISTS,
             "!": DOES_NOT_EXIST}


def compile_selector(api: selectors.Selector) -> Selector:
    """podnetd.apiserver.selectors' Selector (kubectl's `-l` text or a LabelSelector) in the
    scheduler's normalized, hashable form."""
    if api is selectors.NOTHING:
        return NOTHING
    reqs = {Requirement(r.key, _FROM_API[r.op], tuple(sorted(set(r.values))))
            for r in api.requirements}
    return Selector(tuple(sorted(reqs, key=lambda r: (r.key, r.op, r.values))))


def parse(text: str) -> Selector:
    """kubectl's `-l` syntax (podnetd.apiserver.selectors.parse)."""
    return compile_selector(selectors.parse(text))


def from_label_selector(obj, path: str = "labelSelector") -> Selector:
    """metav1.LabelSelectorAsSelector: None matches nothing, {} everything."""
    return compile_selector(selectors.from_label_selector(obj, path))


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
