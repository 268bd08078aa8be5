"""Resource quantities for describe node: parsed with the runtime's exact Kubernetes parser,
added up, and printed back as kubectl prints a Quantity (100m, 2, 128Mi)."""
from decimal import ROUND_CEILING

from ..runtime.manifest import parse_quantity

BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
DECIMAL = (("E", 10**18), ("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3))


def value(text, resource: str) -> int:
    """cpu in millicores, anything else in whole units (rounded up as Kubernetes does); an
    unparsable value counts as 0 rather than failing a describe."""
    try:
        q = parse_quantity(str(text).strip())
    except ValueError:
        return 0
    if resource == "cpu":
        q *= 1000
    return int(q.to_integral_value(ROUND_CEILING))


def show(amount: int, resource: str) -> str:
    if resource == "cpu":
        return str(amount // 1000) if amount % 1000 == 0 else f"{amount}m"
    if amount == 0:
        return "0"
    for suffix, unit in BINARY + DECIMAL:
        if amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)


def percent(amount: int, of: int) -> str:
    return f"{int(amount / of * 100) if of else 0}%"


def pod_totals(pod: dict, kind: str) -> dict[str, int]:
    """A pod's requests or limits (kind) as the scheduler counts them: the sum over its
    containers, or the largest init container's if that is more, plus the pod overhead."""
    spec = pod.get("spec") or {}
    total: dict[str, int] = {}
    for c in spec.get("containers") or []:
        for res, q in (((c.get("resources") or {}).get(kind)) or {}).items():
            total[res] = total.get(res, 0) + value(q, res)
    for c in spec.get("initContainers") or []:
        for res, q in (((c.get("resources") or {}).get(kind)) or {}).items():
            total[res] = max(total.get(res, 0), value(q, res))
    for res, q in (spec.get("overhead") or {}).items():
        if res in total:
            total[res] += value(q, res)
    return total
