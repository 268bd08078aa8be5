#!/usr/bin/env python3
"""The Vagrant lab's certificates, made on the host (the Vagrantfile runs this whenever it is
loaded; python3 and the openssl CLI, nothing else): one CA, a node certificate per VM and the
lab's users, each VM given only its own files.

    python3 vagrant/pki.py DIR --nodes N --subnet 192.168.56 [--cluster podnet-vagrant]

DIR/ca/                 ca.crt, ca.key (stays on the host)
DIR/users/              admin (O=system:masters, as kubeadm's admin.conf) and alice (no group,
                        no RBAC binding: the suite's refused user)
DIR/nodeI/              synced to nodeI's /opt/podnet-pki: ca.crt, node.crt, node.key
                        (CN=system:node:nodeI, O=system:nodes, SANs IP:<its address>, DNS:nodeI,
                        the identity a kubelet has at kube-apiserver); node1's also has
                        config.yaml, the client config (kubectl's format, credentials embedded)
                        with a context for admin (current) and one for alice.

Idempotent: what exists is kept; a node certificate is made again when the node's address
changed (PODNET_SUBNET) and the client config when the node count did. The certificates come
from podnetd/lab/pki.py, the netns lab's, loaded by path so that the host needs none of
podnet's dependencies."""
import argparse
import base64
import fcntl
import importlib.util
import ipaddress
import json
import os
import pathlib
import shutil
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
API_PORT = 6443
ADMIN = ("admin", ("system:masters",))
USER = ("alice", ())


def _load_pki():
    spec = importlib.util.spec_from_file_location("podnet_lab_pki", REPO / "podnetd" / "lab" / "pki.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pki = _load_pki()


def node_ip(subnet: str, index: int) -> str:
    return f"{subnet}.{10 + index}"


def _read(path: pathlib.Path) -> str:
    return path.read_text() if path.exists() else ""


def _write(path: pathlib.Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _b64(path: pathlib.Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _yaml(value, indent: int = 0) -> str:
    """A small YAML emitter for the client config (dicts, lists, strings): every string is a
    JSON string, which YAML reads as a double-quoted scalar, so no value needs escaping rules
    of its own (and the host needs no PyYAML)."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines.append(_yaml(v, indent + 2))
            else:
                lines.append(f"{pad}{k}: {json.dumps(v) if v != {} else '{}'}")
    elif isinstance(value, list):
        for item in value:
            body = _yaml(item, indent + 2)
            lines.append(f"{pad}- {body.lstrip()}")
    else:
        lines.append(pad + json.dumps(value))
    return "\n".join(lines)


def client_config(cluster: str, servers: list[str], ca: pathlib.Path, users: pathlib.Path) -> str:
    """kubectl's format; `server` is node1's API, `servers` (podnetctl's extension) the others',
    tried in turn when one is down."""
    body = {"server": servers[0], "certificate-authority-data": _b64(ca)}
    if len(servers) > 1:
        body["servers"] = servers[1:]
    doc = {"apiVersion": "v1", "kind": "Config", "preferences": {},
           "clusters": [{"name": cluster, "cluster": body}],
           "users": [{"name": user, "user": {
               "client-certificate-data": _b64(users / f"{user}.crt"),
               "client-key-data": _b64(users / f"{user}.key")}} for user, _ in (ADMIN, USER)],
           "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": ADMIN[0],
                                                      "namespace": "default"}},
                        {"name": f"{cluster}-{USER[0]}", "context": {
                            "cluster": cluster, "user": USER[0], "namespace": "default"}}],
           "current-context": cluster}
    return "# the podnet Vagrant lab's client config (vagrant/pki.py)\n" + _yaml(doc) + "\n"


def make(directory: pathlib.Path, nodes: int, subnet: str, cluster: str) -> list[str]:
    """Make what is missing; returns what was made (for the caller's log)."""
    made = []
    ca_dir, users = directory / "ca", directory / "users"
    ca_cert, ca_key = ca_dir / "ca.crt", ca_dir / "ca.key"
    if not (ca_cert.exists() and ca_key.exists()):
        pki.make_ca(str(ca_dir), cluster)
        made.append("CA")
        # everything signed by an older CA goes with it
        for old in [users, *directory.glob("node*")]:
            shutil.rmtree(old, ignore_errors=True)
    for user, groups in (ADMIN, USER):
        if not (users / f"{user}.crt").exists():
            pki.make_client_cert(str(users), str(ca_cert), str(ca_key), user, groups)
            made.append(f"user {user}")
    servers = []
    for i in range(1, nodes + 1):
        name, ip, d = f"node{i}", node_ip(subnet, i), directory / f"node{i}"
        servers.append(f"https://{ip}:{API_PORT}")
        if _read(d / "node.ip").strip() != ip or not (d / "node.crt").exists():
            pki.make_node_cert(str(d), str(ca_cert), str(ca_key), name, ip,
                               common_name=f"system:node:{name}", organizations=("system:nodes",))
            shutil.copyfile(ca_cert, d / "ca.crt")
            _write(d / "node.ip", ip + "\n", 0o644)
            made.append(f"{name} ({ip})")
    config = client_config(cluster, servers, ca_cert, users)
    if _read(directory / "node1" / "config.yaml") != config:
        _write(directory / "node1" / "config.yaml", config)
        made.append("node1/config.yaml")
    return made


def main() -> int:
    ap = argparse.ArgumentParser(prog="vagrant/pki.py", description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--subnet", required=True, help="the first three octets, e.g. 192.168.56")
    ap.add_argument("--cluster", default="podnet-vagrant")
    args = ap.parse_args()
    if not 1 <= args.nodes <= 20:
        ap.error(f"--nodes {args.nodes}: between 1 and 20")
    try:
        ipaddress.IPv4Address(node_ip(args.subnet, 1))
        ipaddress.IPv4Address(node_ip(args.subnet, args.nodes))
    except ValueError:
        ap.error(f"--subnet {args.subnet!r}: expected three octets such as 192.168.56")
    directory = pathlib.Path(args.dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # One maker at a time (two vagrant commands may load the Vagrantfile at once).
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            made = make(directory, args.nodes, args.subnet, args.cluster)
        except (pki.PkiError, OSError) as e:
            print(f"vagrant/pki.py: {directory}: {e}", file=sys.stderr)
            return 1
    if made:
        print(f"vagrant/pki.py: {directory}: made {', '.join(made)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
