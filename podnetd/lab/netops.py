"""The lab's only kernel-changing code: namespaces, the underlay bridge(s) and veths, through
`ip` run inside the lab's own namespaces (nsenter --net), so the host namespace never sees even
a transient link."""
import os
import subprocess

NETNS_DIR = "/run/netns"


class NetopsError(Exception):
    pass


def _run(argv: list[str], what: str, stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise NetopsError(f"{what}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout


def ns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def nsenter(ns: str) -> list[str]:
    return ["nsenter", f"--net={ns_path(ns)}"]


def netns_exists(name: str) -> bool:
    return os.path.exists(ns_path(name))


def netns_add(name: str) -> None:
    if netns_exists(name):
        raise NetopsError(f"create netns {name}: it already exists")
    _run(["ip", "netns", "add", name], f"create netns {name}")
    ip_batch(name, ["link set lo up"], f"netns {name}: loopback up")


def netns_del(name: str) -> bool:
    """Delete a namespace; False when it was already gone (idempotent)."""
    if not netns_exists(name):
        return False
    _run(["ip", "netns", "del", name], f"delete netns {name}")
    return True


def ip_batch(ns: str, commands: list[str], what: str) -> None:
    """Run `ip` commands inside ns in one process (ip -batch)."""
    _run([*nsenter(ns), "ip", "-batch", "-"], what, stdin="\n".join(commands) + "\n")


def gso_limit(ns: str, dev: str, size: int) -> None:
    """Set dev's IPv4 GSO/GRO limit (BIG TCP above 64 KiB). Through the daemon's kernel layer:
    Debian 12's `ip` (iproute2 6.1) cannot set gso_ipv4_max_size."""
    from ..kernel import ip_lib, netns
    from ..kernel.errors import KernelError
    try:
        netns.run_in_netns(ns_path(ns), ip_lib.link_set_gso_limit, dev, size)
    except KernelError as e:
        raise NetopsError(f"{ns}/{dev}: {e}") from None


def sysctl(ns: str, key: str, value: str, what: str) -> None:
    _run([*nsenter(ns), "sysctl", "-q", "-w", f"{key}={value}"], what)


def bridge(ns: str, name: str, address: str | None = None) -> None:
    cmds = [f"link add {name} type bridge", f"link set {name} up"]
    if address:
        cmds.append(f"addr add {address} dev {name}")
    ip_batch(ns, cmds, f"netns {ns}: bridge {name}")


def veth(ns: str, name: str, peer_ns: str, peer_name: str, *, master: str | None = None) -> None:
    """A veth pair created from inside ns with its peer born in peer_ns."""
    cmds = [f"link add {name} type veth peer name {peer_name} netns {peer_ns}"]
    if master:
        cmds.append(f"link set {name} master {master}")
    cmds.append(f"link set {name} up")
    ip_batch(ns, cmds, f"veth {ns}/{name} <-> {peer_ns}/{peer_name}")


def configure(ns: str, ifname: str, address: str, gateway: str | None) -> None:
    cmds = [f"addr add {address} dev {ifname}", f"link set {ifname} up"]
    if gateway:
        cmds.append(f"route add default via {gateway} dev {ifname}")
    ip_batch(ns, cmds, f"netns {ns}: address {address} on {ifname}")


def link_delete(ns: str, name: str) -> None:
    ip_batch(ns, [f"link del {name}"], f"netns {ns}: delete {name}")


def unmount_under(directory: str) -> list[str]:
    """Unmount (lazily, deepest first) whatever is still mounted under directory (a pod's
    rootfs whose node died before its pods were removed), so removing the directory never
    reaches through a mount. Returns the failures."""
    prefix = os.path.realpath(directory).rstrip("/") + "/"
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
    except OSError as e:
        return [f"read mounts: {e}"]
    errors = []
    for m in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        proc = subprocess.run(["umount", "-l", m], capture_output=True, text=True)
        if proc.returncode != 0:
            errors.append(f"umount {m}: {proc.stderr.strip() or proc.returncode}")
    return errors
