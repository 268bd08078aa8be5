"""The etcd store (etcd v3 through its JSON gateway, with the maintained etcd3gw client).

Layout: /podnet/nodes/<block as a-b-c-d-len> = the owning node's record (JSON), attached to the
node's lease (TTL --node-timeout, renewed every third of it). A node leases its block with a
transaction that succeeds only if the key does not exist, so two nodes never get the same
block. It gets its own block back after a restart: the key still names it (lease not yet
expired), or the state dir remembers the block and it is still free.

While etcd is unreachable the last view is kept (nothing is withdrawn, routes stay) and every
call is retried; the lease is re-granted and the key re-made when etcd answers again.

Every value read from etcd is untrusted: a record counts only when its key is a block of this
cluster (the cluster CIDR cut at --node-cidr-size), its value is a well-formed record of that very
block, and the key is attached to a lease (a podnetd always writes with one, so its record expires
with it). Anything else is logged once and ignored; one bad key never stops the loop. The claim
order that settles conflicts is etcd's create revision of the key, not a time the writer chose.
Limit (as in flannel): etcd without per-key RBAC lets any client with a valid certificate write
any key, so matching key and value stops mistakes and forged mismatches, not a writer who forges
both consistently; the client certificate (--etcd-certfile) is what keeps strangers out.
"""
import asyncio
import ipaddress
import json
import logging
import os
import threading
import urllib.parse

import dataclasses
import re

import etcd3gw
import requests
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


class StoreTlsError(StoreUnavailable):
    """Every endpoint failed the TLS handshake: a configuration fault, not an outage."""


class BadRecord(ValueError):
    pass


# Bounds on what a record may hold. A record is ~250 bytes of JSON; anything far larger is not one.
MAX_VALUE_BYTES = 4096


def block_key(cidr: str) -> str:
    return PREFIX + cidr.replace(".", "-").replace("/", "-")


