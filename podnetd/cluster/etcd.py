"""The etcd store (etcd v3 through its JSON gateway, with the maintained etcd3gw client).

Layout: /podnet/nodes/<block as a-b-c-d-len> = the owning node's record (JSON), attached to the
node's lease (TTL --node-timeout, renewed every third of it). A node leases its block with a
transaction that succeeds only if the key does not exist, so two nodes never get the same
block. It gets its own block back after a restart: the key still names it (lease not yet
expired), or the state dir remembers the block and it is still free.

While etcd is unreachable the last view is kept (nothing is withdrawn, routes stay) and every
call is retried; the lease is re-granted and the key re-made when etcd answers again.
"""
import asyncio
import ipaddress
import json
import logging
import os
import threading
import urllib.parse

import etcd3gw
from etcd3gw import exceptions as etcd_errors
from etcd3gw.lease import Lease
from etcd3gw.utils import _encode  # the client's transaction() takes base64 fields

from . import records as rec
from .records import NodeRecord
from .store import Store

log = logging.getLogger(__name__)

PREFIX = "/podnet/nodes/"
POLL = 1.0
RPC_TIMEOUT = 2.0


class StoreUnavailable(Exception):
    pass


def block_key(cidr: str) -> str:
    return PREFIX + cidr.replace(".", "-").replace("/", "-")


def blocks(cluster_cidr: str, size: int):
    return (str(b) for b in ipaddress.ip_network(cluster_cidr).subnets(new_prefix=size))


