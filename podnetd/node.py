"""Node network setup: the pod bridge with the gateway address, and forwarding."""
import ipaddress

from .kernel import ip_lib, sysctl
from .kernel.errors import KernelError
from .macs import stable_mac

DEFAULT_MTU = 1500


def bridge_mac(node_name: str) -> str:
    """A stable, locally administered unicast MAC for the node's bridge."""
    return stable_mac("podnet-bridge", node_name)


def gateway_of(pod_cidr: str) -> str:
    """The gateway is the first address of the pod CIDR."""
    return str(ipaddress.ip_network(pod_cidr).network_address + 1)


def uplink_mtu() -> int:
    """The MTU of the interface that carries the default route, or 1500 without one."""
    dev = ip_lib.default_route_dev()
    link = ip_lib.link_get(dev) if dev else None
    return link["mtu"] if link and link["mtu"] else DEFAULT_MTU


def uplink_gso_limit() -> int:
    """The IPv4 GSO limit of the interface that carries the default route (64 KiB without one)."""
    dev = ip_lib.default_route_dev()
    try:
        return ip_lib.link_gso_limit(dev) if dev else ip_lib.LEGACY_GSO_MAX_SIZE
    except KernelError:
        return ip_lib.LEGACY_GSO_MAX_SIZE


def pod_gso_limit(path_limit: int) -> int | None:
    """The pods' GSO/GRO limit: the smallest limit on their way out when the uplink has BIG TCP
    (a pod's TCP stack sizes packets for its own interface, and a bigger packet than a device on
    the way takes is segmented in software there); None when that is the 64 KiB default, which
    pods have anyway."""
    return path_limit if path_limit > ip_lib.LEGACY_GSO_MAX_SIZE else None


def setup(bridge: str, pod_cidr: str, mtu: int, node_name: str) -> int:
    """Create or repair the bridge and its gateway address, and turn forwarding on.
    Idempotent: on a node that is already right it changes nothing. Returns the bridge index."""
    network = ipaddress.ip_network(pod_cidr)
    index = ip_lib.bridge_ensure(bridge, mtu=mtu, mac=bridge_mac(node_name))
    ip_lib.addr_add(bridge, f"{gateway_of(pod_cidr)}/{network.prefixlen}")
    sysctl.write("net.ipv4.ip_forward", 1)
    return index
