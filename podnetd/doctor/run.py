"""The doctor's order of things (I/O): ask podnetd, read the kernel, attach the probe endpoint,
probe every peer at once, capture, judge, detach."""
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import os
import threading
import time

import grpc

from ..api.podnet.v1 import cluster_pb2, cluster_pb2_grpc, node_pb2, node_pb2_grpc
from ..apiconv import enum_word, seconds
from ..ctl.client import CtlError, call
from ..kernel.netns import run_in_netns
from . import antispoof, drift, facts, mtu, node, peers as peer_checks, probe, vxlan
from .endpoint import IFNAME, EndpointError, ProbeEndpoint
from .model import Check, Peer, failed, skipped

ROUTE_PROTO = 0x6E  # what ListRoutes reports; used when a single-node daemon says nothing


@dataclasses.dataclass
class Report:
    node: str
    checks: list[Check]
    seconds: float
    cleanup_errors: list[str]


@dataclasses.dataclass
class Fabric:
    """What podnetd says and what this node's kernel holds, read once before probing."""
    info: object                        # node_pb2.NodeInfo
    cluster: bool = False               # podnetd runs in cluster mode
    store: str = ""
    cluster_cidr: str = ""
    self_ip: str = ""
    peers: list[Peer] = dataclasses.field(default_factory=list)
    record_checks: list[Check] = dataclasses.field(default_factory=list)
    entries: list[dict] = dataclasses.field(default_factory=list)
    route_proto: int = ROUTE_PROTO
    uplink: str | None = None
    vx_dev: vxlan.Device | None = None
    fdb: list[dict] = dataclasses.field(default_factory=list)
    neigh: list[dict] = dataclasses.field(default_factory=list)
    routes: list[dict] = dataclasses.field(default_factory=list)
    hijacked: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def routed(self) -> list[Peer]:
        return [p for p in self.peers if p.mode in ("host-gw", "vxlan")]


def _cluster_view(stub):
    """(ListNodesResponse, ListRoutesResponse), or (None, None) when cluster mode is off."""
    try:
        nodes = call(stub.ListNodes, cluster_pb2.ListNodesRequest())
        routes = call(stub.ListRoutes, cluster_pb2.ListRoutesRequest())
    except CtlError as e:
        if str(e).startswith("unimplemented"):
            return None, None
        raise
    if nodes.store == cluster_pb2.STORE_UNSPECIFIED:  # "cluster mode is off on this node"
        return None, None
    return nodes, routes


def read_fabric(ch) -> Fabric:
    info = call(node_pb2_grpc.NodeServiceStub(ch).GetNodeInfo, node_pb2.GetNodeInfoRequest()).node_info
    nodes, routes = _cluster_view(cluster_pb2_grpc.ClusterServiceStub(ch))
    f = Fabric(info)
    if nodes is not None:
        f.cluster, f.cluster_cidr = True, nodes.cluster_cidr
        f.store = enum_word(cluster_pb2.Store, nodes.store)
        for n in nodes.nodes:
            mode = enum_word(cluster_pb2.PeerMode, n.mode)
            if mode == "self":
                f.self_ip = n.underlay_ip
                continue
            got = peer_checks.parse_peer(n.name, n.underlay_ip, n.pod_cidr, mode, n.problem,
                                         n.vtep_mac, seconds(n.heartbeat_age))
            (f.peers.append if isinstance(got, Peer) else f.record_checks.append)(got)
        f.record_checks.insert(0, peer_checks.cluster(nodes.self_name, nodes.problem, f.store,
                                                      len(f.peers)))
        f.entries = [{"kind": enum_word(cluster_pb2.EntryKind, e.kind), "node": e.node,
                      "mode": enum_word(cluster_pb2.PeerMode, e.mode), "destination": e.destination,
                      "via": e.via, "dev": e.dev, "state": enum_word(cluster_pb2.EntryState, e.state)}
                     for e in routes.entries]
        f.route_proto = routes.route_protocol or ROUTE_PROTO
    if f.self_ip:
        f.uplink = facts.underlay_dev(f.self_ip)
        hinted = next((e["dev"] for e in f.entries if e["kind"] in ("fdb", "neigh") and e["dev"]), None)
        f.vx_dev = facts.vxlan_device(f.self_ip, f.uplink, hinted)
    f.fdb, f.neigh = facts.vxlan_entries(f.vx_dev.name if f.vx_dev else None)
    f.routes = facts.routes()
    f.hijacked = drift.hijacks(f.peers, f.routes, f.route_proto)
    return f


