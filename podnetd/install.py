"""Lay out the podnet CNI plugin in a CNI bin dir.

<bin_dir>/podnet is the native build of the relay (cni-plugin/podnet.c, ~1 ms to start, jansson
linked statically when Debian's libjansson-dev has the archive) when a C compiler is present, which
`make deps` ensures. Without one it is a three-line launcher for `python3 -IS` (no site, no
environment) that imports the plugin from <bin_dir>/.podnet/, where it is byte-compiled at install
time: a script run directly is re-compiled on every exec, which would cost more than the rest of a
DEL. `--dev-launcher PATH` writes the same kind of launcher for the source tree's plugin: the
venv's `podnet` (a pip entry-point wrapper starts the full interpreter and site first, ~30 ms).
Usage: python -m podnetd.install [--cni-bin-dir /opt/cni/bin] [--portable [--python PATH]]
       python -m podnetd.install --dev-launcher .venv/bin/podnet
"""
import argparse
import os
import pathlib
import shutil
import subprocess
import sys

SOURCE = pathlib.Path(__file__).resolve().parent.parent / "cni-plugin" / "plugin.py"
NATIVE_SOURCE = SOURCE.with_name("podnet.c")
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2"]
# the test build (tests/test_cni_relay.py): any memory error or undefined behaviour aborts
SANITIZE_FLAGS = ["-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=all"]
LIB_DIR = ".podnet"
MODULE = "podnet_plugin"


def default_python() -> str:
    """Debian's python3 when present (it starts faster than a pyenv or venv build), else ours.
    The plugin needs only built-in modules, so any Python 3.10+ runs it."""
    system = "/usr/bin/python3"
    return system if os.access(system, os.X_OK) else sys.executable


def jansson_link_args(cc: str) -> list[str]:
    """libjansson.a when the toolchain has it (the plugin then needs no libjansson4 on the node
    and the loader one library less), else -ljansson."""
    found = subprocess.run([cc, "-print-file-name=libjansson.a"], capture_output=True, text=True)
    archive = found.stdout.strip()
    return [archive] if os.path.isabs(archive) and os.path.exists(archive) else ["-ljansson"]


def build_native(out_path: str, cc: str | None = None, *, sanitize: bool = False) -> str:
    """Compile cni-plugin/podnet.c to out_path (atomically); returns out_path. sanitize: the
    AddressSanitizer + UBSan build the tests fuzz."""
    cc = cc or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise FileNotFoundError("no C compiler (cc/gcc) found")
    flags = [*CFLAGS, *(SANITIZE_FLAGS if sanitize else [])]
    proc = subprocess.run([cc, *flags, "-o", out_path + ".tmp", str(NATIVE_SOURCE),
                           *jansson_link_args(cc)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compile {NATIVE_SOURCE} with {cc}: {proc.stderr.strip()}"
                           + ("\n(jansson.h missing? apt-get install libjansson-dev)"
                              if "jansson" in proc.stderr else ""))
    os.replace(out_path + ".tmp", out_path)
    return out_path


def install(bin_dir: str, *, native: bool | None = None, python: str | None = None) -> str:
    """Install the plugin as <bin_dir>/podnet: the native build unless native is False or (when
    None) no compiler is present."""
    os.makedirs(bin_dir, exist_ok=True)
    if native is None:
        native = bool(shutil.which("cc") or shutil.which("gcc"))
    if native:
        return build_native(os.path.join(bin_dir, "podnet"))
    return install_plugin(bin_dir, python)


def install_plugin(bin_dir: str, python: str | None = None, source: pathlib.Path = SOURCE) -> str:
    """The portable build: a `python3 -IS` launcher and the byte-compiled cni-plugin/plugin.py."""
    python = python or default_python()
    lib = os.path.join(bin_dir, LIB_DIR)
    os.makedirs(lib, exist_ok=True)
    module_path = os.path.join(lib, f"{MODULE}.py")
    shutil.copyfile(source, module_path + ".tmp")
    os.replace(module_path + ".tmp", module_path)
    # byte-compile with the interpreter that will run it (its magic number must match)
    subprocess.run([python, "-IS", "-c", f"import py_compile; py_compile.compile({module_path!r}, "
                    f"doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)"],
                   check=True)
    launcher = os.path.join(bin_dir, "podnet")
    with open(launcher + ".tmp", "w") as f:
        f.write(f"#!{python} -IS\nimport sys\nsys.path.insert(0, {lib!r})\n"
                f"from {MODULE} import main\nsys.exit(main())\n")
    os.chmod(launcher + ".tmp", 0o755)
    os.replace(launcher + ".tmp", launcher)
    return launcher


def install_dev_launcher(path: str, python: str | None = None, source: pathlib.Path = SOURCE) -> str:
    """A launcher at path that runs the source tree's plugin as the installed portable build
    runs its copy (`python3 -IS`, the module imported so its bytecode is cached)."""
    python = python or default_python()
    with open(path + ".tmp", "w") as f:
        f.write(f"#!{python} -IS\nimport sys\nsys.path.insert(0, {str(source.parent)!r})\n"
                f"from {source.stem} import main\nsys.exit(main())\n")
    os.chmod(path + ".tmp", 0o755)
    os.replace(path + ".tmp", path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(prog="podnetd.install")
    ap.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    ap.add_argument("--python", default=None, help="interpreter for the portable build")
    ap.add_argument("--portable", action="store_true", help="install the Python build, not the native one")
    ap.add_argument("--dev-launcher", metavar="PATH",
                    help="only write a launcher for this source tree's plugin at PATH (the venv's podnet)")
    args = ap.parse_args()
    if args.dev_launcher:
        print(install_dev_launcher(args.dev_launcher, args.python))
        return 0
    print(install(args.cni_bin_dir, native=False if args.portable else None, python=args.python))
    return 0


if __name__ == "__main__":
    sys.exit(main())
