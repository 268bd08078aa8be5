"""podnetctl lab up | down | status | list | pod add|del|list | image import | matrix | exec."""
import argparse
import os
import shlex
import sys

from . import output
from .client import CtlError


def _lab_api():
    # Imported lazily: the lab pulls in pyroute2 and the kernel layer, other commands don't need it.
    from ..lab import lab, pods, probe, state, status
    return lab, pods, probe, state, status


def _open(args):
    lab, *_ = _lab_api()
    try:
        return lab.Lab.open(args.name)
    except lab.LabError as e:
        raise CtlError(str(e)) from None


def _guard(fn):
    """LabError -> one line on stderr, never a traceback."""
    def run(args):
        lab, *_ = _lab_api()
        try:
            return fn(args)
        except lab.LabError as e:
            raise CtlError(str(e)) from None
    return run


@_guard
def cmd_up(args) -> int:
    lab, _, _, _, status = _lab_api()
    lab.Lab.check(args.nodes, args.topology, args.store, args.name)
    print(f"lab {args.name}: {args.nodes} nodes, {args.topology} underlay, {args.store} store ...",
          file=sys.stderr)
    lb = lab.Lab.up(args.nodes, args.topology, args.store, name=args.name, tls=not args.no_tls,
                    node_timeout=args.node_timeout, backend=args.backend, wait=args.wait,
                    reconcile_interval=args.reconcile_interval, vxlan_vni=args.vxlan_vni,
                    vxlan_port=args.vxlan_port, big_tcp=args.big_tcp,
                    extra_args=args.extra_args,
                    node_monitor_grace_period=args.node_monitor_grace_period,
                    node_lease_renew=args.node_lease_renew,
                    leader_elect_lease_duration=args.leader_elect_lease_duration,
                    registry=args.registry)
    if args.registry is None and args.store == "etcd" and lb.registry is None:
        print("note: no image registry (docker-registry or skopeo is not installed); pods use "
              "images from `podnetctl lab image import`", file=sys.stderr)
    missing = lb.missing_routes()
    _print_status(status.collect(lb), args.output)
    if missing:
        print(f"warning: not converged after {args.wait}s; missing routes: {missing}", file=sys.stderr)
    print(f"lab {args.name} is up; `podnetctl lab down --name {args.name}` removes it", file=sys.stderr)
    _print_usage(lb)
    return 0


def _print_usage(lb) -> None:
    if lb.serves_api:
        from ..lab import cluster_api
        print(cluster_api.usage(lb), file=sys.stderr)


