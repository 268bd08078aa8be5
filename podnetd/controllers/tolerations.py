"""How long a pod may stay on a node with NoExecute taints (the taint manager's question), on
the scheduler's own toleration matching (podnetd/scheduler/objects.py), so both read
tolerations the same way."""
from ..scheduler.objects import tolerates, tolerations_of


def toleration_seconds(taints: list[dict], tolerations: list[dict]) -> float | None:
    """None: the pod may stay forever; else the shortest tolerationSeconds among the
    tolerations that match a NoExecute taint (0 or less, or an untolerated taint: now)."""
    parsed = tolerations_of({"tolerations": tolerations})
    shortest = None
    for taint in taints:
        if taint.get("effect") != "NoExecute":
            continue
        key, value = taint.get("key") or "", taint.get("value") or ""
        if not tolerates(parsed, key, value, "NoExecute"):
            return 0.0
        for tol in tolerations:
            if tolerates(tolerations_of({"tolerations": [tol]}), key, value, "NoExecute") \
                    and tol.get("tolerationSeconds") is not None:
                seconds = float(tol["tolerationSeconds"])
                shortest = seconds if shortest is None else min(shortest, seconds)
    return shortest
