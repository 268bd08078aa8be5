"""podnetd's cluster flags and their typed configuration (the cluster feature's add_flags and
config, podnetd/cluster/wire.py).

Cluster mode is on when any of --cluster-cidr, --peers, --listen, --node-ip, --store etcd or
--etcd-endpoints is given; then --cluster-cidr is required. Without them podnetd stays the
single-node daemon it was (config() returns None); `--cleanup` asks for a CleanupRequest instead.
"""
import ipaddress
import os
from dataclasses import dataclass

from .. import config
from ..kernel.errors import KernelError
from . import records
from .backends import BACKENDS
from .own_networks import overlap_problem

STORES = ("static", "etcd")
DEFAULT_PEER_PORT = 7946


@dataclass(frozen=True)
class ClusterConfig:
    """The cluster's flags, checked and parsed."""
    cluster_cidr: str                 # normalised
    store: str                        # "static" or "etcd"
    backend: str                      # "auto", "host-gw" or "vxlan"
    node_ip: str | None = None        # --node-ip; None: the default-route interface's address
    listen: str | None = None         # static store: IP:PORT of the peer service
    peer_list: tuple[str, ...] = ()   # static store: seed peers, "IP:PORT" each
    node_timeout: float = 15.0
    etcd_endpoints: tuple[str, ...] = ()
    etcd_cafile: str | None = None
    etcd_certfile: str | None = None
    etcd_keyfile: str | None = None
    node_cidr_size: int = 24
    vxlan_vni: int = 1
    vxlan_port: int = 8472
    vxlan_dev: str = "podnet.vxlan"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    insecure_peers: bool = False


@dataclass(frozen=True)
class CleanupRequest:
    """`podnetd --cleanup`: remove what podnetd made on this node, then exit."""
    vxlan_dev: str
    bridge: str


def add_flags(p) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--node-ip", help="underlay address (default: the address of the default-route interface)")
    g.add_argument("--cluster-cidr", help="pod addresses of the whole cluster; --pod-cidr must lie inside it")
    g.add_argument("--store", choices=STORES, help="where node records live (default static)")
    g.add_argument("--listen", help="static store: ADDR:PORT of the peer gRPC service (default <node-ip>:7946)")
    g.add_argument("--peers", help="static store: seed peers, a:port,b:port")
    g.add_argument("--node-timeout", type=config.positive_float, default=15.0,
                   help="seconds after which a silent node is withdrawn (default 15)")
    g.add_argument("--etcd-endpoints", help="etcd store: http(s)://host:port,...")
    g.add_argument("--etcd-cafile", help="etcd store: the CA that signs etcd's server certificate (PEM)")
    g.add_argument("--etcd-certfile", help="etcd store: this node's client certificate for etcd (PEM)")
    g.add_argument("--etcd-keyfile", help="etcd store: the key of --etcd-certfile (PEM)")
    g.add_argument("--node-cidr-size", type=int, default=24,
                   help="etcd store: prefix length of the pod CIDR block leased per node (default 24)")
    g.add_argument("--backend", choices=sorted(BACKENDS), default="auto",
                   help="auto (default: host-gw on the same subnet, vxlan otherwise), host-gw or vxlan")
    g.add_argument("--vxlan-vni", type=int, default=1, help="VXLAN network identifier (default 1)")
    g.add_argument("--vxlan-port", type=int, default=8472, help="VXLAN UDP port (default 8472)")
    g.add_argument("--vxlan-dev", default="podnet.vxlan", help="VXLAN device name (default podnet.vxlan)")
    g.add_argument("--tls-cert", help="peer service: this node's certificate (PEM)")
    g.add_argument("--tls-key", help="peer service: this node's private key (PEM)")
    g.add_argument("--tls-ca", help="peer service: the CA that signs every node's certificate (PEM)")
    g.add_argument("--insecure-peers", action="store_true",
                   help="static store: peers without TLS (anyone who reaches the peer port can "
                        "announce routes; for labs and tests only)")
    g.add_argument("--cleanup", action="store_true",
                   help="remove everything podnetd created on this node (nft tables, vxlan device, "
                        "its routes, the bridge) and exit")
    # --pod-cidr may be omitted with --store etcd (leased); config() below requires it otherwise.
    p.set_defaults(allow_leased_cidr=True)


def cluster_enabled(ns) -> bool:
    return bool(ns.cluster_cidr or ns.peers or ns.listen or ns.node_ip or ns.store == "etcd"
                or ns.etcd_endpoints)


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not host:
            raise ValueError
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise config.ConfigError(f"{what} {text!r}: expected IP:PORT") from None
    return host, number


def _check_etcd_tls(ns) -> None:
    if bool(ns.etcd_certfile) != bool(ns.etcd_keyfile):
        raise config.ConfigError("--etcd-certfile and --etcd-keyfile go together")
    given = [(f, p) for f, p in (("--etcd-cafile", ns.etcd_cafile), ("--etcd-certfile", ns.etcd_certfile),
                                 ("--etcd-keyfile", ns.etcd_keyfile)) if p]
    for flag, path in given:
        if not os.path.isfile(path):
            raise config.ConfigError(f"{flag} {path}: no such file")
    plain = [u.strip() for u in ns.etcd_endpoints.split(",") if u.strip().startswith("http://")]
    if given and plain:
        raise config.ConfigError(f"{given[0][0]} needs https:// endpoints, not {plain[0]}")


