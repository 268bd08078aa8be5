"""The lab's address plan: pure logic, no kernel.

Underlay addresses come from 10.250.0.0/16. They only ever exist inside namespaces the lab
creates, so they cannot clash with the host. l2: one segment 10.250.0.0/24 whose bridge lives in
its own namespace and answers at .1. routed: segments A 10.250.1.0/24 and B 10.250.2.0/24,
joined by a router namespace at .1 on each. Node i has host number 10+i on its segment; etcd
takes .2 on the first segment, the image registry .3.
"""
import dataclasses
import ipaddress

CLUSTER_CIDR = "10.244.0.0/16"
UNDERLAY = "10.250.0.0/16"
PEER_PORT = 7470
METRICS_PORT = 9633
ETCD_PORT = 2379
API_PORT = 6443          # the cluster API on every node of an etcd lab, as kube-apiserver's
REGISTRY_PORT = 5000     # the lab's image registry (plain HTTP), as docker-registry's default
MAX_NODES = 200
TOPOLOGIES = ("l2", "routed")
STORES = ("static", "etcd")


class PlanError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Segment:
    name: str          # "a" or "b"
    netns: str         # namespace holding the segment's bridge
    subnet: str        # e.g. 10.250.1.0/24
    gateway: str       # the router's (or, for l2, the bridge's) address on it

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


@dataclasses.dataclass(frozen=True)
class NodePlan:
    name: str          # n1, n2, ...
    index: int
    netns: str
    segment: str
    ip: str
    pod_cidr: str | None   # None when the store leases it (etcd)


def node_name(index: int) -> str:
    return f"n{index}"


def segments(lab: str, topology: str) -> list[Segment]:
    if topology == "l2":
        return [Segment("a", f"{lab}-ul", "10.250.0.0/24", "10.250.0.1")]
    if topology == "routed":
        return [Segment("a", f"{lab}-ula", "10.250.1.0/24", "10.250.1.1"),
                Segment("b", f"{lab}-ulb", "10.250.2.0/24", "10.250.2.1")]
    raise PlanError(f"topology {topology!r}: expected one of {', '.join(TOPOLOGIES)}")


def host_address(segment: Segment, host: int) -> str:
    return str(ipaddress.ip_network(segment.subnet).network_address + host)


def static_pod_cidr(index: int) -> str:
    return str(ipaddress.ip_network(CLUSTER_CIDR).network_address + (index << 8)) + "/24"


def initial_segments(count: int, topology: str) -> list[str]:
    """Which segment each of the first `count` nodes joins: routed puts the first half on A and
    the rest on B, so node 1 and the last node always talk across the router."""
    if topology == "l2":
        return ["a"] * count
    half = (count + 1) // 2
    return ["a" if i < half else "b" for i in range(count)]


def join_segment(existing: list[str], topology: str) -> str:
    """A node joining later goes to the emptier segment (B on a tie)."""
    if topology == "l2":
        return "a"
    return "a" if existing.count("a") < existing.count("b") else "b"


def plan_node(lab: str, topology: str, store: str, index: int, segment: str) -> NodePlan:
    if not 1 <= index <= MAX_NODES:
        raise PlanError(f"node index {index}: must be between 1 and {MAX_NODES}")
    seg = {s.name: s for s in segments(lab, topology)}[segment]
    return NodePlan(name=node_name(index), index=index, netns=f"{lab}-{node_name(index)}",
                    segment=segment, ip=host_address(seg, 10 + index),
                    pod_cidr=static_pod_cidr(index) if store == "static" else None)


def etcd_address(lab: str, topology: str) -> str:
    return host_address(segments(lab, topology)[0], 2)


def registry_address(lab: str, topology: str) -> str:
    return host_address(segments(lab, topology)[0], 3)


def validate_name(name: str) -> str:
    # Namespace names become file names under /run/netns; keep them short and plain.
    if not name or len(name) > 24 or not all(c.isalnum() or c in "-_" for c in name) \
            or name[0] in "-_":
        raise PlanError(f"lab name {name!r}: use up to 24 letters, digits, '-' or '_'")
    return name
