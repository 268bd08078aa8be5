"""Reads of this node's kernel state for the verdicts (I/O, read-only): links, addresses,
routes, VXLAN entries, sysctls, nftables chains, conntrack."""
import json
import subprocess

from ..kernel import ip_lib, nft, sysctl, vxlan
from ..kernel.errors import KernelError
from .vxlan import Device


def read_sysctl(key: str) -> str | None:
    try:
        return sysctl.read(key)
    except KernelError:
        return None


def underlay_dev(node_ip: str) -> str | None:
    for a in vxlan.ipv4_addresses():
        if a["ip"] == node_ip:
            return a["dev"]
    return None


def vxlan_device(node_ip: str, underlay: str | None, hinted: str | None) -> Device | None:
    """The VXLAN device podnetd made: the one ListRoutes names, else the vxlan link whose
    local address is this node's underlay address."""
    names = [hinted] if hinted else [link["name"] for link in ip_lib.links("vxlan")]
    for name in names:
        link = vxlan.vxlan_get(name)
        if link and link.get("kind") == "vxlan" and (hinted or link.get("local") == node_ip):
            return Device(name, link.get("vni") or 0, link.get("port") or 0, link.get("local") or "",
                          underlay or "")
    return None


def link(name: str) -> dict | None:
    return ip_lib.link_get(name)


def addresses(name: str) -> list[str]:
    try:
        return ip_lib.addrs(name)
    except KernelError:
        return []


def gso_limit(name: str) -> int | None:
    try:
        return ip_lib.link_gso_limit(name)
    except (KernelError, KeyError):
        return None


def routes() -> list[dict]:
    return ip_lib.routes()


def vxlan_entries(dev: str | None) -> tuple[list[dict], list[dict]]:
    if not dev:
        return [], []
    return vxlan.fdb_entries(dev), vxlan.neighbours(dev)


def rp_filter(dev: str) -> int:
    """The effective mode of dev: the larger of conf.all and conf.<dev> (as the kernel takes)."""
    values = [read_sysctl("net.ipv4.conf.all.rp_filter"),
              read_sysctl(f"net.ipv4.conf.{dev.replace('.', '/')}.rp_filter")]
    return max(int(v) for v in values if v is not None and v.isdigit()) if any(values) else 0


def forward_drop_chains() -> list[str]:
    """ip/inet chains hooked at forward whose policy is drop (what Docker does to FORWARD)."""
    try:
        proc = subprocess.run(["nft", "-j", "list", "chains"], capture_output=True, text=True, timeout=10)
        items = json.loads(proc.stdout or "{}").get("nftables", [])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    out = []
    for item in items:
        c = item.get("chain") if isinstance(item, dict) else None
        if c and c.get("hook") == "forward" and c.get("policy") == "drop" and c.get("family") in ("ip", "inet"):
            out.append(f"{c['family']} {c.get('table')} {c.get('name')}")
    return out


def br_netfilter() -> tuple[bool, str | None]:
    value = read_sysctl("net.bridge.bridge-nf-call-iptables")
    return value is not None, value


def conntrack() -> tuple[int | None, int | None]:
    count = read_sysctl("net.netfilter.nf_conntrack_count")
    maximum = read_sysctl("net.netfilter.nf_conntrack_max")
    if count is None or maximum is None:
        return None, None
    return int(count), int(maximum)


def guard_table_present() -> bool:
    try:
        return nft.table_exists("bridge", "podnet")
    except KernelError:
        return False


def _nft_json(*args: str) -> list[dict] | None:
    try:
        proc = subprocess.run(["nft", "-j", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout or "{}").get("nftables", [])
    except ValueError:
        return None


def guard_elements() -> list[tuple[str, str, str]] | None:
    """The (port, MAC, IP) triples table bridge podnet allows: set pods (port . IP) joined with
    set pod_macs (port . MAC; MAC "" for a port without one); None without them."""
    pods, macs = _nft_json("list", "set", "bridge", "podnet", "pods"), _nft_json(
        "list", "set", "bridge", "podnet", "pod_macs")
    if pods is None or macs is None:
        return None
    by_port: dict[str, list[str]] = {}
    for port, mac in _concat_elements(macs, 2):
        by_port.setdefault(port, []).append(mac)
    return [(port, mac, ip) for port, ip in _concat_elements(pods, 2)
            for mac in by_port.get(port) or [""]]


def _concat_elements(items: list[dict], size: int) -> list[tuple[str, ...]]:
    out = []
    for item in items:
        s = item.get("set") if isinstance(item, dict) else None
        for elem in (s or {}).get("elem", []):
            parts = elem.get("concat") if isinstance(elem, dict) else None
            if isinstance(elem, dict) and "elem" in elem:          # an element with flags
                parts = (elem["elem"].get("val") or {}).get("concat")
            if isinstance(parts, list) and len(parts) == size and all(isinstance(p, str) for p in parts):
                out.append(tuple(parts))
    return out


def egress_table_present() -> bool:
    return _nft_json("list", "table", "inet", "podnet") is not None