def key_block(key) -> ipaddress.IPv4Network:
    """The block a key names (/podnet/nodes/10-98-1-0-24 is 10.98.1.0/24); BadRecord unless the
    key is exactly the canonical key of an IPv4 block."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    if not isinstance(key, str) or not key.startswith(PREFIX):
        raise BadRecord("not a key of " + PREFIX)
    parts = key[len(PREFIX):].split("-")
    if len(parts) != 5 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        raise BadRecord("the key does not name an IPv4 block (a-b-c-d-len)")
    try:
        block = ipaddress.IPv4Network(".".join(parts[:4]) + "/" + parts[4])
    except ValueError as e:
        raise BadRecord(f"the key does not name an IPv4 block: {e}") from None
    if block_key(str(block)) != key:
        raise BadRecord("the key is not the canonical key of its block")
    return block


def parse_value(value: bytes) -> dict:
    """The JSON object of a stored value; BadRecord for anything else (too large, not UTF-8,
    not JSON, nested too deep, not an object)."""
    if not isinstance(value, (bytes, bytearray)):
        raise BadRecord(f"value of type {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise BadRecord(f"value of {len(value)} bytes (a record is at most {MAX_VALUE_BYTES})")
    try:
        data = json.loads(bytes(value).decode("utf-8"))
    except RecursionError:
        raise BadRecord("value nested too deep") from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadRecord(f"value is not JSON: {str(e)[:100]}") from None
    if not isinstance(data, dict):
        raise BadRecord(f"value is a JSON {type(data).__name__}, not an object")
    return data


def record_from_kv(key, value: bytes, cluster_cidr: str, block_size: int) -> NodeRecord:
    """The record stored at key, checked field by field and against the key: BadRecord unless
    it describes exactly the block its key names, a block of this cluster."""
    block = key_block(key)
    cluster = ipaddress.IPv4Network(cluster_cidr)
    if block.prefixlen != block_size or not block.subnet_of(cluster):
        raise BadRecord(f"{block} is not a /{block_size} block of the cluster CIDR {cluster_cidr}")
    data = parse_value(value)
    if data.get("pod_cidr") != str(block):   # a value names the block of its own key
        raise BadRecord(f"field 'pod_cidr': {str(data.get('pod_cidr'))[:64]} is not the key's "
                        f"block {block}")
    try:
        record = rec.validate_record(data, cluster_cidr=cluster_cidr, cidr_size=block_size)
    except rec.RecordError as e:
        raise BadRecord(f"field {e.field!r}: {e.why}") from None
    if ipaddress.IPv4Address(record.underlay_ip) in cluster:
        raise BadRecord(f"field 'underlay_ip': {record.underlay_ip} lies inside the cluster CIDR "
                        f"{cluster_cidr}")
    return record


def _revision(meta: dict, name: str) -> int:
    """A revision or lease id from the JSON gateway (int64s arrive as strings; 0 is omitted)."""
    try:
        return int(meta.get(name) or 0)
    except (TypeError, ValueError):
        return 0


def records_from_listing(listing, cluster_cidr: str, block_size: int):
    """The valid records of a prefix listing [(value, meta)], by node name, each with started_ms
    set to its key's create revision (etcd's order of claims, which no writer chooses), and
    [(key, mod revision, reason)] for every entry ignored. A name found at two keys keeps the
    older claim: a second key naming a node later is reported, never lets its writer move the
    node's traffic (a node that really moved waits until its old key's lease expires)."""
    found: dict[str, tuple[int, int, NodeRecord]] = {}  # name -> (create rev, mod rev, record)
    ignored: list[tuple[str, int, str]] = []
    for value, meta in listing:
        meta = meta if isinstance(meta, dict) else {}
        key = meta.get("key", b"")
        key_text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        key_text = key_text[:128]
        mod = _revision(meta, "mod_revision")
        try:
            if not _revision(meta, "lease"):
                raise BadRecord("the key has no lease (it would never expire)")
            r = record_from_kv(key, value, cluster_cidr, block_size)
        except BadRecord as e:
            ignored.append((key_text, mod, str(e)))
            continue
        created = _revision(meta, "create_revision")
        r = dataclasses.replace(r, started_ms=created)
        held = found.get(r.name)
        if held is None or created < held[0]:
            if held is not None:
                ignored.append((block_key(held[2].pod_cidr), held[1],
                                f"node {r.name} holds the older block {r.pod_cidr}"))
            found[r.name] = (created, mod, r)
        else:
            ignored.append((key_text, mod, f"node {r.name} holds the older block {held[2].pod_cidr}"))
    return {name: r for name, (_, _, r) in found.items()}, ignored


def blocks(cluster_cidr: str, size: int):
    return (str(b) for b in ipaddress.ip_network(cluster_cidr).subnets(new_prefix=size))


def _detail(e) -> str:
    """What went wrong, with the cause etcd3gw keeps only as text (detail_text)."""
    text = getattr(e, "detail_text", None) or str(e)
    return text if isinstance(text, str) else repr(text)


def _first_line(e) -> str:
    text = _detail(e)
    return text.splitlines()[0][:300] if text else ""


def _tls_failure(e) -> bool:
    cause = e.__context__ or e.__cause__
    return isinstance(cause, requests.exceptions.SSLError) or "SSLError" in _detail(e)


def _tls_reason(e) -> str:
    text = _detail(e)
    m = re.search(r"\[SSL: ([A-Z0-9_]+)\] ([^(]*)", text)
    if m:
        return f"{m.group(2).strip()} ({m.group(1)})"
    if "EOF occurred" in text or "SSLEOFError" in text or "SSLZeroReturnError" in text:
        return "etcd closed the connection during the handshake"
    m = re.search(r"SSLError\((.*)\)\)", text)
    return (m.group(1) if m else text)[:200]


class EtcdStore(Store):
    name = "etcd"

    def __init__(self, cfg, node, on_change):
        super().__init__(cfg, node, on_change)
        self.endpoints = list(cfg.etcd_endpoints)
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
        self._state_file = os.path.join(node.state_dir, "etcd-block.json")
        self._lock = threading.Lock()
        self._ignored_logged: dict[str, int] = {}  # key -> the mod revision logged
        if any(u.startswith("http://") for u in self.endpoints):
            log.warning("etcd store over plain http (%s): anyone on the path can read and write "
                        "node records; use https:// with --etcd-cafile/--etcd-certfile/--etcd-keyfile",
                        ",".join(cfg.etcd_endpoints))

    def _client(self, url: str):
        u = urllib.parse.urlparse(url)
        session = requests.Session()
        # Not the environment's REQUESTS_CA_BUNDLE, proxies or .netrc: the CA that signs etcd is
        # --etcd-cafile and nothing else (with trust_env, the variable silently replaces it).
        session.trust_env = False
        if self.cfg.etcd_cafile:
            session.verify = self.cfg.etcd_cafile
        if self.cfg.etcd_certfile:
            session.cert = (self.cfg.etcd_certfile, self.cfg.etcd_keyfile)
        return etcd3gw.Etcd3Client(host=u.hostname, port=u.port or 2379, protocol=u.scheme,
                                   timeout=RPC_TIMEOUT, api_path="/v3/", session=session)

    # -- calls with endpoint failover ------------------------------------------------------

    def _call(self, fn):
        failures = []
        for i in range(len(self._clients)):
            index = (self._current + i) % len(self._clients)
            try:
                result = fn(self._clients[index])
                self._current = index
                return result
            except (etcd_errors.Etcd3Exception, OSError, ValueError) as e:
                failures.append((self.endpoints[index], e))
        tls = [(url, e) for url, e in failures if _tls_failure(e)]
        if tls and len(tls) == len(failures):
            url, e = tls[0]
            raise StoreTlsError(f"etcd {url}: TLS handshake failed: {_tls_reason(e)}; "
                                f"{self._tls_hint(e)}")
        url, last = failures[-1]
        raise StoreUnavailable(f"etcd {','.join(self.endpoints)} unreachable: "
                               f"{type(last).__name__}: {_first_line(last)}")

    def _tls_hint(self, e) -> str:
        cfg = self.cfg
        if "CERTIFICATE_VERIFY_FAILED" in _detail(e):
            return (f"etcd's server certificate is not signed by "
                    f"{('--etcd-cafile ' + cfg.etcd_cafile) if cfg.etcd_cafile else 'a system CA (no --etcd-cafile given)'}")
        if not cfg.etcd_certfile:
            return "etcd refused the connection: it requires a client certificate (--etcd-certfile/--etcd-keyfile)"
        return (f"etcd refused the connection: is --etcd-certfile {cfg.etcd_certfile} signed by the CA "
                f"etcd trusts (--trusted-ca-file)?")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- the block -------------------------------------------------------------------------

    def _remembered(self) -> str | None:
        try:
            with open(self._state_file) as f:
                cidr = json.load(f).get("pod_cidr")
            key_block(block_key(cidr))  # a well-formed block, or nothing remembered
            return cidr
        except (OSError, ValueError, AttributeError, TypeError, RecursionError):
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
                owner = record_from_kv(key, data, self.cfg.cluster_cidr, self.cfg.node_cidr_size).name
            except BadRecord:
                owner = None  # garbage at the key is nobody's record, and not ours to overwrite
            if owner != self.node.name:
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
                r = record_from_kv(meta.get("key", b""), data, self.cfg.cluster_cidr,
                                   self.cfg.node_cidr_size)
            except BadRecord:
                continue
            if r.name == self.node.name:
                found.append(r.pod_cidr)
        return found

    def _lease_block(self, wanted: str | None, own_value) -> str:
        self._grant()
        # What our state dir remembers first: another key that names us may not be ours.
        candidates = [wanted] if wanted else [self._remembered(), *self._owned_blocks()]
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
            return json.dumps(NodeRecord(node_name, self.node.ip, cidr, vtep_mac, rec.now_ms(),
                                         "", started).to_dict())
        deadline = asyncio.get_running_loop().time() + max(10.0, self.cfg.node_timeout)
        while True:
            try:
                cidr = await self._run(self._lease_block, self.node.pod_cidr, value)
                break
            except StoreUnavailable as e:
                remembered = self.node.pod_cidr or self._remembered()
                if isinstance(e, StoreTlsError) or "leased by another" in str(e) or "no free" in str(e):
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
        found, ignored = records_from_listing(self._call(lambda c: c.get_prefix(PREFIX)),
                                              self.cfg.cluster_cidr, self.cfg.node_cidr_size)
        # Logged once per key and revision (the listing repeats every second; the reason may
        # name the current time, so it is not part of what is remembered).
        for key, mod, reason in ignored:
            if self._ignored_logged.get(key) != mod:
                log.warning("etcd store: ignoring %s: %s", key, reason)
        self._ignored_logged = {key: mod for key, mod, _ in ignored}
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
            except Exception as e:  # noqa: BLE001 - the store loop must outlive any surprise
                if self._error != f"etcd store: {e}":
                    log.exception("etcd store: %s; keeping the last view and retrying", e)
                self._error = f"etcd store: {e}"
                next_renew = 0.0
            try:
                await asyncio.wait_for(self._wake.wait(), POLL)
            except asyncio.TimeoutError:
                pass

    def _apply(self, found: dict[str, NodeRecord], now: float) -> None:
        # Our own record as we publish it, ordered among claims by our key's create revision.
        listed = found.get(self._own.name)
        own_order = listed.started_ms if listed and listed.pod_cidr == self._own.pod_cidr else 0
        found[self._own.name] = dataclasses.replace(self._own, started_ms=own_order)
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
        if name == self.node.name or name not in self._seen:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - self._seen[name])

    def synced(self) -> bool:
        return self._synced

    def last_sync(self) -> float | None:
        return self._last_list if self._synced else None

    def problem(self) -> str | None:
        return self._error
