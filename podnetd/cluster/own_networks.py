"""The node's own networks, and the rule that the cluster CIDR stays clear of them.

A cluster CIDR that overlaps a network the node already has (its underlay subnet, an address
on any interface, an on-link route) would make pod routes shadow it, or it shadow pods: refused
at start. podnet's own devices (the pod bridge, the VXLAN device) hold addresses inside the
cluster CIDR by design and are left out, and so are routes podnet made.
"""
import ipaddress

from ..kernel import ip_lib, vxlan
from .backends import ROUTE_PROTO

SCOPE_LINK = 253


def first_overlap(cluster_cidr: str, networks: list[tuple[str, str]]) -> tuple[str, str] | None:
    """(network, where) of the first of networks [(cidr, where)] that overlaps cluster_cidr."""
    cluster = ipaddress.ip_network(cluster_cidr)
    for cidr, where in networks:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version == cluster.version and net.overlaps(cluster):
            return str(net), where
    return None


def node_networks(podnet_devices: set[str]) -> list[tuple[str, str]]:
    """[(network, where)] of this node: every IPv4 address's network and every on-link route,
    except on podnet_devices and except routes podnet made. Reads the kernel."""
    found = [(f"{a['ip']}/{a['prefixlen']}", f"address {a['ip']}/{a['prefixlen']} on {a['dev']}")
             for a in vxlan.ipv4_addresses() if a["dev"] not in podnet_devices]
    for r in ip_lib.routes():
        if (r["dst"] != "default" and r["scope"] == SCOPE_LINK and r["proto"] != ROUTE_PROTO
                and r["dev"] not in podnet_devices):
            found.append((r["dst"], f"on-link route {r['dst']} dev {r['dev']}"))
    return found


def overlap_problem(cluster_cidr: str, podnet_devices: set[str]) -> str | None:
    """The line that refuses a cluster CIDR overlapping this node's networks, or None."""
    hit = first_overlap(cluster_cidr, node_networks(podnet_devices))
    if hit is None:
        return None
    net, where = hit
    return (f"--cluster-cidr {cluster_cidr} overlaps this node's network {net} ({where}): "
            f"pod routes would shadow it; choose a cluster CIDR clear of the node's networks")
