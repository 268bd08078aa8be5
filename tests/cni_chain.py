"""A small CNI runtime for tests: runs a conflist the way libcni does.

- ADD runs the plugins in order; each gets the list's cniVersion and name, the previous
  plugin's result as prevResult, and a runtimeConfig holding only the capabilities it declares.
- CHECK runs them in order with the cached ADD result as prevResult; DEL runs them in reverse
  with the same prevResult (libcni caches the result for exactly this).
- Plugins are found by "type" in the CNI_PATH dirs and run inside the runtime's network
  namespace (portmap, bandwidth and the host side of everything act on the caller's netns).

Also builds the CNI_PATH dir a runtime needs: the podnet plugin as an executable file (what
`make install` writes) next to symlinks to the reference plugins.
"""
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
REFERENCE_DIR = "/usr/lib/cni"


def _version(v: str) -> tuple:
    return tuple(int(x) for x in v.split("."))


class ChainError(Exception):
    def __init__(self, plugin: str, command: str, rc: int, out: str, err: str):
        super().__init__(f"{command} {plugin}: exit {rc}: {out.strip()} {err.strip()}")
        self.plugin, self.command, self.rc, self.out, self.err = plugin, command, rc, out, err
        try:
            self.result = json.loads(out)
        except ValueError:
            self.result = None


def make_bin_dir(dest: str | os.PathLike, reference=("portmap", "tuning", "bandwidth")) -> str:
    """Fill `dest` with the podnet plugin, installed as `make install` does, and symlinks to
    the named reference plugins."""
    from podnetd.install import install
    dest = pathlib.Path(dest)
    install(str(dest))
    for name in reference:
        link = dest / name
        if not link.exists():
            link.symlink_to(os.path.join(REFERENCE_DIR, name))
    return str(dest)


class Chain:
    def __init__(self, conflist: dict, bin_dirs: list[str], runtime_netns: str | None = None,
                 timeout: float = 30):
        self.conflist = conflist
        self.bin_dirs = list(bin_dirs)
        self.runtime_netns = runtime_netns  # a name under /run/netns, or None for ours
        self.timeout = timeout
        self.cache: dict[tuple[str, str], dict] = {}  # (container id, ifname) -> ADD result

    @property
    def version(self) -> str:
        return self.conflist["cniVersion"]

    def _find(self, plugin_type: str) -> str:
        for d in self.bin_dirs:
            path = os.path.join(d, plugin_type)
            if os.access(path, os.X_OK):
                return path
        raise FileNotFoundError(f"plugin {plugin_type!r} not found in {self.bin_dirs}")

    def plugin_config(self, plugin: dict, prev: dict | None, capability_args: dict) -> dict:
        conf = dict(plugin)
        conf["cniVersion"] = self.conflist["cniVersion"]
        conf["name"] = self.conflist["name"]
        caps = {k: v for k, v in capability_args.items() if plugin.get("capabilities", {}).get(k)}
        if caps:
            conf["runtimeConfig"] = caps
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def exec(self, command: str, plugin: dict, conf: dict, container_id: str, netns: str,
             ifname: str, cni_args: str = "") -> str:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_ARGS": cni_args, "CNI_PATH": ":".join(self.bin_dirs)}
        argv = [self._find(plugin["type"])]
        if self.runtime_netns:
            argv = ["nsenter", f"--net=/run/netns/{self.runtime_netns}", *argv]
        proc = subprocess.run(argv, input=json.dumps(conf).encode(), env=env,
                              capture_output=True, timeout=self.timeout)
        out, err = proc.stdout.decode(), proc.stderr.decode()
        if proc.returncode != 0:
            raise ChainError(plugin["type"], command, proc.returncode, out, err)
        return out

    def add(self, container_id: str, netns: str, ifname: str = "eth0",
            capability_args: dict | None = None, cni_args: str = "") -> dict:
        prev = None
        for plugin in self.conflist["plugins"]:
            conf = self.plugin_config(plugin, prev, capability_args or {})
            out = self.exec("ADD", plugin, conf, container_id, netns, ifname, cni_args)
            prev = json.loads(out)
        self.cache[(container_id, ifname)] = {"result": prev, "caps": capability_args or {}}
        return prev

    def check(self, container_id: str, netns: str, ifname: str = "eth0", cni_args: str = "",
              known_bugs: dict[str, str] | None = None) -> list[ChainError]:
        """CHECK every plugin in order. known_bugs maps a plugin type to the text of an error
        it is known to give wrongly (a peer's upstream bug); such failures are returned
        instead of raised, and the chain goes on as if that plugin had passed."""
        cached = self.cache[(container_id, ifname)]
        tolerated = []
        for plugin in self.conflist["plugins"]:
            conf = self.plugin_config(plugin, cached["result"], cached["caps"])
            try:
                self.exec("CHECK", plugin, conf, container_id, netns, ifname, cni_args)
            except ChainError as e:
                bug = (known_bugs or {}).get(plugin["type"])
                if not bug or bug not in e.out:
                    raise
                tolerated.append(e)
        return tolerated

    def delete(self, container_id: str, netns: str, ifname: str = "eth0",
               capability_args: dict | None = None, cni_args: str = "") -> None:
        cached = self.cache.get((container_id, ifname), {"result": None, "caps": {}})
        caps = capability_args if capability_args is not None else cached["caps"]
        # libcni passes the cached result on DEL only from 0.4.0 on
        prev = cached["result"] if _version(self.version) >= (0, 4, 0) else None
        for plugin in reversed(self.conflist["plugins"]):
            conf = self.plugin_config(plugin, prev, caps)
            self.exec("DEL", plugin, conf, container_id, netns, ifname, cni_args)
        self.cache.pop((container_id, ifname), None)


# -- helpers for runtime-level tests ---------------------------------------------------------

def podnet_endpoints(daemon) -> list[dict]:
    """podnetd's attachments as `podnetctl endpoints -o json` shows them."""
    out = subprocess.run([sys.executable, "-m", "podnetd.ctl.main", "endpoints", "--socket",
                          daemon.socket, "-o", "json"], capture_output=True, text=True,
                         check=True, cwd=REPO)
    return json.loads(out.stdout)


def fetch(ns: str, url: str) -> str | None:
    """GET url from inside netns `ns`; the body, or None when it cannot connect."""
    code = ("import sys,urllib.request\n"
            "try: print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode(), end='')\n"
            "except OSError as e: print('ERR', e, file=sys.stderr); sys.exit(1)\n")
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", code, url],
                          capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def nat_rules(ns: str) -> str:
    """The nat table of netns `ns` (portmap's rules) as iptables-save prints it."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "iptables-save", "-t", "nat"],
                          capture_output=True, text=True, check=True).stdout
