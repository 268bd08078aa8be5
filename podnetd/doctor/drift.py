"""Drift: kernel entries that differ from what the store says they should be (pure).

Inputs are ListRoutes' entries (what podnetd wants, with present/missing/foreign) and what the
doctor reads from this node's kernel itself: the main table's routes and the VXLAN device's
FDB entries and permanent neighbours. A route no one wants that overlaps the cluster CIDR is
"rogue": the longest prefix wins, so it can take a peer's pod traffic even while podnet's own
route is present.
"""
import ipaddress

from .model import Check, Peer, failed, passed

FAMILY = "drift"


def _net(text: str):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def describe_route(r: dict, proto_name) -> str:
    text = r["dst"]
    if r.get("gateway"):
        text += f" via {r['gateway']}"
    if r.get("dev"):
        text += f" dev {r['dev']}"
    return text + f" proto {proto_name(r.get('proto', 0))}"


def _proto_name(proto: int) -> str:
    names = {2: "kernel", 3: "boot", 4: "static", 16: "dhcp", 186: "bgp", 0x6E: "podnet"}
    return names.get(proto, str(proto))


def route_for(ip: str, routes: list[dict]) -> dict | None:
    """The main-table route the kernel would pick for ip (longest prefix; metrics ignored)."""
    addr = ipaddress.ip_address(ip)
    best, best_len = None, -1
    for r in routes:
        net = ipaddress.ip_network("0.0.0.0/0") if r["dst"] == "default" else _net(r["dst"])
        if net is not None and addr in net and net.prefixlen > best_len:
            best, best_len = r, net.prefixlen
    return best


def hijacks(peers: list[Peer], routes: list[dict], route_proto: int) -> dict[str, str]:
    """{peer name: why} for each peer whose pod gateway the kernel would send along a route
    podnetd did not make (a rogue or foreign route wins the longest-prefix match)."""
    out = {}
    for peer in peers:
        if peer.mode not in ("host-gw", "vxlan"):
            continue
        r = route_for(peer.gateway, routes)
        if r is None:
            out[peer.name] = f"this node has no route to {peer.gateway} at all"
        elif r.get("proto") != route_proto:
            out[peer.name] = (f"traffic to {peer.name}'s pods ({peer.gateway}) takes the route "
                              f"{describe_route(r, _proto_name)}, which podnet did not make")
    return out


def _entry_text(e: dict) -> str:
    if e["kind"] == "route":
        return f"route {e['destination']} via {e['via']}" + (f" dev {e['dev']}" if e.get("dev") else "")
    if e["kind"] == "neigh":
        return f"neighbour {e['destination']} lladdr {e['via']} dev {e['dev']}"
    return f"fdb {e['destination']} dst {e['via']} dev {e['dev']}"


