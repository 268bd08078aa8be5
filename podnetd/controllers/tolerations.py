"""Taints and tolerations, as Kubernetes matches them (pure logic)."""


def tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    op = toleration.get("operator") or "Equal"
    key = toleration.get("key") or ""
    if not key:
        return op == "Exists"
    if key != taint.get("key"):
        return False
    if op == "Exists":
        return True
    return (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated(taints: list[dict], tolerations: list[dict], effects: tuple[str, ...]) -> list[dict]:
    return [t for t in taints if t.get("effect") in effects
            and not any(tolerates(tol, t) for tol in tolerations)]


def toleration_seconds(taints: list[dict], tolerations: list[dict]) -> float | None:
    """How long a pod may stay on a node with these NoExecute taints: None forever, else the
    shortest tolerationSeconds among the tolerations that match (0 or less: now)."""
    shortest = None
    for taint in taints:
        if taint.get("effect") != "NoExecute":
            continue
        matching = [tol for tol in tolerations if tolerates(tol, taint)]
        if not matching:
            return 0.0
        for tol in matching:
            seconds = tol.get("tolerationSeconds")
            if seconds is not None:
                shortest = float(seconds) if shortest is None else min(shortest, float(seconds))
    return shortest
