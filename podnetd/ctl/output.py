"""Tables by default, -o json|yaml for machines."""
import json
import sys
import time


def emit(rows: list[dict], columns: list[tuple[str, str]], fmt: str = "table", *, raw=None) -> None:
    """rows: dicts; columns: (HEADER, key) pairs for the table; raw: what json/yaml print
    (default: rows)."""
    data = rows if raw is None else raw
    if fmt == "json":
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif fmt == "yaml":
        import yaml
        yaml.safe_dump(data, sys.stdout, sort_keys=False, default_flow_style=False)
    else:
        sys.stdout.write(table(rows, columns))


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    cells = [[str(header) for header, _ in columns]]
    for row in rows:
        cells.append(["" if row.get(key) is None else str(row.get(key)) for _, key in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in cells)


def age(ts: float) -> str:
    """kubectl's AGE / LAST SEEN: 42s, 5m, 3h, 2d."""
    s = max(0, int(time.time() - ts))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"
