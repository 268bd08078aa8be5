"""The lab: underlay namespaces, a podnetd per node (mTLS peers or etcd), pods; and teardown."""
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time

import grpc

from ..api.podnet.v1 import cluster_pb2, cluster_pb2_grpc, node_pb2, node_pb2_grpc
from ..config import cni_socket_for
from . import cluster_api, netops, pki, plan, procs, state
from . import registry as imgreg
from .plan import PlanError
from .state import LabState, StateError

DEFAULT_NAME = "lab"
UNDERLAY_BRIDGE = "br0"
NODE_IF = "eth0"
ETCD_NAME = "etcd"
SEGMENT_LABEL = "lab.podnet.io/segment"   # on each Node of an etcd lab: its underlay segment
BIG_TCP_GSO_SIZE = 196608  # 192 KiB, the size BIG TCP deployments commonly use


class LabError(Exception):
    pass


@functools.lru_cache(maxsize=1)
def daemon_flags() -> frozenset:
    """The long flags this podnetd offers (cluster features may not all be there yet)."""
    out = subprocess.run([sys.executable, "-m", "podnetd.main", "--help"], capture_output=True,
                         text=True).stdout
    return frozenset(w.strip(",[]") for w in out.split() if w.startswith("--"))


def _grpc_channel(sock: str) -> grpc.Channel:
    return grpc.insecure_channel(f"unix://{sock}")


