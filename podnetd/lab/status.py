"""What `podnetctl lab status` shows: nodes, their CIDRs, the mode chosen per peer, routes.
Asks each daemon (podnet.v1.ClusterService) and falls back to the kernel's routes when it can't."""
import ipaddress

from ..api.podnet.v1 import cluster_pb2
from ..apiconv import enum_word, message_dict as _msg
from . import plan, probe, procs, registry
from .lab import Lab


def collect(lab: Lab) -> dict:
    nodes, routes = [], []
    cluster = ipaddress.ip_network(plan.CLUSTER_CIDR)
    for name in lab.node_names():
        n = lab.st.nodes[name]
        record = lab.st.processes.get(f"podnetd/{name}")
        running = bool(record) and procs.alive(record)
        listing, programmed = lab.cluster_view(name) if running else (None, None)
        peers, problem = {}, ""
        if listing is not None:
            problem = listing.problem
            for peer in listing.nodes:
                if peer.name != name:
                    mode = enum_word(cluster_pb2.PeerMode, peer.mode)
                    peers[peer.name] = mode + (f" ({peer.problem})" if peer.problem else "")
        nodes.append({"node": name, "netns": n["netns"], "underlay_ip": n["ip"],
                      "segment": n["segment"], "pod_cidr": n.get("pod_cidr") or "",
                      "daemon": f"pid {record['pid']}" if running else "DOWN",
                      "peers": peers, "problem": problem})
        if programmed is not None:
            for e in programmed.entries:
                routes.append({"on": name, **_msg(e)})
            continue
        # No Cluster service: show the kernel's routes into other nodes' pod CIDRs.
        try:
            kernel = probe.routes(n["netns"])
        except Exception:  # noqa: BLE001 - a node mid-teardown has no routes to show
            kernel = []
        own = n.get("pod_cidr")
        for r in kernel:
            if r["dst"] != "default" and r["dst"] != own and \
                    ipaddress.ip_network(r["dst"]).subnet_of(cluster):
                routes.append({"on": name, "kind": "route", "node": "", "mode": "kernel",
                               "destination": r["dst"], "via": r["gateway"] or "",
                               "dev": r["dev"] or "", "state": "present"})
    reg = None
    if lab.registry:
        record = lab.st.processes.get(registry.NAME)
        reg = {"address": lab.registry, "image": lab.registry_image,
               "process": f"pid {record['pid']}" if record and procs.alive(record) else "DOWN"}
    pods = [{"pod": k, "netns": p["netns"], "address": p["address"]} for k, p in lab.st.pods.items()]
    return {"name": lab.st.name, "topology": lab.st.topology, "store": lab.st.store,
            "dir": lab.st.dir, "registry": reg, "nodes": nodes, "routes": routes, "pods": pods}
