"""ClusterRole aggregation, as Kubernetes': a ClusterRole with an aggregationRule gets the rules
of every other ClusterRole its clusterRoleSelectors pick (the clusterrole-aggregation
controller, controllers/clusterrole_aggregation.py, writes them), so a label such as
rbac.authorization.k8s.io/aggregate-to-view: "true" on a new ClusterRole extends the built-in
view, edit and admin roles. Pure logic: validation, selection, the union of rules."""
from typing import Iterable

from . import selectors

AGGREGATE_TO = "rbac.authorization.k8s.io/aggregate-to-"


def validate(rule, path: str = "aggregationRule") -> list[str]:
    """Errors of an aggregationRule (None is fine: the role is not aggregated)."""
    if rule is None:
        return []
    if not isinstance(rule, dict):
        return [f"{path}: Invalid value: must be an object"]
    errors = [f"{path}.{k}: Invalid value: unknown field" for k in rule
              if k != "clusterRoleSelectors"]
    chosen = rule.get("clusterRoleSelectors")
    if chosen is None:
        return errors
    if not isinstance(chosen, list):
        return errors + [f"{path}.clusterRoleSelectors: Invalid value: must be a list"]
    for i, s in enumerate(chosen):
        where = f"{path}.clusterRoleSelectors[{i}]"
        if s is None:
            errors.append(f"{where}: Required value")
            continue
        try:
            selectors.from_label_selector(s, where)
        except selectors.SelectorError as e:
            errors.append(str(e))
    return errors


def selectors_of(role: dict) -> list[selectors.Selector] | None:
    """The role's parsed clusterRoleSelectors, or None when it is not aggregated (or its rule
    cannot be read: it was validated when written, so only a foreign value)."""
    rule = role.get("aggregationRule")
    if not isinstance(rule, dict):
        return None
    try:
        return [selectors.from_label_selector(s) for s in rule.get("clusterRoleSelectors") or []
                if s is not None]
    except selectors.SelectorError:
        return None


def aggregated_rules(role: dict, roles: Iterable[dict]) -> list[dict] | None:
    """The rules the controller gives an aggregated role: those of every other ClusterRole a
    selector picks, roles in name order, each rule once. None: role is not aggregated."""
    chosen = selectors_of(role)
    if chosen is None:
        return None
    name = (role.get("metadata") or {}).get("name")
    picked = sorted((r for r in roles
                     if (r.get("metadata") or {}).get("name") != name
                     and any(s.matches((r.get("metadata") or {}).get("labels") or {})
                             for s in chosen)),
                    key=lambda r: r["metadata"]["name"])
    out: list[dict] = []
    for r in picked:
        for rule in r.get("rules") or []:
            if isinstance(rule, dict) and rule not in out:
                out.append(rule)
    return out


__all__ = ["AGGREGATE_TO", "aggregated_rules", "selectors_of", "validate"]
