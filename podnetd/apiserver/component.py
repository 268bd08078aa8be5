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

from . import bootstrap
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
        return EtcdObjectStore(list(cfg.etcd_endpoints), tls=cfg.etcd_tls)
    from .storage.sqlite import SqliteStore
    directory = os.path.join(cfg.state_dir, "cluster")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return SqliteStore(os.path.join(directory, "objects.db"))


class ApiServerComponent:
    def __init__(self, cfg: ApiServerConfig, authorize, audit=None, policy=()):
        self.cfg = cfg
        self.store = make_store(cfg)
        self.registry = Registry(self.store)
        self.api = Api(self.registry, authorize, audit)
        self.policy = list(policy)
        self.ready = asyncio.Event()       # set once the store answered and bootstrap ran
        self._task: asyncio.Task | None = None
        self._problem: str | None = f"{cfg.store_kind} store: not yet reached"

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._open())

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
        self._problem = None
        self.ready.set()
        log.info("cluster API: serving from the %s store", self.cfg.store_kind)

    def api_problem(self) -> str | None:
        """Why the API cannot serve yet (not `problem()`: the node's CNI readiness must never
        depend on the control plane)."""
        return self._problem

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self.store.close()
