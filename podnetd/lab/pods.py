"""Pods in the lab: a network namespace attached through the real podnet CNI plugin, run as a
container runtime runs it (CNI_* environment, config on stdin, `python -I -S`)."""
import importlib.util
import json
import os
import subprocess
import sys

from ..config import cni_socket_for
from . import netops, state
from .lab import Lab, LabError

NETWORK = "podnet-lab"


def plugin_path() -> str:
    spec = importlib.util.find_spec("podnet_cni.plugin")
    if spec is None or not spec.origin:
        raise LabError("the podnet CNI plugin (podnet_cni.plugin) is not installed")
    return spec.origin


def cni(command: str, api_socket: str, container_id: str, netns: str, ifname: str = "eth0") -> dict:
    """One CNI call on the node whose podnetd serves api_socket (its CNI relay is next to it)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_PATH": "/usr/lib/cni"}
    config = {"cniVersion": "1.1.0", "name": NETWORK, "type": "podnet",
              "socket": cni_socket_for(api_socket)}
    proc = subprocess.run([sys.executable, "-I", "-S", plugin_path()], input=json.dumps(config),
                          env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        try:
            msg = json.loads(proc.stdout)
            detail = f"{msg.get('msg', '')}: {msg.get('details', '')}".strip(": ")
        except ValueError:
            detail = (proc.stdout + proc.stderr).strip()
        raise LabError(f"CNI {command} {container_id}: {detail}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def add_pod(lab: Lab, node: str, name: str | None = None) -> str:
    """Create pod `name` (default p<k>) on node; returns its lab-wide key '<node>/<name>'."""
    if node not in lab.st.nodes:
        raise LabError(f"no node {node!r} in lab {lab.st.name} (nodes: {', '.join(lab.node_names())})")
    with state.locked(lab.st.name, lab.st.root):
        if name is None:
            taken = {p.split("/")[1] for p in lab.st.pods if p.startswith(f"{node}/")}
            name = next(f"p{i}" for i in range(1, 10_000) if f"p{i}" not in taken)
        key = f"{node}/{name}"
        if key in lab.st.pods:
            raise LabError(f"pod {key} already exists")
        ns = f"{lab.st.name}-{node}-{name}"
        container_id = f"{lab.st.name}-{node}-{name}"
        lab.st.pods[key] = {"node": node, "netns": ns, "container_id": container_id, "address": None}
        lab.st.save()  # before the namespace exists, so `lab down` always finds it
        try:
            netops.netns_add(ns)
            result = cni("ADD", lab.socket(node), container_id, netops.ns_path(ns))
        except (netops.NetopsError, LabError) as e:
            netops.netns_del(ns)
            del lab.st.pods[key]
            lab.st.save()
            raise LabError(f"add pod {key}: {e}") from None
        lab.st.pods[key]["address"] = result["ips"][0]["address"].split("/")[0]
        lab.st.pods[key]["host_ifname"] = result["interfaces"][1]["name"]
        lab.st.save()
    return key


def del_pod(lab: Lab, key: str) -> None:
    with state.locked(lab.st.name, lab.st.root):
        pod = lab.st.pods.get(key)
        if pod is None:
            raise LabError(f"no pod {key!r} in lab {lab.st.name}")
        cni("DEL", lab.socket(pod["node"]), pod["container_id"], netops.ns_path(pod["netns"]))
        netops.netns_del(pod["netns"])
        del lab.st.pods[key]
        lab.st.save()


def pods(lab: Lab) -> dict[str, dict]:
    return dict(sorted(lab.st.pods.items(), key=lambda kv: (lab.st.nodes[kv[1]["node"]]["index"],
                                                            kv[0])))
