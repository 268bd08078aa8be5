"""The podnetd process: state-dir lock, node setup, reconcile, the API server, shutdown. The
features (podnetd/features.py) are built, prepared, started and stopped here, in their order."""
import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import signal
from dataclasses import replace

from grpc_health.v1 import health_pb2

from . import __version__, cni_relay, node, server, socket_dir
from .api.podnet.v1 import node_pb2
from .cni import CniHandler
from .config import Settings
from .endpoints import Endpoints, NodeNet
from .errors import StartupError
from .ipam import Ipam
from .kernel import ip_lib
from .kernel.errors import KernelError
from .events import EventRecorder, ObjectRef
from .metrics import GrpcMetricsInterceptor, InstrumentedCni, Metrics, gauge
from .wiring import DaemonContext, Node, NodePlan

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, settings: Settings, features=()):
        """features: podnetd.features.FEATURES (or fewer, as a test may want), the ones
        settings was parsed with."""
        self.cfg = settings.daemon
        self.settings = settings
        self.features = tuple(features)
        self.metrics = Metrics()
        self.events = EventRecorder(self.cfg.node_name)
        # what components get (podnetd/wiring.py); ctx.serving is set once the API and the CNI
        # relay answer, ctx.node once the node is set up
        self.ctx = DaemonContext(config=self.cfg, events=self.events, metrics=self.metrics,
                                 serving=asyncio.Event())
        self.plan = NodePlan(pod_cidr=self.cfg.pod_cidr, mtu=self.cfg.mtu)
        self.ipam: Ipam | None = None
        self.endpoints: Endpoints | None = None
        self.cni: CniHandler | None = None
        self.components: list = []  # started, in start order
        self._server = None
        self._relay: cni_relay.CniRelay | None = None
        self._health = None
        self._lock_fd: int | None = None
        self._stop = asyncio.Event()

    # -- start -------------------------------------------------------------------------------

    def _lock_state_dir(self) -> None:
        os.makedirs(self.cfg.state_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.cfg.state_dir, "podnetd.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(f"another podnetd is using state dir {self.cfg.state_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _prepare_socket(self) -> None:
        try:  # the sockets' 0700 directory (see socket_dir): checked before anything is bound
            socket_dir.prepare(self.cfg.socket, "socket")
        except (socket_dir.InsecureSocketDir, socket_dir.SocketPathTaken) as e:
            raise StartupError(str(e)) from None

    @property
    def serving(self) -> asyncio.Event:
        return self.ctx.serving

    def setup_node(self) -> None:
        """The bridge, IPAM and endpoints, from the core config and the node plan (self.plan,
        as the components' prepare() left it)."""
        cfg, plan = self.cfg, self.plan
        pod_cidr = plan.pod_cidr
        if not pod_cidr:  # config checks make this impossible; a plain error if it happens
            raise StartupError("no pod CIDR: give --pod-cidr")
        mtu = plan.mtu or node.uplink_mtu()
        try:
            node.setup(cfg.bridge, pod_cidr, mtu, cfg.node_name)
        except KernelError as e:
            raise StartupError(f"set up bridge {cfg.bridge} for {pod_cidr}: {e}") from None
        gso = plan.pod_gso_limit or node.uplink_gso_limit()
        net = NodeNet(bridge=cfg.bridge, gateway=node.gateway_of(pod_cidr),
                      prefixlen=int(pod_cidr.split("/")[1]), mtu=mtu,
                      gso_limit=node.pod_gso_limit(gso))
        self.plan = plan = replace(plan, mtu=mtu)
        self.ipam = Ipam(os.path.join(cfg.state_dir, "ipam.db"), pod_cidr, net.gateway)
        self.endpoints = Endpoints(net, self.ipam)
        self.cni = InstrumentedCni(CniHandler(self.endpoints, self.bridge_facts, self.status),
                                   self.metrics)
        self.metrics.add_source(self._ipam_metrics)
        self.ctx.node = Node(plan=plan, net=net, ipam=self.ipam, endpoints=self.endpoints,
                             bridge_facts=self.bridge_facts, status=self.status)
        counts = self.endpoints.reconcile()
        log.info("node %s: bridge %s gateway %s/%d mtu %d%s; reconciled endpoints: %s",
                 cfg.node_name, cfg.bridge, net.gateway, net.prefixlen, mtu,
                 f", pod gso {net.gso_limit} (BIG TCP)" if net.gso_limit else "", counts)

    async def start(self) -> None:
        self.events.bind_loop(asyncio.get_running_loop())
        self._lock_state_dir()
        self._prepare_socket()
        built = []  # (feature name, component) of the features that are on, in order
        for feature in self.features:
            cfg = self.settings.features.get(feature.name)
            on = cfg is not None or feature.config is None
            component = feature.component(self.ctx, cfg) if on and feature.component else None
            if component is not None:
                built.append((feature.name, component))
                self.ctx.components[feature.name] = component
        for _, component in built:
            prepare = getattr(component, "prepare", None)  # optional (podnetd/features.py)
            if prepare is not None:
                self.plan = await prepare(self.plan)
        await asyncio.get_running_loop().run_in_executor(None, self.setup_node)
        for _, component in built:
            await component.start()
            self.components.append(component)
        # the relay before the API: whoever waits for the API socket finds CNI working too
        self._relay = cni_relay.CniRelay(self.cfg.cni_socket, self.cni.handle)
        try:
            await self._relay.start()
        except cni_relay.RelaySocketError as e:
            self._relay = None
            raise StartupError(str(e)) from None
        # build() binds the socket (born 0600 inside the 0700 directory); start() serves it
        self._server, self._health, names = server.build(
            self, f"unix://{self.cfg.socket}", [GrpcMetricsInterceptor(self.metrics)],
            self._feature_services)
        await self._server.start()
        os.chmod(self.cfg.socket, 0o600)
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving.set()
        log.info("podnetd %s serving on %s, CNI relay on %s", __version__, self.cfg.socket,
                 self.cfg.cni_socket)
        self.events.record(ObjectRef("Node", self.cfg.node_name), "Normal", "Starting",
                           f"Starting podnetd {__version__}.")
        if self.cfg.metrics_listen:
            try:
                self.metrics.serve(self.cfg.metrics_listen)
            except OSError as e:
                raise StartupError(f"--metrics-listen {self.cfg.metrics_listen}: {e.strerror} "
                                   f"(an empty --metrics-listen turns metrics off)") from None

    def _feature_services(self, grpc_server) -> list[str]:
        """Every feature's services, with its component (None when it is off)."""
        names = []
        for feature in self.features:
            if feature.services:
                names += feature.services(grpc_server, self.ctx,
                                          self.ctx.components.get(feature.name))
        return names

    # -- facts -------------------------------------------------------------------------------

    def bridge_facts(self) -> dict:
        # The bridge's MAC is derived from the node's name and set (and repaired) when the
        # bridge is ensured: no netlink read per CNI ADD.
        return {"name": self.cfg.bridge, "mac": node.bridge_mac(self.cfg.node_name)}

    def status(self) -> tuple[bool, str]:
        link = ip_lib.link_get(self.cfg.bridge)
        if link is None:
            return False, f"bridge {self.cfg.bridge} is missing"
        free = self.ipam.free_count()  # "releasing" addresses count as taken until freed
        if free <= 0:
            return False, f"pod CIDR {self.plan.pod_cidr} has no free address"
        for component in self.components:
            problem = getattr(component, "problem", lambda: None)()
            if problem:
                return False, problem
        return True, f"ready: {free} free addresses in {self.plan.pod_cidr}"

    def _ipam_metrics(self):
        records = self.ipam.records()
        by_state = collections.Counter((r.state,) for r in records)
        yield gauge("podnet_ipam_pool_addresses", "Pod addresses of this node's pod CIDR "
                    "(gateway and reserved addresses excluded)", [], {(): self.ipam.capacity})
        yield gauge("podnet_ipam_addresses_in_use", "Pod addresses allocated (attached or "
                    "being released)", [], {(): len(records)})
        yield gauge("podnet_endpoints", "Pod attachments on this node, by state (active, "
                    "releasing)", ["state"],
                    by_state)

    def node_info(self) -> node_pb2.NodeInfo:
        net = self.endpoints.node
        return node_pb2.NodeInfo(
            node_name=self.cfg.node_name, pod_cidr=self.plan.pod_cidr, gateway=net.gateway,
            bridge=net.bridge, mtu=net.mtu, allocated=len(self.ipam.records()),
            capacity=self.ipam.capacity, version=__version__,
            pod_gso_max_size=net.gso_limit or ip_lib.LEGACY_GSO_MAX_SIZE)

    # -- run and stop ------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            # A start may wait long (a pod CIDR from a store that does not answer yet): a
            # signal meanwhile stops it rather than waiting for it.
            starting = asyncio.ensure_future(self.start())
            stopping = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                log.info("stopped while starting")
                return
            stopping.cancel()
            starting.result()
            await self._stop.wait()
            log.info("stopping (pods and their network stay as they are)")
        finally:
            await self.stop()

    async def stop(self) -> None:
        self.metrics.close()
        if self._server is not None:
            await self._server.stop(grace=2)
        if self._relay is not None:
            await self._relay.stop(grace=2)
        if self.endpoints is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.endpoints.reaper.drain)
        for component in reversed(self.components):
            with contextlib.suppress(Exception):
                await component.stop()
        if self.ipam is not None:
            self.ipam.close()
        with contextlib.suppress(FileNotFoundError):
            if self._server is not None:
                os.unlink(self.cfg.socket)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