def extra_args(text: str) -> list[str]:
    """--extra-args "--flag value ...": podnetd flags for every node, split as a shell would."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    if words and not words[0].startswith("--"):
        raise argparse.ArgumentTypeError(f"{text!r}: give podnetd flags, e.g. \"--log-level debug\"")
    return words


@_guard
def cmd_down(args) -> int:
    lab, *_ = _lab_api()
    lab.down(args.name)
    print(f"lab {args.name}: removed")
    return 0


@_guard
def cmd_status(args) -> int:
    *_, status = _lab_api()
    lb = _open(args)
    _print_status(status.collect(lb), args.output)
    if args.output == "table":
        _print_usage(lb)
    return 0


def _print_status(data: dict, fmt: str) -> None:
    if fmt != "table":
        output.emit([], [], fmt, raw=data)
        return
    print(f"lab {data['name']}: topology {data['topology']}, store {data['store']}, state {data['dir']}")
    if data.get("registry"):
        r = data["registry"]
        print(f"image registry {r['address']} (plain HTTP; {r['process']}): {r['image']}")
    rows = [{**n, "peers": " ".join(f"{k}={v}" for k, v in sorted(n["peers"].items())) or "-"}
            for n in data["nodes"]]
    sys.stdout.write(output.table(rows, [("NODE", "node"), ("UNDERLAY", "underlay_ip"),
                                         ("SEG", "segment"), ("POD-CIDR", "pod_cidr"),
                                         ("DAEMON", "daemon"), ("MODE PER PEER", "peers"),
                                         ("PROBLEM", "problem")]))
    print()
    sys.stdout.write(output.table(data["routes"], [("ON", "on"), ("KIND", "kind"),
                                                   ("FOR", "node"), ("MODE", "mode"), ("DESTINATION", "destination"),
                                                   ("VIA", "via"), ("DEV", "dev"), ("STATE", "state")])
                     if data["routes"] else "no routes programmed\n")
    if data["pods"]:
        print()
        sys.stdout.write(output.table(data["pods"], [("POD", "pod"), ("ADDRESS", "address"),
                                                     ("NETNS", "netns")]))


@_guard
def cmd_list(args) -> int:
    _, _, _, state, _ = _lab_api()
    rows = []
    for name in state.names():
        st = state.load(name)
        rows.append({"name": name, "topology": st.topology, "store": st.store,
                     "nodes": len(st.nodes), "pods": len(st.pods), "dir": st.dir})
    output.emit(rows, [("NAME", "name"), ("TOPOLOGY", "topology"), ("STORE", "store"),
                       ("NODES", "nodes"), ("PODS", "pods"), ("STATE", "dir")], args.output)
    return 0


@_guard
def cmd_pod_add(args) -> int:
    _, pods, *_ = _lab_api()
    lb = _open(args)
    key = pods.add_pod(lb, args.node, args.pod)
    p = lb.st.pods[key]
    print(f"{key} {p['address']} netns {p['netns']}")
    return 0


@_guard
def cmd_pod_del(args) -> int:
    _, pods, *_ = _lab_api()
    pods.del_pod(_open(args), args.pod)
    return 0


@_guard
def cmd_pod_list(args) -> int:
    _, pods, *_ = _lab_api()
    rows = [{"pod": k, **p} for k, p in pods.pods(_open(args)).items()]
    output.emit(rows, [("POD", "pod"), ("NODE", "node"), ("ADDRESS", "address"),
                       ("NETNS", "netns")], args.output)
    return 0


@_guard
def cmd_image_import(args) -> int:
    from ..lab import cluster_api
    lb = _open(args)
    for node, image_id in cluster_api.import_image(lb, args.image, args.archive).items():
        print(f"{node}: {args.image} {image_id[:12]}")
    return 0


@_guard
def cmd_matrix(args) -> int:
    _, pods, probe, _, _ = _lab_api()
    ps = pods.pods(_open(args))
    if len(ps) < 2:
        raise CtlError("the matrix needs at least two pods (podnetctl lab pod add --node n1)")
    results = probe.tcp_matrix(ps) if args.tcp else probe.ping_matrix(ps)
    sys.stdout.write(probe.render_matrix(ps, results))
    return 0 if all(results.values()) else 1


@_guard
def cmd_exec(args) -> int:
    lb = _open(args)
    target = args.target
    if target in lb.st.nodes:
        ns = lb.netns(target)
    elif target in lb.st.pods:
        ns = lb.st.pods[target]["netns"]
    else:
        raise CtlError(f"no node or pod {target!r} in lab {args.name}")
    cmd = args.cmd
    if not cmd:
        raise CtlError("give a command after --, e.g. podnetctl lab exec n1 -- ip route")
    os.execvp("nsenter", ["nsenter", f"--net=/run/netns/{ns}", *cmd])


def register(sub, common) -> None:
    from ..lab.lab import DEFAULT_NAME
    lab = sub.add_parser("lab", help="a local multi-node lab in network namespaces")
    lsub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")

    def add(name, func, help_, **kw):
        p = lsub.add_parser(name, parents=[common], help=help_, **kw)
        p.add_argument("--name", default=DEFAULT_NAME, help="the lab's name (namespace prefix)")
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "create nodes, underlay and daemons")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--topology", default="l2", choices=["l2", "routed"])
    p.add_argument("--store", default="static", choices=["static", "etcd"])
    p.add_argument("--backend", choices=["auto", "host-gw", "vxlan"])
    p.add_argument("--node-timeout", type=float)
    p.add_argument("--reconcile-interval", type=float)
    p.add_argument("--vxlan-vni", type=int)
    p.add_argument("--vxlan-port", type=int)
    p.add_argument("--no-tls", "--insecure-peers", dest="no_tls", action="store_true",
                   help="run static-store peers without mutual TLS (podnetd --insecure-peers)")
    p.add_argument("--big-tcp", action="store_true",
                   help="give the underlay links BIG TCP (192 KiB IPv4 GSO/GRO), as a NIC may have")
    p.add_argument("--node-monitor-grace-period", type=float,
                   help="podnetd --node-monitor-grace-period (seconds) on every node")
    p.add_argument("--node-lease-renew", type=float,
                   help="podnetd --node-lease-renew (seconds) on every node")
    p.add_argument("--leader-elect-lease-duration", type=float,
                   help="podnetd --leader-elect-lease-duration (seconds) on every node")
    p.add_argument("--registry", action=argparse.BooleanOptionalAction, default=None,
                   help="run an image registry on the underlay with busybox:1 pushed to it "
                        "(default: with --store etcd)")
    p.add_argument("--extra-args", type=extra_args, default=[],
                   help='more podnetd flags for every node, one string: "--log-level debug"')
    p.add_argument("--wait", type=float, default=30, help="seconds to wait for convergence")
    add("down", cmd_down, "remove every trace of the lab")
    add("status", cmd_status, "nodes, CIDRs, mode per peer, routes")
    add("list", cmd_list, "labs on this machine")
    add("matrix", cmd_matrix, "all-pairs ping (or --tcp) between the lab's pods") \
        .add_argument("--tcp", action="store_true")
    p = add("exec", cmd_exec, "run a command in a node's or pod's network namespace")
    p.add_argument("target", help="node (n1) or pod (n1/p1)")
    p.add_argument("cmd", nargs="*", help="-- command ...")
    image = lsub.add_parser("image", help="images in every node's pod runtime")
    isub = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    p = isub.add_parser("import", parents=[common],
                        help="import an image archive (OCI or docker) into every node")
    p.add_argument("--name", default=DEFAULT_NAME, help="the lab's name")
    p.add_argument("image", help="the image's name, e.g. busybox")
    p.add_argument("archive", help="the archive (podman save, skopeo copy ... oci-archive:)")
    p.set_defaults(func=cmd_image_import)
    pod = lsub.add_parser("pod", help="pods in the lab")
    psub = pod.add_subparsers(dest="pod_command", required=True, metavar="ACTION")
    for name, func, help_ in (("add", cmd_pod_add, "a pod netns attached via the CNI plugin"),
                              ("del", cmd_pod_del, "CNI DEL and remove the pod netns"),
                              ("list", cmd_pod_list, "the lab's pods")):
        p = psub.add_parser(name, parents=[common], help=help_)
        p.add_argument("--name", default=DEFAULT_NAME, help="the lab's name")
        p.set_defaults(func=func)
        if name == "add":
            p.add_argument("--node", required=True)
            p.add_argument("--pod", help="pod name (default p1, p2, ...)")
        elif name == "del":
            p.add_argument("pod", help="n1/p1")
