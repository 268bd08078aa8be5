"""A CNI client, libcni-style: load the network configuration list from the conf dir, run the
plugin chain against a pod's netns (ADD in order with prevResult, DEL in reverse with the cached
result), GC for CNI >= 1.1. Plugins run as asyncio subprocesses so that the event loop keeps
serving the podnet plugin's relayed calls meanwhile."""
import asyncio
import json
import os
import subprocess

from ..aio import within
from ..cni import version_tuple

CONF_EXTENSIONS = (".conflist", ".conf", ".json")


class CniClientError(Exception):
    pass


def load_conflist(conf_dir: str) -> dict:
    """The first valid configuration in lexical order (a .conf is wrapped into a list)."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(CONF_EXTENSIONS))
    except OSError as e:
        raise CniClientError(f"CNI config dir {conf_dir}: {e.strerror}") from None
    problems = []
    for name in names:
        path = os.path.join(conf_dir, name)
        try:
            with open(path) as f:
                conf = json.load(f)
        except (OSError, ValueError) as e:
            problems.append(f"{name}: {e}")
            continue
        if not isinstance(conf, dict):
            problems.append(f"{name}: not an object")
            continue
        if "plugins" not in conf:
            if not conf.get("type"):
                problems.append(f"{name}: no type")
                continue
            conf = {"cniVersion": conf.get("cniVersion", "0.4.0"), "name": conf.get("name", ""),
                    "plugins": [conf]}
        if not conf.get("plugins") or not all(isinstance(p, dict) and p.get("type")
                                              for p in conf["plugins"]):
            problems.append(f"{name}: plugins must be a non-empty list with types")
            continue
        if conf.get("disabled"):
            continue
        conf["_file"] = path
        return conf
    raise CniClientError(f"no CNI network configuration in {conf_dir}"
                         + (f" ({'; '.join(problems)})" if problems else ""))


def plugin_config(conflist: dict, plugin: dict, prev: dict | None, runtime_config: dict) -> dict:
    conf = dict(plugin)
    conf["cniVersion"] = conflist.get("cniVersion", "0.4.0")
    conf["name"] = conflist.get("name", "")
    caps = plugin.get("capabilities") or {}
    rc = {k: v for k, v in runtime_config.items() if caps.get(k)}
    if rc:
        conf["runtimeConfig"] = rc
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def find_plugin(bin_dirs: list[str], kind: str) -> str:
    for d in bin_dirs:
        path = os.path.join(d, kind)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CniClientError(f"CNI plugin {kind!r} not found in {':'.join(bin_dirs)}")


def pod_ip(result: dict) -> str:
    for ip in (result or {}).get("ips") or []:
        addr = ip.get("address", "")
        if addr and ip.get("version", "4") == "4" and ":" not in addr:
            return addr.split("/")[0]
    return ""


class CniClient:
    def __init__(self, conf_dir: str, bin_dirs: list[str], timeout: float = 60):
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        self.timeout = timeout

    async def _exec(self, command: str, conflist: dict, plugin: dict, prev: dict | None,
                    container_id: str, netns: str, ifname: str, args: str,
                    runtime_config: dict, extra: dict | None = None) -> dict:
        binary = find_plugin(self.bin_dirs, plugin["type"])
        conf = plugin_config(conflist, plugin, prev, runtime_config)
        if extra:
            conf.update(extra)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": ":".join(self.bin_dirs)}
        proc = await asyncio.create_subprocess_exec(
            binary, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env)
        try:
            out, err = await within(proc.communicate(json.dumps(conf).encode()),
                                              self.timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise CniClientError(f"CNI {command} {plugin['type']}: timed out") from None
        if proc.returncode != 0:
            try:
                body = json.loads(out)
                msg = f"{body.get('msg', '')} {body.get('details', '')}".strip()
            except ValueError:
                msg = (out or err).decode(errors="replace").strip()
            raise CniClientError(f"CNI {command} {plugin['type']}: exit {proc.returncode}: "
                                 f"{msg or err.decode(errors='replace').strip()}")
        if command not in ("ADD", "VERSION"):
            return {}
        try:
            result = json.loads(out)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise CniClientError(f"CNI {command} {plugin['type']}: result is not a JSON object: "
                                 f"{out[:200]!r}")
        return result

    async def add(self, container_id: str, netns: str, ifname: str, args: str,
                  runtime_config: dict) -> tuple[dict, dict]:
        """Run ADD through the chain; on any failure DEL what was added, in reverse.
        Returns (conflist used, final result): both are kept for DEL."""
        conflist = load_conflist(self.conf_dir)
        prev = None
        try:
            for plugin in conflist["plugins"]:
                prev = await self._exec("ADD", conflist, plugin, prev, container_id, netns,
                                        ifname, args, runtime_config)
        except BaseException:
            try:
                await self.delete(conflist, prev, container_id, netns, ifname, args,
                                  runtime_config)
            except CniClientError:
                pass
            raise
        return conflist, prev or {}

    async def delete(self, conflist: dict, result: dict | None, container_id: str, netns: str,
                     ifname: str, args: str, runtime_config: dict) -> None:
        errors = []
        for plugin in reversed(conflist["plugins"]):
            try:
                await self._exec("DEL", conflist, plugin, result or None, container_id, netns,
                                 ifname, args, runtime_config)
            except CniClientError as e:
                errors.append(str(e))
        if errors:
            raise CniClientError("; ".join(errors))

    async def supported_versions(self, conflist: dict, plugin: dict) -> list[str]:
        """The plugin's answer to VERSION (its supportedVersions)."""
        answer = await self._exec("VERSION", conflist, plugin, None, "", "", "", "", {})
        versions = answer.get("supportedVersions")
        if not isinstance(versions, list):
            raise CniClientError(f"CNI VERSION {plugin['type']}: no supportedVersions list")
        return [v for v in versions if isinstance(v, str)]

    async def gc(self, valid: list[tuple[str, str]]) -> list[str] | None:
        """CNI GC (spec 1.1): every plugin learns which attachments are still valid.

        None when the configuration predates GC (< 1.1: no plugin would know the command).
        Otherwise the plugins that were not asked because they do not support the
        configuration's version (Debian 12's portmap stops at 1.0.0), as "type (versions)"."""
        try:
            conflist = load_conflist(self.conf_dir)
        except CniClientError:
            return None
        version = conflist.get("cniVersion", "0")
        if version_tuple(version) < (1, 1):
            return None
        attachments = [{"containerID": c, "ifname": i} for c, i in valid]
        skipped = []
        for plugin in conflist["plugins"]:
            versions = await self.supported_versions(conflist, plugin)
            if version not in versions:
                skipped.append(f"{plugin['type']} (supports {', '.join(versions) or 'nothing'})")
                continue
            await self._exec("GC", conflist, plugin, None, "", "", "", "", {},
                             {"cni.dev/valid-attachments": attachments})
        return skipped