def node_checks(f: Fabric) -> list[Check]:
    """Everything about this node but the bridge (read once the probe endpoint is attached)."""
    out = [node.ip_forward(facts.read_sysctl("net.ipv4.ip_forward"))]
    paths = []
    for p in f.routed:
        arrive = f.vx_dev.name if p.mode == "vxlan" and f.vx_dev else f.uplink
        back = drift.route_for(p.gateway, f.routes)
        if arrive:
            paths.append((p.name, arrive, back.get("dev") if back else None, facts.rp_filter(arrive)))
    out.append(node.rp_filter(paths))
    loaded, call_ipt = facts.br_netfilter()
    out.append(node.br_netfilter(loaded, call_ipt, facts.forward_drop_chains() if loaded else []))
    out.append(node.conntrack(*facts.conntrack()))
    if f.self_ip:
        up = facts.link(f.uplink) if f.uplink else None
        out.append(node.uplink(f.uplink, up.get("mtu") if up else None,
                               facts.gso_limit(f.uplink) if f.uplink else None, f.info.mtu,
                               f.info.pod_gso_max_size or 65536,
                               f.vx_dev is not None or any(p.mode == "vxlan" for p in f.peers)))
    return out


def bridge_check(f: Fabric) -> Check:
    return node.bridge(f.info.bridge, facts.link(f.info.bridge), facts.addresses(f.info.bridge),
                       f.info.gateway, f.info.pod_cidr, f.info.mtu)


def drift_checks(f: Fabric, node_stub) -> list[Check]:
    if not f.cluster:
        return [skipped("drift", "routes and firewall", "", "single-node podnetd: no peers, no cluster firewall")]
    out = drift.verdicts(f.entries, f.routes, f.fdb, f.neigh, cluster_cidr=f.cluster_cidr,
                         pod_cidr=f.info.pod_cidr, route_proto=f.route_proto, peers=f.peers,
                         vxlan_dev=f.vx_dev.name if f.vx_dev else "")
    # read before the probe endpoint exists, so both views hold the same pods
    attached = call(node_stub.ListEndpoints, node_pb2.ListEndpointsRequest()).endpoints
    return out + drift.firewall([{"host_ifname": e.host_ifname, "mac": e.mac, "address": e.address,
                                  "state": enum_word(node_pb2.EndpointState, e.state) or "active"}
                                 for e in attached],
                                facts.guard_elements(), facts.egress_table_present())


def diagnose(socket_path: str, *, timeout: float = 1.0) -> Report:
    started = time.monotonic()
    with contextlib.closing(grpc.insecure_channel(f"unix://{socket_path}")) as ch:
        node_stub = node_pb2_grpc.NodeServiceStub(ch)
        f = read_fabric(ch)
        drifted, on_node = drift_checks(f, node_stub), node_checks(f)
        endpoint = ProbeEndpoint(node_stub)
        try:
            with endpoint:
                # with the probe endpoint attached: a bridge without ports falls back to MTU
                # 1500 until a port arrives (the kernel's auto-adjust), which is no fault
                on_node.insert(3, bridge_check(f))
                per_peer = probe_peers(f, endpoint, timeout)
                spoof = antispoof_test(f, endpoint, timeout)
        except EndpointError as e:
            on_node.insert(3, bridge_check(f))
            per_peer = probe_peers(f, None, timeout)
            spoof = [failed("antispoof", "probe endpoint", "", str(e),
                            "the doctor could not attach a pod of its own: the pod CIDR is full, "
                            "or podnetd cannot attach pods at all",
                            "`podnetctl status` and `podnetctl node` show free addresses; a pod "
                            "the doctor cannot attach, a workload cannot either")]
    checks = f.record_checks + [c for p in f.peers for c in per_peer[p.name]] + drifted + on_node + spoof
    return Report(f.info.node_name, checks, time.monotonic() - started, endpoint.cleanup_errors)