def _refuse_overlap_with_node(cluster_cidr: str, bridge: str, vxlan_dev: str) -> None:
    """The cluster CIDR must stay clear of this node's own networks (read from the kernel)."""
    try:
        problem = overlap_problem(cluster_cidr, {bridge, vxlan_dev})
    except KernelError as e:
        raise config.ConfigError(f"--cluster-cidr {cluster_cidr}: cannot read this node's "
                                 f"networks: {e}") from None
    if problem:
        raise config.ConfigError(problem)


def cluster_config(ns, daemon: config.DaemonConfig) -> ClusterConfig | CleanupRequest | None:
    """The cluster feature's config(): None when cluster mode is off."""
    store = ns.store or "static"
    if ns.cleanup:
        return CleanupRequest(vxlan_dev=ns.vxlan_dev, bridge=daemon.bridge)
    enabled = cluster_enabled(ns)
    if not daemon.pod_cidr and not (enabled and store == "etcd"):
        raise config.ConfigError("--pod-cidr is required (or --store etcd to lease one)")
    if not enabled:
        return None
    if not ns.cluster_cidr:
        raise config.ConfigError("--cluster-cidr is required in a cluster (with --peers, --listen, "
                                 "--node-ip or --store etcd)")
    try:
        cluster = ipaddress.ip_network(ns.cluster_cidr, strict=True)
    except ValueError as e:
        raise config.ConfigError(f"--cluster-cidr {ns.cluster_cidr}: {e}") from None
    if cluster.version != 4:
        raise config.ConfigError(f"--cluster-cidr {ns.cluster_cidr}: need an IPv4 network")
    cluster_cidr = str(cluster)
    try:
        records.validate_name(daemon.node_name)
    except records.RecordError as e:
        raise config.ConfigError(f"--node-name {e.record}: {e.why}") from None
    if daemon.pod_cidr and not ipaddress.ip_network(daemon.pod_cidr).subnet_of(cluster):
        raise config.ConfigError(f"--pod-cidr {daemon.pod_cidr} does not lie inside --cluster-cidr "
                                 f"{cluster_cidr}")
    node_ip = None
    if ns.node_ip:
        try:
            node_ip = str(ipaddress.IPv4Address(ns.node_ip))
        except ValueError:
            raise config.ConfigError(f"--node-ip {ns.node_ip!r}: not an IPv4 address") from None
    if ns.listen:
        _host_port(ns.listen, "--listen")
    peer_list = tuple(f"{h}:{p}" for h, p in (_host_port(s.strip(), "--peers")
                                              for s in (ns.peers or "").split(",") if s.strip()))
    etcd_endpoints = ()
    if store == "etcd":
        if not ns.etcd_endpoints:
            raise config.ConfigError("--store etcd needs --etcd-endpoints http://host:port,...")
        for url in ns.etcd_endpoints.split(","):
            if not url.strip().startswith(("http://", "https://")):
                raise config.ConfigError(f"--etcd-endpoints {url!r}: expected http(s)://host:port")
        etcd_endpoints = tuple(u.strip() for u in ns.etcd_endpoints.split(",") if u.strip())
        _check_etcd_tls(ns)
        if not cluster.prefixlen <= ns.node_cidr_size <= 30:
            raise config.ConfigError(f"--node-cidr-size {ns.node_cidr_size}: must be between "
                                     f"{cluster.prefixlen} (the cluster prefix) and 30")
    _refuse_overlap_with_node(cluster_cidr, daemon.bridge, ns.vxlan_dev)
    if not 0 < ns.vxlan_vni < 2 ** 24:
        raise config.ConfigError(f"--vxlan-vni {ns.vxlan_vni}: must be between 1 and 16777215")
    if not 0 < ns.vxlan_port < 65536:
        raise config.ConfigError(f"--vxlan-port {ns.vxlan_port}: not a UDP port")
    if not ns.vxlan_dev or len(ns.vxlan_dev) > 15 or "/" in ns.vxlan_dev or " " in ns.vxlan_dev:
        raise config.ConfigError(f"--vxlan-dev {ns.vxlan_dev!r}: not a valid interface name")
    tls = [ns.tls_cert, ns.tls_key, ns.tls_ca]
    if any(tls) and not all(tls):
        raise config.ConfigError("--tls-cert, --tls-key and --tls-ca go together")
    for path in filter(None, tls):
        if not os.path.isfile(path):
            raise config.ConfigError(f"TLS file {path}: no such file")
    if store == "static":
        if ns.insecure_peers and any(tls):
            raise config.ConfigError("--insecure-peers and --tls-cert/--tls-key/--tls-ca exclude "
                                     "each other")
        if not ns.insecure_peers and not all(tls):
            raise config.ConfigError("the static store needs mutual TLS between peers: give "
                                     "--tls-cert, --tls-key and --tls-ca (or --insecure-peers, "
                                     "for labs only)")
    return ClusterConfig(
        cluster_cidr=cluster_cidr, store=store, backend=ns.backend, node_ip=node_ip,
        listen=ns.listen or None, peer_list=peer_list, node_timeout=ns.node_timeout,
        etcd_endpoints=etcd_endpoints, etcd_cafile=ns.etcd_cafile or None,
        etcd_certfile=ns.etcd_certfile or None, etcd_keyfile=ns.etcd_keyfile or None,
        node_cidr_size=ns.node_cidr_size, vxlan_vni=ns.vxlan_vni, vxlan_port=ns.vxlan_port,
        vxlan_dev=ns.vxlan_dev, tls_cert=ns.tls_cert or None, tls_key=ns.tls_key or None,
        tls_ca=ns.tls_ca or None, insecure_peers=bool(ns.insecure_peers))