class EtcdStore(Store):
    name = "etcd"

    def __init__(self, cfg, on_change):
        super().__init__(cfg, on_change)
        self.endpoints = [u.strip() for u in cfg.etcd_endpoints.split(",") if u.strip()]
        self._clients = [self._client(u) for u in self.endpoints]
        self._current = 0
        self._lease = None
        self._own: NodeRecord | None = None
        self._records: dict[str, NodeRecord] = {}
        self._seen: dict[str, float] = {}
        self._synced = False
        self._error: str | None = None
        self._task = None
        self._wake = asyncio.Event()
        self._watch_cancel = None
        self._state_file = os.path.join(cfg.state_dir, "etcd-block.json")
        self._lock = threading.Lock()

    @staticmethod
    def _client(url: str):
        u = urllib.parse.urlparse(url)
        return etcd3gw.Etcd3Client(host=u.hostname, port=u.port or 2379, protocol=u.scheme,
                                   timeout=RPC_TIMEOUT, api_path="/v3/")

    # -- calls with endpoint failover ------------------------------------------------------

    def _call(self, fn):
        last = None
        for i in range(len(self._clients)):
            client = self._clients[(self._current + i) % len(self._clients)]
            try:
                result = fn(client)
                self._current = (self._current + i) % len(self._clients)
                return result
            except (etcd_errors.Etcd3Exception, OSError, ValueError) as e:
                last = e
        raise StoreUnavailable(f"etcd {','.join(self.endpoints)} unreachable: "
                               f"{type(last).__name__}: {str(last).splitlines()[0][:200] if str(last) else ''}")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- the block -------------------------------------------------------------------------

    def _remembered(self) -> str | None:
        try:
            with open(self._state_file) as f:
                return json.load(f).get("pod_cidr")
        except (OSError, ValueError):
            return None

    def _remember(self, cidr: str) -> None:
        tmp = self._state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pod_cidr": cidr}, f)
        os.replace(tmp, self._state_file)

    def _grant(self):
        ttl = max(2, int(round(self.cfg.node_timeout)))
        self._lease = self._call(lambda c: c.lease(ttl))
        return self._lease

    def _claim(self, cidr: str, value: str) -> bool:
        """Create the key for cidr with our lease, or take it over when it already names us."""
        key = block_key(cidr)
        lease = self._lease

        def txn(client):
            create = client.create(key, value, lease=lease)
            if create:
                return True
            got = client.get(key, metadata=True)
            if not got:
                return False
            data, meta = got[0]
            try:
                owner = json.loads(data).get("name")
            except ValueError:
                owner = None
            if owner != self.cfg.node_name:
                return False
            k = _encode(key)
            result = client.transaction({
                "compare": [{"key": k, "result": "EQUAL", "target": "MOD",
                             "mod_revision": meta["mod_revision"]}],
                "success": [{"request_put": {"key": k, "value": _encode(value),
                                             "lease": lease.id}}],
                "failure": []})
            return bool(result.get("succeeded"))
        return self._call(txn)

    def _owned_blocks(self) -> list[str]:
        found = []
        for data, meta in self._call(lambda c: c.get_prefix(PREFIX)):
            try:
                r = NodeRecord.from_dict(json.loads(data))
            except (ValueError, TypeError):
                continue
            if r.name == self.cfg.node_name:
                found.append(r.pod_cidr)
        return found

    def _lease_block(self, wanted: str | None, own_value) -> str:
        self._grant()
        candidates = [wanted] if wanted else [*self._owned_blocks(), self._remembered()]
        for cidr in filter(None, candidates):
            if self._claim(cidr, own_value(cidr)):
                return cidr
        if wanted:
            raise StoreUnavailable(f"pod CIDR {wanted} is leased by another node in etcd")
        for cidr in blocks(self.cfg.cluster_cidr, self.cfg.node_cidr_size):
            if self._claim(cidr, own_value(cidr)):
                return cidr
        raise StoreUnavailable(f"no free /{self.cfg.node_cidr_size} block left in {self.cfg.cluster_cidr}")

    async def lease_cidr(self, node_name: str, vtep_mac: str) -> str | None:
        started = rec.now_ms()

        # The whole record from the first write: a peer seeing a restarted node without its
        # VTEP MAC would drop its VXLAN routes to it for a moment.
        def value(cidr):
            return json.dumps(NodeRecord(node_name, self.cfg.node_ip, cidr, vtep_mac, rec.now_ms(),
                                         "", started).to_dict())
        deadline = asyncio.get_running_loop().time() + max(10.0, self.cfg.node_timeout)
        while True:
            try:
                cidr = await self._run(self._lease_block, self.cfg.pod_cidr, value)
                break
            except StoreUnavailable as e:
                remembered = self.cfg.pod_cidr or self._remembered()
                if "leased by another" in str(e) or "no free" in str(e):
                    raise
                if remembered:
                    # Keep the node working on its last block; the key is re-made once etcd answers.
                    log.warning("%s; starting with the remembered block %s", e, remembered)
                    self._error = str(e)
                    return remembered
                if asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("%s; retrying", e)
                await asyncio.sleep(1)
        self._remember(cidr)
        log.info("etcd store: leased %s (lease %s)", cidr, self._lease.id)
        return cidr

    # -- running ---------------------------------------------------------------------------

    async def start(self, own: NodeRecord) -> None:
        self._own = own
        self._records[own.name] = own
        self._task = asyncio.create_task(self._loop(), name="etcd-store")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._cancel_watch()
        # The lease is not revoked: a restarting node keeps its block and peers keep their
        # routes to it; a node that is really gone ages out after --node-timeout.

    def _cancel_watch(self):
        if self._watch_cancel:
            cancel, self._watch_cancel = self._watch_cancel, None
            try:
                cancel()
            except Exception:  # noqa: BLE001 - a dead stream may fail to close
                pass

    def _start_watch(self, loop):
        """A watch on the prefix wakes the loop at once on any change (the 1 s listing covers
        for a watch that died with the connection)."""
        if self._watch_cancel is not None:
            return
        try:
            events, cancel = self._clients[self._current].watch_prefix(PREFIX)
        except Exception as e:  # noqa: BLE001 - polling covers for a missing watch
            log.debug("etcd watch: %s", e)
            return

        def pump():
            try:
                for _event in events:
                    loop.call_soon_threadsafe(self._wake.set)
            except Exception as e:  # noqa: BLE001 - the stream broke: polling goes on
                log.debug("etcd watch ended: %s", e)
        threading.Thread(target=pump, name="etcd-watch", daemon=True).start()
        self._watch_cancel = cancel

    def _keepalive(self) -> None:
        """Renew the lease; re-grant it and re-make our key when it expired (etcd was away)."""
        value = json.dumps(self._own.to_dict())
        # through whichever endpoint answers, not the one that granted the lease
        ttl = self._call(lambda c: Lease(self._lease.id, c).refresh()) if self._lease else -1
        got = self._call(lambda c: c.get(block_key(self._own.pod_cidr))) if ttl > 0 else []
        key_ok = bool(got) and got[0] == value.encode()
        if not key_ok:
            if ttl <= 0:
                self._grant()
            if not self._claim(self._own.pod_cidr, value):
                raise StoreUnavailable(f"our block {self._own.pod_cidr} was taken by another node")
            log.info("etcd store: re-published %s (lease %s)", self._own.pod_cidr, self._lease.id)

    def _list(self) -> dict[str, NodeRecord]:
        found = {}
        for data, _meta in self._call(lambda c: c.get_prefix(PREFIX)):
            try:
                r = NodeRecord.from_dict(json.loads(data))
            except (ValueError, TypeError):
                continue
            found[r.name] = r
        return found

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        renew_every = max(0.5, self.cfg.node_timeout / 3)
        next_renew = 0.0
        while True:
            self._wake.clear()
            try:
                if loop.time() >= next_renew:
                    await self._run(self._keepalive)
                    next_renew = loop.time() + renew_every
                self._start_watch(loop)
                found = await self._run(self._list)
                if self._error:
                    log.info("etcd reachable again")
                self._error = None
                self._apply(found, loop.time())
            except StoreUnavailable as e:
                if self._error != str(e):
                    log.warning("%s; keeping the last view and retrying", e)
                self._error = str(e)
                self._cancel_watch()
                next_renew = 0.0
            try:
                await asyncio.wait_for(self._wake.wait(), POLL)
            except asyncio.TimeoutError:
                pass

    def _apply(self, found: dict[str, NodeRecord], now: float) -> None:
        found[self._own.name] = self._own
        changed = {n: r for n, r in found.items()} != self._records
        for name in found:
            self._seen[name] = now
        for name in set(self._seen) - set(found):
            del self._seen[name]
        self._records = found
        self._last_list = now
        self._synced = True
        if changed:
            self.on_change()

    def records(self) -> list[NodeRecord]:
        return sorted(self._records.values(), key=lambda r: r.name)

    def age(self, name: str) -> float:
        if name == self.cfg.node_name or name not in self._seen:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - self._seen[name])

    def synced(self) -> bool:
        return self._synced

    def problem(self) -> str | None:
        return self._error
