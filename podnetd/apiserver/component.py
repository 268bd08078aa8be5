"""The cluster API component of podnetd: the store of record (etcd in a cluster with
`--store etcd`, else a SQLite file in the state dir), the request path (api.py) and, with
--api-listen, the TLS listener. The local unix socket serves the same API to root as
cluster admin (registered by the feature, wire.py).

The store is opened in the background with back-off: podnetd never exits because its store is
unreachable; until it answers, API calls get UNAVAILABLE and running pods carry on."""
import asyncio
import contextlib
import dataclasses
import logging
import os

from ..errors import StartupError
from . import bootstrap, objects, rbac
from .access import Access
from .audit import AuditLog
from .api import Api
from .registry import Registry
from .storage import StoreUnavailable

log = logging.getLogger(__name__)

RETRY_FIRST, RETRY_MAX = 0.5, 30.0


@dataclasses.dataclass(frozen=True)
class ApiServerConfig:
    node_name: str
    state_dir: str
    api_listen: str | None = None          # HOST:PORT of the TLS listener
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None              # the nodes' CA (forwarded logs/exec dial with it)
    client_ca: str | None = None
    token_auth_file: str | None = None
    audit_log: str | None = None
    etcd_endpoints: tuple[str, ...] = ()   # empty: the node's SQLite store
    etcd_tls: tuple[str | None, str | None, str | None] | None = None   # (ca, cert, key)

    @property
    def store_kind(self) -> str:
        return "etcd" if self.etcd_endpoints else "sqlite"


def make_store(cfg: ApiServerConfig):
    if cfg.etcd_endpoints:
        from .storage.etcd import EtcdObjectStore
        from .storage.watch_cache import WatchCache
        # one etcd watch per resource for all of this node's watchers (watch_cache.py)
        return WatchCache(EtcdObjectStore(list(cfg.etcd_endpoints), tls=cfg.etcd_tls))
    from .storage.sqlite import SqliteStore
    directory = os.path.join(cfg.state_dir, "cluster")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return SqliteStore(os.path.join(directory, "objects.db"))


class ApiServerComponent:
    def __init__(self, cfg: ApiServerConfig):
        self.cfg = cfg
        self.store = make_store(cfg)
        self.registry = Registry(self.store)
        self.access = Access(cfg.token_auth_file)
        self.audit = AuditLog(cfg.audit_log) if cfg.audit_log else None
        self.api = Api(self.registry, self.access.authorizer, self.audit)
        self.policy = rbac.bootstrap_objects()
        self.podio = None          # PodIOService servicer (podio.py), set by the feature
        self.front = None
        self.tls_server = None
        self.listen_port = 0
        self.ready = asyncio.Event()       # set once the store answered and bootstrap ran
        self._task: asyncio.Task | None = None
        self._problem: str | None = f"{cfg.store_kind} store: not yet reached"

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._open())
        if self.cfg.api_listen:
            await self._serve_tls()

    async def _serve_tls(self) -> None:
        """--api-listen: a TLS front (optional client certificates, see tls_front.py) relaying
        to a gRPC server on loopback that only the front's privileged source ports are
        believed from."""
        import grpc
        from ..server import MAX_CONCURRENT_RPCS, SERVER_OPTIONS
        from . import service
        from .tls_front import PeerGone, TlsFront, TlsFrontError
        # the API's requests are at most 3 MiB (objects.MAX_REQUEST_BYTES; refused with a clear
        # message up to 4 MiB, by gRPC beyond): what an unauthenticated peer can make this
        # node hold stays ~MAX_CONCURRENT_RPCS x 4 MiB
        options = [(k, v) for k, v in SERVER_OPTIONS if k != "grpc.max_receive_message_length"]
        options.append(("grpc.max_receive_message_length", 4 << 20))
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)

        def identity_of(context):
            try:
                ident = self.front.identity(context.peer())
            except PeerGone:
                raise objects.Unauthorized("Unauthorized: the client connection has closed") \
                    from None
            return ident.cert_der if ident is not None else None
        service.register(server, self.api, self.access.remote(identity_of), self.podio)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.tls_server = server
        self.front = TlsFront(self.cfg.api_listen, self.cfg.tls_cert, self.cfg.tls_key,
                              self.cfg.client_ca, f"127.0.0.1:{port}")
        try:
            self.listen_port = await self.front.start()
        except TlsFrontError as e:
            await server.stop(0)
            raise StartupError(str(e)) from None
        log.info("cluster API: TLS on %s (client certificates: %s, tokens: %s)",
                 self.cfg.api_listen, "yes" if self.cfg.client_ca else "no",
                 "yes" if self.cfg.token_auth_file else "no")

    async def _open(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                await self.store.start()
                self.registry.available = True
                await bootstrap.ensure(self.registry, self.policy)
                break
            except (StoreUnavailable, OSError) as e:
                self._problem = f"cluster API: {self.cfg.store_kind} store unavailable: {e}"
                log.warning("%s; retrying in %.0f s", self._problem, delay)
            except Exception as e:  # noqa: BLE001 - an erring store must not end podnetd
                self._problem = f"cluster API: {self.cfg.store_kind} store: {e}"
                log.warning("%s; retrying in %.0f s", self._problem, delay)
            self.registry.available = False
            with contextlib.suppress(Exception):
                await self.store.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
        await self.access.start(self.api)
        self.registry.namespace_cache = self.access.namespaces
        self._problem = None
        self.ready.set()
        log.info("cluster API: serving from the %s store", self.cfg.store_kind)

    def api_problem(self) -> str | None:
        """Why the API cannot serve yet (not `problem()`: the node's CNI readiness must never
        depend on the control plane)."""
        return self._problem

    async def stop(self) -> None:
        if self.front is not None:
            await self.front.stop()
        if self.tls_server is not None:
            await self.tls_server.stop(1)
        await self.access.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self.store.close()