def _background(fn, *args) -> concurrent.futures.Future:
    """fn(*args) in a daemon thread: an interrupted doctor (Ctrl-C, SIGTERM) goes straight to
    removing its probe endpoint instead of waiting for a probe round to time out, as an
    executor's shutdown would."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def body():
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            future.set_exception(e)

    threading.Thread(target=body, name="doctor-probe", daemon=True).start()
    return future


def _path_mtu(f: Fabric, endpoint: ProbeEndpoint, reachable: list[Peer], pod_mtu: int,
              timeout: float) -> dict[str, dict]:
    """{peer: {size: Reply}} from two rounds of DF probes, every reachable peer at once."""
    src = endpoint.address
    sizes: dict[str, dict] = {p.name: {} for p in reachable}

    def round_(plan):
        if plan:
            got = run_in_netns(endpoint.netns_path, probe.icmp_round, plan, timeout)
            for (name, size), reply in got.items():
                sizes[name][size] = reply

    round_([probe.Probe((p.name, s), src, p.gateway, size=s)
            for p in reachable for s in mtu.coarse_sizes(pod_mtu)])
    fine = []
    for p in reachable:
        largest, lost = mtu.bounds(sizes[p.name])
        if largest is not None and lost is not None:
            fine += [probe.Probe((p.name, s), src, p.gateway, size=s) for s in mtu.fine_sizes(largest, lost)]
    round_(fine)
    return sizes


def probe_peers(f: Fabric, endpoint: ProbeEndpoint | None, timeout: float) -> dict[str, list[Check]]:
    """Underlay and clock from this namespace; pod path, MTU and VXLAN from the probe endpoint
    (skipped without one)."""
    routed = f.routed if endpoint is not None else []
    capture = None
    if f.vx_dev is not None and f.vx_dev.underlay_dev and any(p.mode == "vxlan" for p in routed):
        capture = probe.Capture(f.vx_dev.underlay_dev, probe.vxlan_keeper(f.vx_dev.port),
                                probe.bpf_ipv4(17, f.vx_dev.port)).start()
    under_probes = [probe.Probe(("echo", p.name), f.self_ip, p.underlay_ip) for p in f.peers] + \
                   [probe.Probe(("ts", p.name), f.self_ip, p.underlay_ip, kind="timestamp") for p in f.peers]
    under_f = _background(probe.icmp_round, under_probes, timeout) if f.self_ip and f.peers else None
    pod_f = None
    if routed:
        pod_probes = [probe.Probe(p.name, endpoint.address, p.gateway) for p in routed]
        pod_f = _background(run_in_netns, endpoint.netns_path, probe.icmp_round, pod_probes, timeout)
    under = under_f.result() if under_f else {}
    pod = pod_f.result() if pod_f else {}
    captured = capture.stop() if capture else []

    reachable = [p for p in routed if pod.get(p.name) is not None and pod[p.name].kind == "echo-reply"]
    pod_mtu = (endpoint.endpoint.mtu if endpoint else 0) or f.info.mtu
    sizes = _path_mtu(f, endpoint, reachable, pod_mtu, timeout) if reachable else {}

    per_peer: dict[str, list[Check]] = {}
    for p in f.peers:
        echo = under.get(("echo", p.name))
        out = per_peer[p.name] = [peer_checks.peer_state(p, f.store), peer_checks.underlay(p, echo, timeout)]
        if p in routed:
            out.append(peer_checks.pod_path(p, pod.get(p.name), echo is not None and echo.kind == "echo-reply",
                                            endpoint.address, timeout, f.hijacked.get(p.name, "")))
            out.append(mtu.verdict(p, pod_mtu, sizes.get(p.name, {}), p in reachable))
            if p.mode == "vxlan":
                out.append(vxlan.verdict(p, f.vx_dev, captured, f.fdb, f.neigh,
                                         capture.error if capture else "", f.hijacked.get(p.name, "")))
        else:
            why = f"not routed (mode {p.mode})" if endpoint is not None else "no probe endpoint"
            out.append(skipped("peer", "pod path", p.name, why))
        out.append(peer_checks.clock_skew(p, under.get(("ts", p.name))))
    return per_peer


def _forged_ip(pod_cidr: str, own: str) -> str:
    """An address of this node's pod CIDR that is not the probe endpoint's."""
    net = ipaddress.ip_network(pod_cidr, strict=False)
    return str(next(a for a in (net.broadcast_address - 1, net.broadcast_address - 2) if str(a) != own))


def antispoof_test(f: Fabric, endpoint: ProbeEndpoint, timeout: float) -> list[Check]:
    bridge = facts.link(f.info.bridge)
    if bridge is None or not bridge.get("mac"):
        return antispoof.verdicts({}, False, f.info.bridge, error=f"no bridge {f.info.bridge}")
    ep, ident = endpoint.endpoint, probe.new_ident()
    own_ip, gw, gw_mac = endpoint.address, f.info.gateway, bridge["mac"]
    forged_mac = "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
    frames = [  # an honest one first: a pod's first frame settles its MAC (a MAC it took before
        # speaking, e.g. from a chained tuning plugin, is its own); the honest one last: once it is
        # seen, the forgeries sent before it would have been
        probe.echo_frame(ep.mac, gw_mac, own_ip, gw, ident, 0),
        probe.echo_frame(ep.mac, gw_mac, _forged_ip(f.info.pod_cidr, own_ip), gw, ident, 2),
        probe.echo_frame(forged_mac, gw_mac, own_ip, gw, ident, 3),
        probe.echo_frame(ep.mac, gw_mac, own_ip, gw, ident, 1),
    ]
    capture = probe.Capture(f.info.bridge, probe.echo_keeper(ident), probe.bpf_ipv4(1)).start()
    if capture.error:
        capture.stop()
        return antispoof.verdicts({}, False, f.info.bridge, error=capture.error)
    try:
        run_in_netns(endpoint.netns_path, probe.send_frames, IFNAME, frames)
        deadline = time.monotonic() + timeout
        while 1 not in capture.found and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        seen = set(capture.stop())
    return antispoof.verdicts({"honest": 1 in seen, "forged-ip": 2 in seen, "forged-mac": 3 in seen},
                              facts.guard_table_present(), f.info.bridge)
