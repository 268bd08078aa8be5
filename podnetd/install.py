"""Lay out the podnet CNI plugin in a CNI bin dir.

<bin_dir>/podnet is the native build of the relay (cni-plugin/podnet.c, ~1 ms to start, jansson
linked statically when Debian's libjansson-dev has the archive) when a C compiler is present, which
`make deps` ensures. Without one it is a three-line launcher for `python3 -IS` (no site, no
environment) that imports the plugin from <bin_dir>/.podnet/, where it is byte-compiled at install
time: a script run directly is re-compiled on every exec, which would cost more than the rest of a
DEL. `--dev-launcher PATH` writes the same kind of launcher for the source tree's plugin: the
venv's `podnet` (a pip entry-point wrapper starts the full interpreter and site first, ~30 ms).
With --cni-conf-dir it also lays down the default network configuration,
<conf_dir>/10-podnet.conflist (podnet, then portmap), unless a configuration of podnet's is
there already: its cniVersion is the highest that every chained plugin answers to VERSION (Debian
12's portmap stops at 1.0.0, and a plugin given a newer version fails every pod with "incompatible
CNI versions"). A chained reference plugin found only in a reference dir (/usr/lib/cni on Debian)
is linked into <bin_dir>, where runtimes look for it.
Usage: python -m podnetd.install [--cni-bin-dir /opt/cni/bin] [--portable [--python PATH]]
                                 [--cni-conf-dir /etc/cni/net.d [--reference-cni-dir /usr/lib/cni]]
       python -m podnetd.install --dev-launcher .venv/bin/podnet
"""
import argparse
import glob
import json
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


# --- the default network configuration ---------------------------------------------------------

CONFLIST_NAME = "10-podnet.conflist"
NETWORK_NAME = "podnet"
DEFAULT_RELAY_SOCKET = "/run/podnet/cni.sock"
CHAINED = ({"type": "portmap", "capabilities": {"portMappings": True}},)
REFERENCE_CNI_DIR = "/usr/lib/cni"


class ConflistError(Exception):
    pass


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def highest_common_version(supported: dict[str, list[str]]) -> str:
    """The highest CNI version that every plugin ({type: its supportedVersions}) supports."""
    common = None
    for versions in supported.values():
        usable = {v for v in versions if isinstance(v, str) and v.replace(".", "").isdigit()
                  and v.count(".") == 2}
        common = usable if common is None else common & usable
    if not common:
        raise ConflistError("no CNI version supported by every plugin: "
                            + "; ".join(f"{t}: {', '.join(v) or 'none'}" for t, v in supported.items()))
    return max(common, key=version_key)


def default_conflist(version: str, chained: list[dict], socket: str = DEFAULT_RELAY_SOCKET) -> dict:
    """The conflist `make install` writes: podnet's network, then the chained plugins."""
    return {"cniVersion": version, "name": NETWORK_NAME,
            "plugins": [{"type": "podnet", "socket": socket}, *chained]}


def is_podnets(config: dict) -> bool:
    """A network configuration (conflist or single .conf) that runs the podnet plugin."""
    plugins = config.get("plugins") if isinstance(config.get("plugins"), list) else [config]
    return any(isinstance(p, dict) and p.get("type") == "podnet" for p in plugins)


def plugin_versions(path: str) -> list[str]:
    """A plugin's supportedVersions, from its VERSION command."""
    try:
        proc = subprocess.run([path], input=b'{"cniVersion": "0.1.0"}',
                              env={"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                              capture_output=True, timeout=30)
        answer = json.loads(proc.stdout or b"null")
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        raise ConflistError(f"CNI VERSION of {path}: {e}") from e
    if proc.returncode != 0 or not isinstance(answer, dict) \
            or not isinstance(answer.get("supportedVersions"), list):
        raise ConflistError(f"CNI VERSION of {path}: exit {proc.returncode}, answer "
                            f"{proc.stdout[:200]!r} {proc.stderr[:200]!r}")
    return answer["supportedVersions"]


def find_plugin(plugin_type: str, dirs: list[str]) -> str | None:
    for d in dirs:
        path = os.path.join(d, plugin_type)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def existing_podnet_config(conf_dir: str) -> str | None:
    """A configuration file of podnet's already in conf_dir (one we wrote, or the admin's)."""
    for path in sorted(glob.glob(os.path.join(conf_dir, "*"))):
        if not path.endswith((".conflist", ".conf", ".json")) or not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as f:
                config = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and is_podnets(config):
            return path
    return None


def install_conflist(conf_dir: str, bin_dir: str, reference_dirs: list[str] | None = None,
                     socket: str = DEFAULT_RELAY_SOCKET) -> tuple[str, bool]:
    """Write conf_dir/10-podnet.conflist unless podnet is configured there already; returns
    (the path of podnet's configuration, whether it was written now)."""
    reference_dirs = [REFERENCE_CNI_DIR] if reference_dirs is None else reference_dirs
    found = existing_podnet_config(conf_dir)
    if found:
        return found, False
    path = os.path.join(conf_dir, CONFLIST_NAME)
    if os.path.lexists(path):
        raise ConflistError(f"{path} exists and is not a podnet network configuration: "
                            "move it away or configure podnet by hand (README)")
    podnet = find_plugin("podnet", [bin_dir])
    if podnet is None:
        raise ConflistError(f"no podnet plugin in {bin_dir}: install the plugin first")
    supported = {"podnet": plugin_versions(podnet)}
    chained, links = [], []
    for plugin in CHAINED:
        where = find_plugin(plugin["type"], [bin_dir, *reference_dirs])
        if where is None:
            print(f"podnetd.install: no {plugin['type']} plugin in {bin_dir} or "
                  f"{':'.join(reference_dirs)}; the conflist goes without it", file=sys.stderr)
            continue
        supported[plugin["type"]] = plugin_versions(where)
        if os.path.dirname(where) != os.path.normpath(bin_dir):
            links.append((where, os.path.join(bin_dir, plugin["type"])))
        chained.append(dict(plugin))
    conflist = default_conflist(highest_common_version(supported), chained, socket)
    for target, link in links:     # only once the conflist that needs them is settled
        os.symlink(target, link)
    os.makedirs(conf_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(conflist, f, indent=2)
        f.write("\n")
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)
    return path, True


def main() -> int:
    ap = argparse.ArgumentParser(prog="podnetd.install")
    ap.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    ap.add_argument("--python", default=None, help="interpreter for the portable build")
    ap.add_argument("--portable", action="store_true", help="install the Python build, not the native one")
    ap.add_argument("--dev-launcher", metavar="PATH",
                    help="only write a launcher for this source tree's plugin at PATH (the venv's podnet)")
    ap.add_argument("--cni-conf-dir", default=None,
                    help="also lay down DIR/10-podnet.conflist unless podnet is configured there")
    ap.add_argument("--reference-cni-dir", action="append", default=None, metavar="DIR",
                    help=f"where the chained reference plugins are (default {REFERENCE_CNI_DIR})")
    args = ap.parse_args()
    if args.dev_launcher:
        print(install_dev_launcher(args.dev_launcher, args.python))
        return 0
    print(install(args.cni_bin_dir, native=False if args.portable else None, python=args.python))
    if args.cni_conf_dir:
        try:
            path, written = install_conflist(args.cni_conf_dir, args.cni_bin_dir,
                                             args.reference_cni_dir)
        except (ConflistError, OSError) as e:
            print(f"podnetd.install: error: network configuration: {e}", file=sys.stderr)
            return 1
        print(path if written else f"{path} (kept: podnet's network is configured already)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