class Lab:
    def __init__(self, st: LabState):
        self.st = st

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, name: str = DEFAULT_NAME, root: str = state.ROOT) -> "Lab":
        try:
            return cls(state.load(name, root))
        except StateError as e:
            raise LabError(str(e)) from None

    @staticmethod
    def check(nodes: int, topology: str, store: str, name: str) -> None:
        """LabError for arguments `up` would refuse, before anything is made."""
        try:
            plan.validate_name(name)
            if topology not in plan.TOPOLOGIES:
                raise PlanError(f"topology {topology!r}: expected one of {', '.join(plan.TOPOLOGIES)}")
            if store not in plan.STORES:
                raise PlanError(f"store {store!r}: expected one of {', '.join(plan.STORES)}")
            if not 1 <= nodes <= plan.MAX_NODES:
                raise PlanError(f"--nodes {nodes}: must be between 1 and {plan.MAX_NODES}")
        except PlanError as e:
            raise LabError(str(e)) from None

    @classmethod
    def up(cls, nodes: int, topology: str = "l2", store: str = "static", *,
           name: str = DEFAULT_NAME, root: str = state.ROOT, tls: bool = True,
           node_timeout: float | None = None, backend: str | None = None,
           reconcile_interval: float | None = None, vxlan_vni: int | None = None,
           vxlan_port: int | None = None, extra_args: list[str] | None = None,
           big_tcp: bool = False, node_monitor_grace_period: float | None = None,
           node_lease_renew: float | None = None,
           leader_elect_lease_duration: float | None = None,
           registry: bool | None = None, wait: float = 30.0) -> "Lab":
        """Create a lab of `nodes` nodes and wait (up to `wait` s) until every daemon serves and,
        when the daemons do cluster routing, every node routes to every other. Anything made
        before a failure is torn down again. Static-store peers talk mutual TLS with
        certificates from a lab CA (each names its node: CN and DNS SAN); tls=False runs them
        with --insecure-peers instead. big_tcp gives every underlay link a 192 KiB IPv4
        GSO/GRO limit, as a NIC with BIG TCP enabled has.

        An etcd lab with TLS also runs the cluster API on every node (<node ip>:6443, the node
        certificate, client certificates from the lab CA, an audit log in the node's dir) and
        writes a client config for an admin and a plain user (cluster_api.py); `up` returns
        once every Node is Ready in that API (a pod applied then finds every node). The control
        plane's timings (node lease renewal, node monitor grace period, leader lease) may be
        shortened for tests.

        registry (default: for the etcd store, when docker-registry is installed) runs an
        image registry on the underlay (registry.py) holding <address>:5000/busybox:1; every
        node may pull from it over plain HTTP."""
        cls.check(nodes, topology, store, name)
        if registry is None:
            registry = store == "etcd" and imgreg.installed()
        elif registry and not imgreg.installed():
            raise LabError(f"registry: {imgreg.BINARY} or skopeo is not installed "
                           f"(apt-get install {imgreg.BINARY} skopeo)")

        options = {"tls": tls, "node_timeout": node_timeout, "backend": backend,
                   "reconcile_interval": reconcile_interval, "vxlan_vni": vxlan_vni,
                   "vxlan_port": vxlan_port, "extra_args": extra_args or [], "big_tcp": big_tcp,
                   "node_monitor_grace_period": node_monitor_grace_period,
                   "node_lease_renew": node_lease_renew,
                   "leader_elect_lease_duration": leader_elect_lease_duration,
                   "registry": bool(registry)}
        st = LabState(name=name, topology=topology, store=store, options=options, root=root)
        with state.locked(name, root):
            try:
                state.create(st)
            except StateError as e:
                raise LabError(str(e)) from None
            lab = cls(st)
            try:
                lab._build_underlay()
                if tls:
                    pki.make_ca(os.path.join(st.dir, "ca"), name)
                if lab.serves_api:
                    cluster_api.make_users(lab)
                if store == "etcd":
                    lab._start_etcd()
                if registry:
                    lab._start_registry()
                segs = plan.initial_segments(nodes, topology)
                planned = [plan.plan_node(name, topology, store, i + 1, segs[i]) for i in range(nodes)]
                for p in planned:
                    lab._make_node(p)
                peers = [p.name for p in planned]
                for p in planned:
                    lab._start_daemon(p.name, [q for q in peers if q != p.name])
                lab.wait_ready(peers, timeout=wait)
                if lab.serves_api:
                    cluster_api.write_config(lab)
                    cluster_api.wait_nodes_ready(lab, wait)
            except BaseException:
                lab._teardown()
                raise
        lab.wait_routes(timeout=wait)
        return lab

    # -- building ----------------------------------------------------------------------------

    def _add_netns(self, ns: str) -> None:
        # Recorded first: a crash right after `ip netns add` still leaves it to `lab down`.
        self.st.namespaces.append(ns)
        self.st.save()
        try:
            netops.netns_add(ns)
        except netops.NetopsError as e:
            self.st.namespaces.remove(ns)
            self.st.save()
            raise LabError(str(e)) from None

    def _build_underlay(self) -> None:
        segs = plan.segments(self.st.name, self.st.topology)
        try:
            if self.st.topology == "l2":
                seg = segs[0]
                self._add_netns(seg.netns)
                netops.bridge(seg.netns, UNDERLAY_BRIDGE, f"{seg.gateway}/{seg.prefixlen}")
                return
            router = f"{self.st.name}-rt"
            self._add_netns(router)
            netops.sysctl(router, "net.ipv4.ip_forward", "1", "router: forwarding")
            for seg in segs:
                self._add_netns(seg.netns)
                netops.bridge(seg.netns, UNDERLAY_BRIDGE)
                ifname = f"eth{seg.name}"
                netops.veth(seg.netns, "rt", router, ifname, master=UNDERLAY_BRIDGE)
                self._big_tcp((seg.netns, "rt"), (router, ifname))
                netops.configure(router, ifname, f"{seg.gateway}/{seg.prefixlen}", None)
        except netops.NetopsError as e:
            raise LabError(f"build underlay: {e}") from None

    def _attach(self, ns: str, segment: str, port: str, address: str) -> None:
        seg = {s.name: s for s in plan.segments(self.st.name, self.st.topology)}[segment]
        try:
            netops.veth(seg.netns, port, ns, NODE_IF, master=UNDERLAY_BRIDGE)
            self._big_tcp((seg.netns, port), (ns, NODE_IF))
            netops.configure(ns, NODE_IF, f"{address}/{seg.prefixlen}", seg.gateway)
        except netops.NetopsError as e:
            raise LabError(f"attach {ns} to segment {segment}: {e}") from None

    def _big_tcp(self, *links: tuple[str, str]) -> None:
        """BIG TCP on underlay links (netns, dev) when the lab was asked for it."""
        if self.st.options.get("big_tcp"):
            for ns, dev in links:
                netops.gso_limit(ns, dev, BIG_TCP_GSO_SIZE)

    def _make_node(self, p: plan.NodePlan) -> None:
        self._add_netns(p.netns)
        self._attach(p.netns, p.segment, p.name, p.ip)
        d = self.st.node_dir(p.name)
        os.makedirs(d, mode=0o700, exist_ok=True)
        if self.st.options.get("tls"):
            ca = os.path.join(self.st.dir, "ca")
            # the identity a kubelet has at the API server; the static store's peers know each
            # other by the DNS SAN (the node's name)
            pki.make_node_cert(os.path.join(d, "tls"), os.path.join(ca, "ca.crt"),
                               os.path.join(ca, "ca.key"), p.name, p.ip,
                               common_name=f"system:node:{p.name}",
                               organizations=("system:nodes",))
        self.st.nodes[p.name] = {"index": p.index, "netns": p.netns, "segment": p.segment,
                                 "ip": p.ip, "pod_cidr": p.pod_cidr, "dir": d,
                                 "socket": os.path.join(d, "podnetd.sock")}
        self.st.save()

    # -- the cluster API ---------------------------------------------------------------------

    @property
    def serves_api(self) -> bool:
        """Every node serves the cluster API over TLS (an etcd lab with certificates)."""
        return self.st.store == "etcd" and bool(self.st.options.get("tls"))

    def api_server(self, node: str) -> str:
        """HOST:PORT of a node's cluster API listener."""
        return f"{self.st.nodes[node]['ip']}:{plan.API_PORT}"

    def audit_log(self, node: str) -> str:
        return os.path.join(self.st.nodes[node]["dir"], "audit.log")

    # -- etcd ------------------------------------------------------------------------------------

    @property
    def etcd_tls(self) -> bool:
        """etcd serves clients over TLS and demands a client certificate in a TLS lab."""
        return bool(self.st.options.get("tls"))

    @property
    def etcd_endpoint(self) -> str:
        scheme = "https" if self.etcd_tls else "http"
        return f"{scheme}://{plan.etcd_address(self.st.name, self.st.topology)}:{plan.ETCD_PORT}"

    def _etcd_dir(self) -> str:
        return os.path.join(self.st.dir, "etcd")

    def etcdctl_tls(self) -> list[str]:
        """etcdctl's TLS flags (etcd's own certificate is also good for client auth)."""
        if not self.etcd_tls:
            return []
        tls = os.path.join(self._etcd_dir(), "tls")
        return ["--cacert", os.path.join(self.st.dir, "ca", "ca.crt"),
                "--cert", os.path.join(tls, "node.crt"), "--key", os.path.join(tls, "node.key")]

    def _start_etcd(self) -> None:
        ns = f"{self.st.name}-etcd"
        self._add_netns(ns)
        address = plan.etcd_address(self.st.name, self.st.topology)
        self._attach(ns, "a", ETCD_NAME, address)
        if self.etcd_tls:
            ca = os.path.join(self.st.dir, "ca")
            pki.make_node_cert(os.path.join(self._etcd_dir(), "tls"), os.path.join(ca, "ca.crt"),
                               os.path.join(ca, "ca.key"), ETCD_NAME, address)
        self.start_etcd()

    def start_etcd(self, timeout: float = 20) -> None:
        ns, d = f"{self.st.name}-etcd", self._etcd_dir()
        os.makedirs(d, mode=0o700, exist_ok=True)
        url = self.etcd_endpoint
        argv = [*netops.nsenter(ns), "etcd", "--name", "lab", "--data-dir", os.path.join(d, "data"),
                "--listen-client-urls", url, "--advertise-client-urls", url,
                # peers: none; the peer port stays on the etcd namespace's loopback
                "--listen-peer-urls", "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "lab=http://127.0.0.1:2380", "--log-level", "warn",
                # the cluster API stores objects of up to 3 MiB (etcd allows 1.5 MiB by default)
                "--max-request-bytes", str(5 * 1024 * 1024)]
        if self.etcd_tls:
            # Clients need a certificate from the lab CA (each node has one): nobody else on the
            # underlay reads or writes node records.
            tls = os.path.join(d, "tls")
            argv += ["--cert-file", os.path.join(tls, "node.crt"), "--key-file", os.path.join(tls, "node.key"),
                     "--trusted-ca-file", os.path.join(self.st.dir, "ca", "ca.crt"), "--client-cert-auth"]
        self._spawn(ETCD_NAME, argv, os.path.join(d, "etcd.log"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = subprocess.run([*netops.nsenter(ns), "etcdctl", "--endpoints", url,
                                     *self.etcdctl_tls(), "--dial-timeout", "1s", "endpoint", "health"],
                                    capture_output=True, text=True)
            if health.returncode == 0:
                return
            if not procs.alive(self.st.processes[ETCD_NAME]):
                raise LabError(f"etcd exited:\n{self._tail(os.path.join(d, 'etcd.log'))}")
            time.sleep(0.1)
        raise LabError(f"etcd not healthy after {timeout}s at {url}")

    def stop_etcd(self, sig: int = signal.SIGTERM) -> None:
        record = self.st.processes.get(ETCD_NAME)
        if record:
            procs.stop(record, sig)

    # -- the image registry --------------------------------------------------------------------

    @property
    def registry(self) -> str | None:
        """HOST:PORT of the lab's image registry, or None when the lab has none."""
        if not self.st.options.get("registry"):
            return None
        return f"{plan.registry_address(self.st.name, self.st.topology)}:{plan.REGISTRY_PORT}"

    @property
    def registry_image(self) -> str:
        """The busybox test image's name in the lab's registry."""
        if self.registry is None:
            raise LabError(f"lab {self.st.name} runs no image registry")
        return f"{self.registry}/{imgreg.TEST_IMAGE}"

    def _registry_dir(self) -> str:
        return os.path.join(self.st.dir, imgreg.NAME)

    def _registry_ns(self) -> str:
        return f"{self.st.name}-{imgreg.NAME}"

    def _start_registry(self) -> None:
        ns = self._registry_ns()
        self._add_netns(ns)
        self._attach(ns, "a", imgreg.NAME, plan.registry_address(self.st.name, self.st.topology))
        self.start_registry()
        self.push_test_image()

    def push_test_image(self, name: str = imgreg.TEST_IMAGE) -> str:
        """Push the busybox test image to the lab's registry as NAME:TAG; its full name."""
        if self.registry is None:
            raise LabError(f"lab {self.st.name} runs no image registry")
        try:
            return imgreg.push_test_image(self._registry_ns(), self._registry_dir(),
                                          self.registry, name)
        except imgreg.RegistryError as e:
            raise LabError(f"registry: {e}") from None

    def start_registry(self, timeout: float = 20) -> None:
        """(Re)start the registry on the storage it had and wait until it listens."""
        d = self._registry_dir()
        os.makedirs(d, mode=0o700, exist_ok=True)
        config = imgreg.write_config(d, self.registry)
        log = os.path.join(d, "registry.log")
        # a restart appends to the log: only what this process writes says it listens
        offset = os.path.getsize(log) if os.path.exists(log) else 0
        with state.locked(self.st.name, self.st.root):
            record = self._spawn(imgreg.NAME, imgreg.argv(self._registry_ns(), config), log)
        try:
            imgreg.wait_listening(record, self.registry, timeout, offset)
        except imgreg.RegistryError as e:
            raise LabError(f"registry: {e}") from None

    def stop_registry(self, sig: int = signal.SIGTERM) -> None:
        record = self.st.processes.get(imgreg.NAME)
        if record:
            procs.stop(record, sig)

    # -- daemons -----------------------------------------------------------------------------

    def _spawn(self, key: str, argv: list[str], log: str) -> dict:
        record = procs.spawn(argv, log)
        self.st.processes[key] = record
        self.st.save()
        return record

    def daemon_argv(self, node: str, peers: list[str]) -> list[str]:
        n, o, flags = self.st.nodes[node], self.st.options, daemon_flags()
        argv = [*netops.nsenter(n["netns"]), sys.executable, "-m", "podnetd.main",
                "--node-name", node, "--socket", n["socket"],
                "--state-dir", os.path.join(n["dir"], "state")]
        leased = self.st.store == "etcd" and "--etcd-endpoints" in flags
        if not leased:
            argv += ["--pod-cidr", n["pod_cidr"] or plan.static_pod_cidr(n["index"])]
        wanted = [("--node-ip", n["ip"]), ("--cluster-cidr", plan.CLUSTER_CIDR),
                  ("--store", self.st.store), ("--node-timeout", o.get("node_timeout")),
                  ("--backend", o.get("backend")), ("--reconcile-interval", o.get("reconcile_interval")),
                  ("--vxlan-vni", o.get("vxlan_vni")), ("--vxlan-port", o.get("vxlan_port")),
                  # on the underlay, so one Prometheus in any lab namespace scrapes every node
                  ("--metrics-listen", f"{n['ip']}:{plan.METRICS_PORT}")]
        if self.st.store == "static":
            wanted += [("--listen", f"{n['ip']}:{plan.PEER_PORT}"),
                       ("--peers", ",".join(f"{self.st.nodes[p]['ip']}:{plan.PEER_PORT}"
                                            for p in peers) or None)]
        else:
            wanted += [("--etcd-endpoints", self.etcd_endpoint), ("--node-cidr-size", 24)]
            if self.etcd_tls:
                tls = os.path.join(n["dir"], "tls")
                wanted += [("--etcd-cafile", os.path.join(self.st.dir, "ca", "ca.crt")),
                           ("--etcd-certfile", os.path.join(tls, "node.crt")),
                           ("--etcd-keyfile", os.path.join(tls, "node.key"))]
        if o.get("tls") and (self.st.store == "static" or self.serves_api):
            tls = os.path.join(n["dir"], "tls")
            wanted += [("--tls-cert", os.path.join(tls, "node.crt")),
                       ("--tls-key", os.path.join(tls, "node.key")),
                       ("--tls-ca", os.path.join(self.st.dir, "ca", "ca.crt"))]
        if self.serves_api and "--node-labels" in flags and not any(
                a.startswith("--node-labels") for a in o.get("extra_args") or []):
            # which underlay segment the node is on, for selectors (a rack, a zone)
            wanted.append(("--node-labels", f"{SEGMENT_LABEL}={n['segment']}"))
        if self.serves_api and "--api-listen" in flags:
            wanted += [("--api-listen", self.api_server(node)),
                       ("--client-ca", os.path.join(self.st.dir, "ca", "ca.crt")),
                       ("--audit-log", self.audit_log(node))]
        wanted += [("--node-monitor-grace-period", o.get("node_monitor_grace_period")),
                   ("--node-lease-renew", o.get("node_lease_renew")),
                   ("--leader-elect-lease-duration", o.get("leader_elect_lease_duration")),
                   ("--insecure-registry", self.registry)]
        if "--cni-conf-dir" in flags:
            from ..install import REFERENCE_CNI_DIR
            conf_dir, bin_dir = self._node_cni_dirs(n)
            wanted += [("--cni-conf-dir", conf_dir),
                       ("--cni-bin-dir", f"{bin_dir}:{REFERENCE_CNI_DIR}")]
        for flag, value in wanted:
            if value is not None and flag in flags:
                argv += [flag, str(value)]
        if not o.get("tls") and self.st.store == "static" and "--insecure-peers" in flags:
            argv.append("--insecure-peers")  # said so explicitly: podnetd requires mTLS otherwise
        return argv + list(o.get("extra_args") or [])

    @staticmethod
    def _node_cni_dirs(n: dict) -> tuple[str, str]:
        return os.path.join(n["dir"], "cni", "net.d"), os.path.join(n["dir"], "cni", "bin")

    def _install_node_cni(self, n: dict) -> None:
        """The node's pod runtime reaches its own podnetd through CNI: a conf dir whose
        conflist names that node's relay socket, and a bin dir with the plugin (installed as
        `make install` does); the reference plugins are on --cni-bin-dir too."""
        from ..install import install, install_conflist
        conf_dir, bin_dir = self._node_cni_dirs(n)
        if not os.path.exists(os.path.join(bin_dir, "podnet")):
            install(bin_dir)
            install_conflist(conf_dir, bin_dir, socket=cni_socket_for(n["socket"]))

    def _start_daemon(self, node: str, peers: list[str]) -> None:
        n = self.st.nodes[node]
        n["peers"] = peers
        if "--cni-conf-dir" in daemon_flags():
            self._install_node_cni(n)
        self._spawn(f"podnetd/{node}", self.daemon_argv(node, peers),
                    os.path.join(n["dir"], "podnetd.log"))

    def start_daemon(self, node: str, timeout: float = 20) -> None:
        """(Re)start a node's podnetd with the arguments it had and wait until it serves."""
        with state.locked(self.st.name, self.st.root):
            self._start_daemon(node, self.st.nodes[node].get("peers", []))
        self.wait_ready([node], timeout)

    def stop_daemon(self, node: str, sig: int = signal.SIGTERM) -> None:
        record = self.st.processes.get(f"podnetd/{node}")
        if record:
            procs.stop(record, sig)

    def daemon(self, node: str) -> dict:
        return self.st.processes[f"podnetd/{node}"]

    def wait_ready(self, nodes: list[str], timeout: float = 30) -> None:
        """Until each daemon answers GetNodeInfo; learns leased pod CIDRs on the way."""
        deadline = time.monotonic() + timeout
        for node in nodes:
            n = self.st.nodes[node]
            while True:
                record = self.daemon(node)
                if not procs.alive(record):
                    raise LabError(f"podnetd on {node} exited:\n{self._tail(record['log'])}")
                # A fresh channel per try, and only once the socket exists: a channel that
                # failed once backs off for seconds before it dials again.
                info = self._node_info(n["socket"]) if os.path.exists(n["socket"]) else None
                if info is not None:
                    break
                if time.monotonic() > deadline:
                    raise LabError(f"podnetd on {node} not serving after {timeout}s:\n"
                                   f"{self._tail(record['log'])}")
                time.sleep(0.02)
            n["pod_cidr"] = info.pod_cidr
            n["ready_at"] = time.time()
        with state.locked(self.st.name, self.st.root):
            self.st.save()

    @staticmethod
    def _node_info(sock: str):
        with contextlib.closing(_grpc_channel(sock)) as ch:
            try:
                return node_pb2_grpc.NodeServiceStub(ch).GetNodeInfo(node_pb2.GetNodeInfoRequest(),
                                                                     timeout=2).node_info
            except grpc.RpcError:
                return None

    # -- join and leave ----------------------------------------------------------------------

    def add_node(self, segment: str | None = None, *, wait: float = 20, before_start=None) -> str:
        """A node joins: underlay port, certificate, podnetd seeded with the live nodes.
        before_start(node) runs once its namespace exists, before its daemon starts."""
        with state.locked(self.st.name, self.st.root):
            index = max((n["index"] for n in self.st.nodes.values()), default=0) + 1
            segment = segment or plan.join_segment([n["segment"] for n in self.st.nodes.values()],
                                                   self.st.topology)
            p = plan.plan_node(self.st.name, self.st.topology, self.st.store, index, segment)
            peers = list(self.st.nodes)
            self._make_node(p)
            if before_start:
                before_start(p.name)
            self._start_daemon(p.name, peers)
        self.wait_ready([p.name], wait)
        return p.name

    def remove_node(self, node: str, sig: int = signal.SIGKILL) -> None:
        """A node leaves abruptly: its daemon dies, its namespace and pods vanish."""
        with state.locked(self.st.name, self.st.root):
            self.stop_daemon(node, sig)
            for pod, p in list(self.st.pods.items()):
                if p["node"] == node:
                    self._delete_ns(p["netns"])
                    del self.st.pods[pod]
            self._delete_ns(self.st.nodes[node]["netns"])
            self.st.processes.pop(f"podnetd/{node}", None)
            del self.st.nodes[node]
            self.st.save()

    def _delete_ns(self, ns: str) -> None:
        try:
            netops.netns_del(ns)
        except netops.NetopsError as e:
            raise LabError(str(e)) from None
        if ns in self.st.namespaces:
            self.st.namespaces.remove(ns)

    # -- views ---------------------------------------------------------------------------------

    def node_names(self) -> list[str]:
        return sorted(self.st.nodes, key=lambda n: self.st.nodes[n]["index"])

    def socket(self, node: str) -> str:
        return self.st.nodes[node]["socket"]

    def netns(self, node: str) -> str:
        return self.st.nodes[node]["netns"]

    def cluster_view(self, node: str, timeout: float = 3):
        """(ListNodesResponse, ListRoutesResponse) from a node's daemon; None for a part the
        daemon does not offer (or when it is down)."""
        with contextlib.closing(_grpc_channel(self.socket(node))) as ch:
            stub = cluster_pb2_grpc.ClusterServiceStub(ch)
            out = []
            for method, req in ((stub.ListNodes, cluster_pb2.ListNodesRequest()),
                                (stub.ListRoutes, cluster_pb2.ListRoutesRequest())):
                try:
                    out.append(method(req, timeout=timeout))
                except grpc.RpcError:
                    out.append(None)
        return tuple(out)

    def missing_routes(self) -> dict[str, list[str]]:
        """Per node, the other nodes' pod CIDRs its kernel has no route for."""
        from .probe import route_dsts
        cidrs = {n: v["pod_cidr"] for n, v in self.st.nodes.items() if v.get("pod_cidr")}
        missing = {}
        for node, v in self.st.nodes.items():
            try:
                have = route_dsts(v["netns"])
            except Exception:  # noqa: BLE001 - a namespace mid-removal counts as missing all
                have = set()
            gaps = [c for other, c in cidrs.items() if other != node and c not in have]
            if gaps:
                missing[node] = gaps
        return missing

    def wait_routes(self, timeout: float = 30) -> dict[str, list[str]]:
        """Until every node routes to every other node's pod CIDR; returns what is still
        missing at the timeout (empty when converged)."""
        deadline = time.monotonic() + timeout
        while True:
            missing = self.missing_routes()
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)

    # -- teardown ------------------------------------------------------------------------------

    def down(self) -> None:
        with state.locked(self.st.name, self.st.root):
            self._teardown()

    def _teardown(self) -> None:
        """Stop every recorded process (by PID), delete every recorded namespace, remove the
        state dir. Keeps going past failures and reports them all at the end."""
        errors = self._remove_runtime_pods()
        daemons = [r for k, r in self.st.processes.items() if k.startswith("podnetd/")]
        others = [r for k, r in self.st.processes.items() if not k.startswith("podnetd/")]
        for group in (daemons, others):
            try:
                procs.stop_many(group, signal.SIGTERM, timeout=5)
            except OSError as e:
                errors.append(f"stop processes: {e}")
        errors += self._remove_left_containers()
        pods = [p["netns"] for p in self.st.pods.values()]
        for ns in pods + [ns for ns in reversed(self.st.namespaces) if ns not in pods]:
            try:
                netops.netns_del(ns)
            except netops.NetopsError as e:
                errors.append(str(e))
        errors += netops.unmount_under(self.st.dir)
        if errors:
            self.st.save()
            raise LabError(f"lab {self.st.name} down: " + "; ".join(errors))
        state.remove_dir(self.st.name, self.st.root)

    def _remove_runtime_pods(self) -> list[str]:
        """Stop and remove what each node's pod runtime runs (cluster pods included), through
        its podnetd, so no container, pod netns or mount outlives the lab. etcd goes first: a
        kubelet that cannot reach the API changes nothing (static stability), so it does not
        start again what is stopped here."""
        from ..api.podnet.v1 import pods_pb2, pods_pb2_grpc
        live = [n for n in self.st.nodes
                if f"podnetd/{n}" in self.st.processes and procs.alive(self.daemon(n))
                and os.path.exists(self.socket(n))]
        if not live:
            return []
        if self.st.store == "etcd":
            self.stop_etcd()
        errors = []
        for node in live:
            with contextlib.closing(_grpc_channel(self.socket(node))) as ch:
                stub = pods_pb2_grpc.PodServiceStub(ch)
                try:
                    listed = stub.ListPods(pods_pb2.ListPodsRequest(), timeout=5).pods
                    if not listed:
                        continue
                    req = pods_pb2.StopAllPodsRequest()
                    req.max_grace_period.seconds = 0
                    stub.StopAllPods(req, timeout=60)
                    for p in listed:
                        stub.RemovePod(pods_pb2.RemovePodRequest(name=p.name, namespace=p.namespace),
                                       timeout=60)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNIMPLEMENTED:   # a daemon without runtime
                        errors.append(f"{node}: remove pods: {e.details() or e.code().name}")
        return errors

    def _remove_left_containers(self) -> list[str]:
        """What a node's runtime left because its podnetd was already dead at teardown (killed
        by a test, crashed): the containers whose bundles lie in this lab's dir (runc's own
        list, removed by container id) and the pods' named network namespaces (the runtime's
        pod store in each node's state dir)."""
        errors = []
        try:
            listed = subprocess.run(["runc", "list", "--format", "json"], capture_output=True,
                                    text=True, timeout=30).stdout
            containers = json.loads(listed or "[]") or []
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            return [f"list containers: {e}"]
        inside = self.st.dir.rstrip("/") + "/"
        for c in containers:
            if str(c.get("bundle", "")).startswith(inside):
                done = subprocess.run(["runc", "delete", "--force", c["id"]],
                                      capture_output=True, text=True, timeout=30)
                if done.returncode != 0 and "does not exist" not in done.stderr:
                    errors.append(f"remove container {c['id']}: {done.stderr.strip()}")
        for node in self.st.nodes.values():
            store = os.path.join(node["dir"], "state", "pods")
            for name in sorted(os.listdir(store)) if os.path.isdir(store) else ():
                try:
                    with open(os.path.join(store, name)) as f:
                        netns = json.load(f).get("netns") or ""
                except (OSError, ValueError, AttributeError):
                    continue
                if netns and "/" not in netns and os.path.exists(f"/run/netns/{netns}"):
                    try:
                        netops.netns_del(netns)
                    except netops.NetopsError as e:
                        errors.append(str(e))
        return errors

    @staticmethod
    def _tail(path: str, lines: int = 15) -> str:
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"


def down(name: str = DEFAULT_NAME, root: str = state.ROOT) -> None:
    """Tear down a lab by name; a missing state file with a left-over dir just removes the dir."""
    if not state.exists(name, root):
        if os.path.isdir(state.lab_dir(name, root)):
            state.remove_dir(name, root)
            return
        raise LabError(f"no lab named {name!r}")
    Lab.open(name, root).down()
