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
from ..ctl.client import CtlError, call
from ..kernel.netns import run_in_netns
from . import antispoof, drift, facts, mtu, node, peers as peer_checks, probe, vxlan
from .endpoint import IFNAME, ProbeEndpoint
from .model import Check, Peer, skipped


@dataclasses.dataclass
class Report:
    node: str
    checks: list[Check]
    seconds: float
    cleanup_errors: list[str]


def _cluster_view(stub):
    """(ListNodesResponse, ListRoutesResponse), or (None, None) from a single-node podnetd."""
    try:
        return (call(stub.ListNodes, cluster_pb2.ListNodesRequest()),
                call(stub.ListRoutes, cluster_pb2.ListRoutesRequest()))
    except CtlError as e:
        if str(e).startswith("unimplemented"):
            return None, None
        raise


def _entries(routes_resp) -> list[dict]:
    if routes_resp is None:
        return []
    return [{"kind": e.kind, "node": e.node, "mode": e.mode, "destination": e.destination,
             "via": e.via, "dev": e.dev, "state": e.state} for e in routes_resp.entries]


def _forged_ip(pod_cidr: str, own: str) -> str:
    """An address of this node's pod CIDR that is not the probe endpoint's."""
    net = ipaddress.ip_network(pod_cidr, strict=False)
    for candidate in (net.broadcast_address - 1, net.broadcast_address - 2):
        if str(candidate) != own:
            return str(candidate)
    raise ValueError(pod_cidr)


def diagnose(socket_path: str, *, timeout: float = 1.0) -> Report:
    started = time.monotonic()
    with contextlib.closing(grpc.insecure_channel(f"unix://{socket_path}")) as ch:
        node_stub = node_pb2_grpc.NodeStub(ch)
        info = call(node_stub.GetNodeInfo, node_pb2.GetNodeInfoRequest())
        nodes_resp, routes_resp = _cluster_view(cluster_pb2_grpc.ClusterStub(ch))
        if nodes_resp is not None and not nodes_resp.store:      # "cluster mode is off"
            nodes_resp = routes_resp = None
        checks: list[Check] = []
        peers: list[Peer] = []
        self_ip, store, cluster_cidr = "", "", ""
        if nodes_resp is not None:
            store, cluster_cidr = nodes_resp.store, nodes_resp.cluster_cidr
            for n in nodes_resp.nodes:
                if n.mode == "self":
                    self_ip = n.underlay_ip
                else:
                    got = peer_checks.parse_peer(n.name, n.underlay_ip, n.pod_cidr, n.mode,
                                                 n.problem, n.vtep_mac, n.heartbeat_age_seconds)
                    (peers.append if isinstance(got, Peer) else checks.append)(got)
        if nodes_resp is not None:
            checks.append(peer_checks.cluster(nodes_resp.self_name, nodes_resp.problem,
                                              nodes_resp.store, len(peers)))
        entries = _entries(routes_resp)
        route_proto = routes_resp.route_protocol if routes_resp is not None else 0x6E

        # -- what the kernel holds --------------------------------------------------------
        uplink = facts.underlay_dev(self_ip) if self_ip else None
        hinted = next((e["dev"] for e in entries if e["kind"] in ("fdb", "neigh") and e["dev"]), None)
        vx_dev = facts.vxlan_device(self_ip, uplink, hinted) if self_ip else None
        fdb, neigh = facts.vxlan_entries(vx_dev.name if vx_dev else None)
        kroutes = facts.routes()
        vxlan_peers = [p for p in peers if p.mode == "vxlan"]

        node_checks = [node.ip_forward(facts.read_sysctl("net.ipv4.ip_forward"))]
        paths = []
        for p in peers:
            if p.mode not in ("host-gw", "vxlan"):
                continue
            arrive = vx_dev.name if p.mode == "vxlan" and vx_dev else uplink
            back = drift.route_for(p.gateway, kroutes)
            if arrive:
                paths.append((p.name, arrive, back.get("dev") if back else None, facts.rp_filter(arrive)))
        node_checks.append(node.rp_filter(paths))
        loaded, call_ipt = facts.br_netfilter()
        node_checks.append(node.br_netfilter(loaded, call_ipt, facts.forward_drop_chains() if loaded else []))
        node_checks.append(node.conntrack(*facts.conntrack()))
        if self_ip:
            up = facts.link(uplink) if uplink else None
            node_checks.append(node.uplink(uplink, up.get("mtu") if up else None,
                                           facts.gso_limit(uplink) if uplink else None,
                                           info.mtu, info.pod_gso_max_size or 65536,
                                           bool(vxlan_peers) or vx_dev is not None))
        hijacked = drift.hijacks(peers, kroutes, route_proto)
        drift_checks = []
        if nodes_resp is not None:
            drift_checks = drift.verdicts(entries, kroutes, fdb, neigh, cluster_cidr=cluster_cidr,
                                          pod_cidr=info.pod_cidr, route_proto=route_proto,
                                          peers=peers, vxlan_dev=vx_dev.name if vx_dev else "")
            # read before the probe endpoint exists, so both views hold the same pods
            attached = call(node_stub.ListEndpoints, node_pb2.ListEndpointsRequest()).endpoints
            drift_checks += drift.firewall(
                [{"host_ifname": e.host_ifname, "mac": e.mac, "address": e.address,
                  "state": e.state or "active"} for e in attached],
                facts.guard_elements(), facts.egress_table_present())
        else:
            drift_checks.append(skipped("drift", "routes and firewall", "",
                                        "single-node podnetd: no peers, no cluster firewall"))

        # -- probes -------------------------------------------------------------------------
        cleanup_errors: list[str] = []
        endpoint = ProbeEndpoint(node_stub)
        try:
            with endpoint:
                # read with the probe endpoint attached: a bridge without ports falls back to
                # MTU 1500 until its next port arrives (the kernel's auto-adjust)
                node_checks.insert(3, node.bridge(info.bridge, facts.link(info.bridge),
                                                  facts.addresses(info.bridge), info.gateway,
                                                  info.pod_cidr, info.mtu))
                per_peer, spoof_checks = _probe(endpoint, info, peers, vx_dev, self_ip, hijacked,
                                                fdb, neigh, timeout, store)
        finally:
            cleanup_errors = endpoint.cleanup_errors
        for p in peers:
            checks += per_peer.get(p.name, [])
        checks += drift_checks + node_checks + spoof_checks
    return Report(info.node_name, checks, time.monotonic() - started, cleanup_errors)


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


