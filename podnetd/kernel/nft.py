"""nftables through `nft -f -`: the daemon generates whole tables and hands them over in one
atomic transaction, so a ruleset is always either the old one or the new one."""
import subprocess

from .errors import KernelError, NotFound

NFT = "nft"


def apply(ruleset: str, what: str = "apply ruleset") -> None:
    try:
        proc = subprocess.run([NFT, "-f", "-"], input=ruleset, capture_output=True, text=True,
                              timeout=30)
    except FileNotFoundError:
        raise KernelError(f"{what}: the nft command is not installed") from None
    except subprocess.TimeoutExpired:
        raise KernelError(f"{what}: nft timed out") from None
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split())[:400]
        raise KernelError(f"{what}: nft: {detail}")


def replace_table(family: str, name: str, body: str) -> None:
    """Create or replace table `family name` with body, atomically and idempotently (the
    add-then-delete makes the delete valid whether or not the table exists)."""
    apply(f"add table {family} {name}\ndelete table {family} {name}\ntable {family} {name} {{\n{body}\n}}\n",
          f"replace nft table {family} {name}")


def delete_table(family: str, name: str) -> bool:
    """Delete the table; False when it did not exist."""
    if not table_exists(family, name):
        return False
    try:
        apply(f"delete table {family} {name}\n", f"delete nft table {family} {name}")
    except KernelError as e:
        if not table_exists(family, name):
            return False
        raise e
    return True


def table_exists(family: str, name: str) -> bool:
    proc = subprocess.run([NFT, "list", "table", family, name], capture_output=True, text=True)
    return proc.returncode == 0


def list_table(family: str, name: str) -> str:
    proc = subprocess.run([NFT, "list", "table", family, name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise NotFound(f"list nft table {family} {name}: {proc.stderr.strip()}")
    return proc.stdout


def add_elements(family: str, table: str, set_name: str, elements: list[str]) -> None:
    if elements:
        apply(f"add element {family} {table} {set_name} {{ {', '.join(elements)} }}\n",
              f"add to nft set {family} {table} {set_name}")


def delete_elements(family: str, table: str, set_name: str, elements: list[str]) -> None:
    """Delete elements one statement each, in one batch; elements already gone are fine only if
    the whole batch fails because of them, so retry one by one then."""
    if not elements:
        return
    try:
        apply("".join(f"delete element {family} {table} {set_name} {{ {e} }}\n" for e in elements))
    except KernelError:
        for e in elements:
            try:
                apply(f"delete element {family} {table} {set_name} {{ {e} }}\n")
            except KernelError:
                pass  # already gone
