"""nftables: the daemon generates whole tables and hands each over as one atomic transaction,
so a ruleset is always either the old one or the new one.

Commands go through libnftables in-process (ctypes; the library ships with the nft command):
~0.2 ms per command instead of ~8 ms for an `nft -f -` exec, which matters on the attach path.
A fresh context per call keeps it thread-safe and bound to the calling thread's netns. Without
the library, `nft -f -` is used. State is read back as nftables' JSON (`nft -j`), never by
parsing the text listing.
"""
import ctypes
import ctypes.util
import errno
import json
import subprocess

from .errors import KernelError, NotFound

NFT = "nft"
OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON in <nftables/libnftables.h>


def _load():
    for name in ("libnftables.so.1", ctypes.util.find_library("nftables")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        return lib
    return None


_lib = _load()


def _run(commands: str, json_output: bool = False) -> tuple[int, str, str]:
    """(rc, stdout, stderr) of running commands like `nft [-j] -f -` would."""
    if _lib is not None:
        ctx = _lib.nft_ctx_new(0)
        if not ctx:
            raise KernelError("nftables: cannot create a context")
        try:
            if json_output:
                _lib.nft_ctx_output_set_flags(ctx, OUTPUT_JSON)
            _lib.nft_ctx_buffer_output(ctx)
            _lib.nft_ctx_buffer_error(ctx)
            rc = _lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            out = (_lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            err = (_lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        finally:
            _lib.nft_ctx_free(ctx)
        return (0 if rc == 0 else 1), out, err
    try:
        proc = subprocess.run([NFT, *(["-j"] if json_output else []), "-f", "-"], input=commands, capture_output=True, text=True,
                              timeout=30)
    except FileNotFoundError:
        raise KernelError("nftables: neither libnftables nor the nft command is installed") from None
    except subprocess.TimeoutExpired:
        raise KernelError("nftables: nft timed out") from None
    return proc.returncode, proc.stdout, proc.stderr


def apply(ruleset: str, what: str = "apply ruleset", json_output: bool = False) -> str:
    rc, out, err = _run(ruleset, json_output)
    if rc != 0:
        first = next((line for line in err.splitlines() if line.startswith("Error")), err.strip())
        if "No such file or directory" in first:
            raise NotFound(f"{what}: nft: {first[:300]}", errno.ENOENT)
        raise KernelError(f"{what}: nft: {first[:300]}")
    return out


def replace_table(family: str, name: str, body: str) -> None:
    """Create or replace table `family name` with body, atomically and idempotently (the
    add-then-delete makes the delete valid whether or not the table exists)."""
    apply(f"add table {family} {name}\ndelete table {family} {name}\ntable {family} {name} {{\n{body}\n}}\n",
          f"replace nft table {family} {name}")


def table_exists(family: str, name: str) -> bool:
    try:
        list_table(family, name)
        return True
    except NotFound:
        return False


def list_table(family: str, name: str) -> list[dict]:
    """The table's objects as nftables' JSON gives them ({"table": ...}, {"set": ...},
    {"chain": ...}, {"rule": ...}), without the metainfo. NotFound when it does not exist."""
    what = f"list nft table {family} {name}"
    out = apply(f"list table {family} {name}\n", what, json_output=True)
    try:
        objects = json.loads(out)["nftables"]
    except (ValueError, KeyError, TypeError) as e:
        raise KernelError(f"{what}: unreadable JSON from nft: {e}") from None
    return [o for o in objects if isinstance(o, dict) and "metainfo" not in o]


def delete_table(family: str, name: str) -> bool:
    """Delete the table; False when it did not exist."""
    try:
        apply(f"delete table {family} {name}\n", f"delete nft table {family} {name}")
        return True
    except NotFound:
        return False


def add_elements(family: str, table: str, set_name: str, elements: list[str]) -> None:
    if elements:
        apply(f"add element {family} {table} {set_name} {{ {', '.join(elements)} }}\n",
              f"add to nft set {family} {table} {set_name}")


def delete_elements(family: str, table: str, set_name: str, elements: list[str]) -> None:
    """Delete elements; ones already gone are fine (then the rest go one by one)."""
    if not elements:
        return
    try:
        apply(f"delete element {family} {table} {set_name} {{ {', '.join(elements)} }}\n")
    except NotFound:
        for e in elements:
            try:
                apply(f"delete element {family} {table} {set_name} {{ {e} }}\n")
            except NotFound:
                pass


def add_elements_to_sets(family: str, table: str, elements: dict[str, list[str]]) -> None:
    """Add elements to several sets of one table in one transaction: {set name: elements}."""
    script = "".join(f"add element {family} {table} {name} {{ {', '.join(values)} }}\n"
                     for name, values in elements.items() if values)
    if script:
        apply(script, f"add to nft sets of {family} {table}")


def delete_elements_from_sets(family: str, table: str, elements: dict[str, list[str]]) -> None:
    """Delete elements from several sets of one table in one transaction (one kernel set
    synchronisation instead of one per set); if some were gone already, set by set."""
    script = "".join(f"delete element {family} {table} {name} {{ {', '.join(values)} }}\n"
                     for name, values in elements.items() if values)
    if not script:
        return
    try:
        apply(script, f"delete from nft sets of {family} {table}")
    except NotFound:
        for name, values in elements.items():
            delete_elements(family, table, name, values)