def verdicts(entries: list[dict], routes: list[dict], fdb: list[dict], neigh: list[dict], *,
             cluster_cidr: str, pod_cidr: str, route_proto: int, peers: list[Peer],
             vxlan_dev: str) -> list[Check]:
    checks: list[Check] = []
    bad = [e for e in entries if e.get("state") != "present"]
    fdb_by_mac = {f["mac"].lower(): f["dst"] for f in fdb}
    neigh_by_ip = {n["ip"]: n["mac"].lower() for n in neigh}
    for e in bad:
        text = _entry_text(e)
        if e["state"] == "foreign":
            checks.append(failed(
                FAMILY, f"{e['kind']} for {e['node']}", e["node"], f"{text}: foreign",
                f"a route to {e['destination']} that podnet did not make holds its place, so "
                f"podnet cannot program its own",
                f"remove it (`ip route del {e['destination']}`) if it is not meant to be there; "
                "podnetd then installs its own within one reconcile"))
            continue
        detail = f"{text}: missing"
        if e["kind"] == "fdb" and e["destination"].lower() in fdb_by_mac:
            detail = f"{text}: points to {fdb_by_mac[e['destination'].lower()]} instead"
        elif e["kind"] == "neigh" and e["destination"] in neigh_by_ip:
            detail = f"{text}: has lladdr {neigh_by_ip[e['destination']]} instead"
        what = {"fdb": f"frames for {e['node']}'s VTEP are not sent to its underlay address",
                "neigh": f"the VTEP address of {e['node']} does not resolve to its VTEP MAC",
                "route": f"this node has no route to {e['node']}'s pods"}[e["kind"]]
        checks.append(failed(
            FAMILY, f"{e['kind']} for {e['node']}", e["node"], detail,
            f"{what}: the kernel entry was removed or changed behind podnetd's back",
            "podnetd repairs it at its next reconcile (--reconcile-interval); if it comes back, "
            "find who removes it (`ip monitor`)"))
    if not bad:
        checks.append(passed(FAMILY, "programmed entries", "",
                             f"{len(entries)} routes/neighbours/FDB entries as the store says"))
    wanted_routes = {e["destination"] for e in entries if e["kind"] == "route"}
    cluster, own = _net(cluster_cidr), _net(pod_cidr)
    owners = {p.name: _net(p.pod_cidr) for p in peers}
    rogue = []
    for r in routes:
        net = None if r["dst"] == "default" else _net(r["dst"])
        if net is None or cluster is None or not net.overlaps(cluster):
            continue
        if own is not None and net == own:      # the bridge's own connected route
            continue
        ours = r.get("proto") == route_proto
        if r["dst"] in wanted_routes:
            continue  # podnet's own, or a foreign one ListRoutes already reported
        victims = sorted(n for n, c in owners.items() if c is not None and net.subnet_of(c))
        if own is not None and net.subnet_of(own):
            victims.append("this node")
        if not victims and not ours:
            continue  # covers no node's pods more specifically than their own routes do
        rogue.append((r, victims, ours))
    for r, victims, ours in rogue:
        text = describe_route(r, _proto_name)
        if ours:
            cause = "podnet made it for a node that is gone; the reconcile loop removes it"
            fix = "wait one --reconcile-interval; if it stays, check podnetd's log"
        else:
            whose = f" ({', '.join(victims)}'s pod addresses)" if victims else ""
            cause = (f"a route podnet did not make covers cluster addresses{whose}; the longest "
                     "prefix wins, so their traffic follows it")
            fix = f"remove it (`ip route del {r['dst']}`) unless it is meant to be there"
        checks.append(failed(FAMILY, "rogue route", r["dst"], text, cause, fix))
    if not rogue:
        checks.append(passed(FAMILY, "rogue routes", "",
                             f"no route podnet did not make overlaps the cluster CIDR {cluster_cidr}"))
    wanted_fdb = {e["destination"].lower() for e in entries if e["kind"] == "fdb"}
    wanted_neigh = {e["destination"] for e in entries if e["kind"] == "neigh"}
    stale = [f"fdb {f['mac']} dst {f['dst']}" for f in fdb if f["mac"].lower() not in wanted_fdb]
    stale += [f"neighbour {n['ip']} lladdr {n['mac']}" for n in neigh if n["ip"] not in wanted_neigh]
    if stale:
        checks.append(failed(FAMILY, "stale VXLAN entries", vxlan_dev, "; ".join(stale),
                             "entries on the VXLAN device no peer owns",
                             "the reconcile loop removes them; if they stay, "
                             f"`bridge fdb show dev {vxlan_dev}` and check podnetd's log"))
    return checks


def firewall(endpoints: list[dict], elements: list[tuple[str, str, str]] | None,
             egress_present: bool) -> list[Check]:
    """The anti-spoofing set against the attachments (ListEndpoints): each active pod's
    (host port, MAC, IP) must be in it, nothing else may be. A missing element drops that pod's
    traffic; an extra one lets a port send with an address it no longer owns."""
    name = "nftables"
    checks = []
    if elements is None:
        checks.append(failed(FAMILY, name, "bridge podnet", "table bridge podnet or its set pods is missing",
                             "nothing checks pods' source addresses: any pod can forge another's",
                             "podnetd recreates it at its next reconcile; if it does not, check its "
                             "log for firewall errors (and that nothing flushes the ruleset)"))
        elements = []
    have = {(p, m.lower(), ip) for p, m, ip in elements}
    want, maybe = set(), set()
    for e in endpoints:
        key = (e.get("host_ifname", ""), e.get("mac", "").lower(), e.get("address", "").split("/")[0])
        (want if e.get("state", "active") == "active" else maybe).add(key)
    # A second MAC on a pod's own port and address is one the pod took before its first frame
    # (e.g. set by a chained tuning plugin), learned by design: not an extra.
    owned = {(port, ip) for port, _, ip in want | maybe}
    missing = sorted(want - have)
    extra = sorted(t for t in have - want - maybe if (t[0], t[2]) not in owned)
    for port, mac, ip in missing:
        checks.append(failed(FAMILY, name, port, f"set pods lacks {port} . {mac} . {ip}",
                             f"the pod at {ip} is attached but its frames are dropped as spoofed",
                             "podnetd adds it back at its next reconcile; a pod that stays cut off "
                             "needs re-attaching"))
    for port, mac, ip in extra:
        checks.append(failed(FAMILY, name, port, f"set pods allows {port} . {mac} . {ip}, which no pod holds",
                             "a port may send as an address that is not (or no longer) its own",
                             "podnetd removes it at its next reconcile"))
    if not egress_present:
        checks.append(failed(FAMILY, name, "inet podnet", "table inet podnet is missing",
                             "pod traffic leaving the cluster CIDR is not masqueraded",
                             "podnetd recreates it at its next reconcile"))
    if not checks:
        checks.append(passed(FAMILY, name, "", f"set pods holds exactly the {len(want)} attached pods; "
                                               "masquerade table present"))
    return checks