def _probe(endpoint: ProbeEndpoint, info, peers, vx_dev, self_ip, hijacked, fdb, neigh, timeout, store):
    src = endpoint.address
    routed = [p for p in peers if p.mode in ("host-gw", "vxlan")]
    capture = None
    if vx_dev is not None and vx_dev.underlay_dev and any(p.mode == "vxlan" for p in routed):
        capture = probe.Capture(vx_dev.underlay_dev, probe.vxlan_keeper(vx_dev.port),
                                probe.bpf_ipv4(17, vx_dev.port)).start()
    under_probes = [probe.Probe(("echo", p.name), self_ip, p.underlay_ip) for p in peers] + \
                   [probe.Probe(("ts", p.name), self_ip, p.underlay_ip, kind="timestamp") for p in peers]
    pod_probes = [probe.Probe(p.name, src, p.gateway) for p in routed]
    in_probe_ns = lambda fn, *a: run_in_netns(endpoint.netns_path, fn, *a)  # noqa: E731
    under_f = _background(probe.icmp_round, under_probes, timeout) if self_ip and peers else None
    pod_f = _background(in_probe_ns, probe.icmp_round, pod_probes, timeout) if routed else None
    under = under_f.result() if under_f else {}
    pod = pod_f.result() if pod_f else {}
    captured = capture.stop() if capture else []

    # path MTU: two rounds from the probe endpoint, every reachable peer at once
    pod_mtu = endpoint.endpoint.mtu or info.mtu
    reachable = [p for p in routed if pod.get(p.name) is not None and pod[p.name].kind == "echo-reply"]
    sizes = {p.name: {} for p in reachable}
    coarse = [probe.Probe((p.name, s), src, p.gateway, size=s) for p in reachable for s in mtu.coarse_sizes(pod_mtu)]
    for (name, s), reply in (in_probe_ns(probe.icmp_round, coarse, timeout) if coarse else {}).items():
        sizes[name][s] = reply
    fine = []
    for p in reachable:
        largest, lost = mtu.bounds(sizes[p.name])
        if largest is not None and lost is not None:
            fine += [probe.Probe((p.name, s), src, p.gateway, size=s) for s in mtu.fine_sizes(largest, lost)]
    for (name, s), reply in (in_probe_ns(probe.icmp_round, fine, timeout) if fine else {}).items():
        sizes[name][s] = reply

    per_peer: dict[str, list[Check]] = {}
    for p in peers:
        out = per_peer[p.name] = [peer_checks.peer_state(p, store)]
        under_ok = under.get(("echo", p.name)) is not None and under[("echo", p.name)].kind == "echo-reply"
        out.append(peer_checks.underlay(p, under.get(("echo", p.name)), timeout))
        if p in routed:
            out.append(peer_checks.pod_path(p, pod.get(p.name), under_ok, src, timeout, hijacked.get(p.name, "")))
            out.append(mtu.verdict(p, pod_mtu, sizes.get(p.name, {}), p in reachable))
        else:
            out.append(skipped("peer", "pod path", p.name, f"not routed (mode {p.mode})"))
        if p.mode == "vxlan":
            out.append(vxlan.verdict(p, vx_dev, captured, fdb, neigh, capture.error if capture else "",
                                     hijacked.get(p.name, "")))
        out.append(peer_checks.clock_skew(p, under.get(("ts", p.name))))
    return per_peer, _antispoof(endpoint, info, timeout)


def _antispoof(endpoint: ProbeEndpoint, info, timeout) -> list[Check]:
    bridge = facts.link(info.bridge)
    if bridge is None or not bridge.get("mac"):
        return antispoof.verdicts({}, False, info.bridge, error=f"no bridge {info.bridge}")
    ep = endpoint.endpoint
    ident = probe.new_ident()
    own_ip, gw, gw_mac = endpoint.address, info.gateway, bridge["mac"]
    forged_mac = "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
    frames = {  # the honest one last: once it is seen, the forgeries before it would have been
        2: probe.echo_frame(ep.mac, gw_mac, _forged_ip(info.pod_cidr, own_ip), gw, ident, 2),
        3: probe.echo_frame(forged_mac, gw_mac, own_ip, gw, ident, 3),
        1: probe.echo_frame(ep.mac, gw_mac, own_ip, gw, ident, 1),
    }
    capture = probe.Capture(info.bridge, probe.echo_keeper(ident), probe.bpf_ipv4(1)).start()
    if capture.error:
        capture.stop()
        return antispoof.verdicts({}, False, info.bridge, error=capture.error)
    try:
        run_in_netns(endpoint.netns_path, probe.send_frames, IFNAME, list(frames.values()))
        deadline = time.monotonic() + timeout
        while 1 not in capture.found and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        seen = set(capture.stop())
    return antispoof.verdicts({"honest": 1 in seen, "forged-ip": 2 in seen, "forged-mac": 3 in seen},
                              facts.guard_table_present(), info.bridge)
