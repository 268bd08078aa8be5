"""The etcd store (etcd v3 through its JSON gateway, with the maintained etcd3gw client).

Layout: a node's claim on its pod CIDR block is apart from its liveness (flannel's subnet lease
and Kubernetes' Node vs its node Lease):
  /podnet/nodes/<block as a-b-c-d-len>  the claim: the owning node's record (JSON), attached to
      the node's claim lease (TTL CLAIM_TTL = 24 h, renewed every CLAIM_RENEW)
  /podnet/alive/<block>                 liveness: {"name": owner}, attached to the node's
      liveness lease (TTL --node-timeout, renewed every third of it)
A node whose liveness lapsed (it or its link to etcd is down) is NotReady, not gone: its block
stays reserved and every other node keeps routing to it. Only a claim that is deleted (the
node is deleted: release_claim(); `podnetd --cleanup`) or expired (24 h without a renewal)
frees the block and withdraws its routes. Why a 24 h lease and not a key without one: a node
that vanishes without being deleted (a VM destroyed) must free its block some day, as with
flannel; and a key without a lease stays something a podnetd never writes (see below).

A node claims its block with a transaction that succeeds only if the key does not exist, so two
nodes never get the same block. It gets its own block back after a restart: the key still names
it (it adopts the key's live claim lease rather than leaving one behind), or the state dir
remembers the block and it is still free. A node holds one block: claiming one releases any
other claim naming it.

podnetd never exits because etcd is unreachable or answers nonsense: with --pod-cidr, or a block
remembered in the state dir, it starts at once with that block and confirms the claim when etcd
answers; with neither it waits, retrying with a capped back-off. While etcd is unreachable the
last view is kept (nothing is withdrawn, routes stay) and every call is retried; leases are
re-granted and keys re-made when etcd answers again.

Every value read from etcd is untrusted: a record counts only when its key is a block of this
cluster (the cluster CIDR cut at --node-cidr-size), its value is a well-formed record of that very
block, and the key is attached to a lease (a podnetd always writes with one, so its record expires
with it). A liveness key counts only when it is attached to a lease and names the holder of the
claim on its block (a forged one can at most show a dead node as Ready; routing never depends on
it). Anything else is logged once and ignored; one bad key never stops the loop. The claim
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
import random
import threading
import time
import urllib.parse

import dataclasses
import re

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.lease import Lease
from etcd3gw.utils import _decode, _encode, _increment_last_byte  # its wire encoding

from ..aio import within
from . import records as rec
from .records import NodeRecord
from .store import Store

log = logging.getLogger(__name__)

PREFIX = "/podnet/nodes/"        # claims
ALIVE_PREFIX = "/podnet/alive/"  # liveness
POLL = 1.0
RPC_TIMEOUT = 2.0
CLAIM_TTL = 24 * 3600  # flannel's subnet lease
CLAIM_RENEW = 300.0    # a claim lease is renewed this often (and whenever its key is re-made)
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 8.0  # waiting for etcd with no block known


class StoreUnavailable(Exception):
    pass


class StoreTlsError(StoreUnavailable):
    """Every endpoint failed the TLS handshake: a configuration fault, not an outage."""


class ClaimRefused(Exception):
    """--pod-cidr names a block that etcd shows claimed by another node: a configuration
    conflict that waiting does not end (claims last CLAIM_TTL)."""


class NoFreeBlock(Exception):
    """Every block of the cluster CIDR is claimed (one frees when a node is deleted)."""


class BadRecord(ValueError):
    pass


# Bounds on what a record may hold. A record is ~250 bytes of JSON; anything far larger is not one.
MAX_VALUE_BYTES = 4096


def block_key(cidr: str, prefix: str = PREFIX) -> str:
    return prefix + cidr.replace(".", "-").replace("/", "-")


def alive_key(cidr: str) -> str:
    return block_key(cidr, ALIVE_PREFIX)


def key_block(key, prefix: str = PREFIX) -> ipaddress.IPv4Network:
    """The block a key names (/podnet/nodes/10-98-1-0-24 is 10.98.1.0/24); BadRecord unless the
    key is exactly the canonical key of an IPv4 block."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    if not isinstance(key, str) or not key.startswith(prefix):
        raise BadRecord("not a key of " + prefix)
    parts = key[len(prefix):].split("-")
    if len(parts) != 5 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        raise BadRecord("the key does not name an IPv4 block (a-b-c-d-len)")
    try:
        block = ipaddress.IPv4Network(".".join(parts[:4]) + "/" + parts[4])
    except ValueError as e:
        raise BadRecord(f"the key does not name an IPv4 block: {e}") from None
    if block_key(str(block), prefix) != key:
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
    node's traffic (a node that really moves releases its old claim when it claims the new
    block)."""
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


def _key_text(meta) -> str:
    key = meta.get("key", b"") if isinstance(meta, dict) else b""
    return (key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key))[:128]


def alive_from_listing(listing, claims: dict[str, NodeRecord]):
    """The names of the nodes whose liveness key is current, from a listing [(value, meta)] of
    ALIVE_PREFIX and the valid claims by name; and [(key, mod revision, reason)] for every
    liveness key ignored. A key counts when it has a lease and names the holder of the claim
    on its block. A key of a block nobody claims is skipped quietly: its claim was just
    released (the key goes with its lease)."""
    holders = {r.pod_cidr: name for name, r in claims.items()}
    alive: set[str] = set()
    ignored: list[tuple[str, int, str]] = []
    for value, meta in listing:
        meta = meta if isinstance(meta, dict) else {}
        key_text, mod = _key_text(meta), _revision(meta, "mod_revision")
        try:
            block = str(key_block(meta.get("key", b""), ALIVE_PREFIX))
            if block not in holders:
                continue
            if not _revision(meta, "lease"):
                raise BadRecord("the key has no lease (it would never expire)")
            name = parse_value(value).get("name")
            if name != holders[block]:
                raise BadRecord(f"field 'name': {str(name)[:64]} does not hold the claim on "
                                f"{block} ({holders[block]} does)")
        except BadRecord as e:
            ignored.append((key_text, mod, str(e)))
            continue
        alive.add(name)
    return alive, ignored


def owner_name(value) -> str | None:
    """The node a stored value names, without the cluster's checks (to release a node's claims
    whatever else is wrong with them), or None."""
    try:
        name = parse_value(value).get("name")
    except BadRecord:
        return None
    return name if isinstance(name, str) else None


def _range(client, key: str, prefix: bool = False) -> list[tuple[bytes, dict]]:
    """[(value, metadata)] of key (or every key under it), as etcd3gw's get(metadata=True), but
    only from an answer that is etcd's: one with a header revision. An empty answer decides
    things (a free block, a departed node), so a proxy's or a half-started gateway's "{}" must
    not pass for one."""
    payload = {"key": _encode(key)}
    if prefix:
        payload["range_end"] = _encode(_increment_last_byte(key))
    result = client.post(client.get_url("/kv/range"), json=payload)
    header = result.get("header") if isinstance(result, dict) else None
    if not isinstance(header, dict) or not _revision(header, "revision"):
        raise etcd_errors.Etcd3Exception(f"not an etcd answer: {str(result)[:100]}")
    out = []
    for item in result.get("kvs", []):
        item = dict(item)
        item["key"] = _decode(item["key"])
        out.append((_decode(item.pop("value", "")), item))
    return out


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
        self._claim_lease: Lease | None = None   # CLAIM_TTL: holds our block
        self._alive_lease: Lease | None = None   # --node-timeout: says we are Ready
        self._alive_published = False
        self._claim_renewed = 0.0                 # time.monotonic() of the last claim renewal
        self._own: NodeRecord | None = None
        self._records: dict[str, NodeRecord] = {}
        self._alive: set[str] = set()
        self._heard: dict[str, float] = {}        # name -> loop time its liveness was last seen
        self._own_heard: float | None = None      # loop time of our last successful renewal
        self._synced = False
        self._error: str | None = None
        self._task = None
        self._wake = asyncio.Event()
        self._watch_cancel = None
        # where the leased block is remembered across restarts (none for --cleanup's release)
        self._state_file = os.path.join(node.state_dir, "etcd-block.json") \
            if node.state_dir else None
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
            except (KeyError, TypeError, AttributeError, IndexError) as e:
                # An answer that is not etcd's (a proxy's page, a half-started gateway): the
                # client trips on its shape. An erring store, not a reason to stop.
                failures.append((self.endpoints[index], etcd_errors.Etcd3Exception(
                    f"malformed answer ({type(e).__name__}: {str(e)[:100]})")))
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
        if self._state_file is None:
            return
        tmp = self._state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pod_cidr": cidr}, f)
        os.replace(tmp, self._state_file)

    def _claim_lease_for(self, client) -> Lease:
        if self._claim_lease is None:
            self._claim_lease = client.lease(CLAIM_TTL)
            self._claim_renewed = time.monotonic()
        return self._claim_lease

    def _alive_lease_for(self, client) -> Lease:
        if self._alive_lease is None:
            self._alive_lease = client.lease(max(2, int(round(self.cfg.node_timeout))))
        return self._alive_lease

    def _owner(self, key: str, data) -> str | None:
        try:
            return record_from_kv(key, data, self.cfg.cluster_cidr, self.cfg.node_cidr_size).name
        except BadRecord:
            return None  # garbage at the key is nobody's record, and not ours to overwrite

    def _claim(self, cidr: str, value: str) -> bool:
        """Make the claim key of cidr ours with our claim lease: create it, or take it over when
        it already names us; our liveness key is written in the same transaction (a node is
        never seen claimed but not yet alive). False only when etcd shows the block held by
        another (or by garbage); StoreUnavailable when etcd's answers do not add up (a create
        refused, yet no key)."""
        key = block_key(cidr)
        k = _encode(key)

        def puts(client, lease):
            alive = self._alive_lease_for(client)
            return [{"request_put": {"key": k, "value": _encode(value), "lease": lease.id}},
                    {"request_put": {"key": _encode(alive_key(cidr)), "lease": alive.id,
                                     "value": _encode(json.dumps({"name": self.node.name}))}}]

        def txn(client):
            got = _range(client, key)
            if not got:
                result = client.transaction({
                    "compare": [{"key": k, "result": "EQUAL", "target": "CREATE",
                                 "create_revision": 0}],
                    "success": puts(client, self._claim_lease_for(client)), "failure": []})
                if result.get("succeeded"):
                    return True
                got = _range(client, key)  # another node was quicker, or nonsense
                if not got:
                    raise StoreUnavailable(f"etcd refused to create {key}, yet it does not exist")
            data, meta = got[0]
            if self._owner(key, data) != self.node.name:
                return False
            held = _revision(meta, "lease")
            lease = self._claim_lease
            if held and (lease is None or lease.id != held):
                # Our claim from before a restart: keep its lease rather than leave one behind,
                # if it is a claim lease (a liveness-sized one is a leftover of the old layout).
                if Lease(held, client).refresh() >= CLAIM_TTL // 2:
                    lease = self._claim_lease = Lease(held, client)
                    self._claim_renewed = time.monotonic()
            lease = lease or self._claim_lease_for(client)
            result = client.transaction({
                "compare": [{"key": k, "result": "EQUAL", "target": "MOD",
                             "mod_revision": meta["mod_revision"]}],
                "success": puts(client, lease), "failure": []})
            return bool(result.get("succeeded"))
        if not self._call(txn):
            return False
        self._alive_published = True
        self._release(self.node.name, keep=cidr)
        return True

    def _release(self, node_name: str, keep: str | None = None) -> list[str]:
        """Delete every claim naming node_name (but keep's) and its liveness key; each delete
        only if the claim is unchanged since read, so a claim made meanwhile stays. The blocks
        released."""
        released = []
        for data, meta in self._call(lambda c: _range(c, PREFIX, prefix=True)):
            key = _key_text(meta)
            try:
                cidr = str(key_block(key))
            except BadRecord:
                continue
            if cidr == keep or owner_name(data) != node_name:
                continue
            k = _encode(key)
            result = self._call(lambda c: c.transaction({
                "compare": [{"key": k, "result": "EQUAL", "target": "MOD",
                             "mod_revision": meta["mod_revision"]}],
                "success": [{"request_delete_range": {"key": k}},
                            {"request_delete_range": {"key": _encode(alive_key(cidr))}}],
                "failure": []}))
            if result.get("succeeded"):
                log.info("etcd store: released the claim of node %s on %s", node_name, cidr)
                released.append(cidr)
        return released

    def _lease_block(self, wanted: str | None, own_value) -> str:
        listing = self._call(lambda c: _range(c, PREFIX, prefix=True))
        taken, mine = set(), []
        for data, meta in listing:
            key = _key_text(meta)
            taken.add(key)
            if self._owner(key, data) == self.node.name:
                mine.append(str(key_block(key)))
        # What our state dir remembers first: another key that names us may not be ours.
        candidates = [wanted] if wanted else [self._remembered(), *mine]
        for cidr in filter(None, candidates):
            if self._claim(cidr, own_value(cidr)):
                return cidr
        if wanted:
            raise ClaimRefused(f"pod CIDR {wanted} is claimed by another node in etcd "
                               f"({block_key(wanted)}); a claim is freed when its node is deleted")
        for cidr in blocks(self.cfg.cluster_cidr, self.cfg.node_cidr_size):
            if block_key(cidr) not in taken and self._claim(cidr, own_value(cidr)):
                return cidr
        raise NoFreeBlock(f"no free /{self.cfg.node_cidr_size} block left in "
                          f"{self.cfg.cluster_cidr} (a block is freed when its node is deleted)")

    async def lease_cidr(self, node_name: str, vtep_mac: str) -> str | None:
        started = rec.now_ms()

        # The whole record from the first write: a peer seeing a restarted node without its
        # VTEP MAC would drop its VXLAN routes to it for a moment.
        def value(cidr):
            return json.dumps(NodeRecord(node_name, self.node.ip, cidr, vtep_mac, rec.now_ms(),
                                         "", started).to_dict())
        loop = asyncio.get_running_loop()
        waited_since, attempts, delay, logged = loop.time(), 0, BACKOFF_FIRST, set()
        while True:
            attempts += 1
            try:
                cidr = await self._run(self._lease_block, self.node.pod_cidr, value)
                break
            except (StoreTlsError, ClaimRefused):
                raise  # configuration faults: one clear line at start
            except (StoreUnavailable, NoFreeBlock) as e:
                known = self.node.pod_cidr or self._remembered()
                if known and isinstance(e, StoreUnavailable):
                    # Serve pods on the block we know; the claim is confirmed once etcd answers.
                    log.warning("etcd store: %s; starting with the %s block %s and claiming it "
                                "when etcd answers", e,
                                "--pod-cidr" if self.node.pod_cidr else "remembered", known)
                    self._error = str(e)
                    return known
                # One line per kind of failure, not one per attempt.
                if str(e) not in logged:
                    logged.add(str(e))
                    log.warning("etcd store: %s; no pod CIDR known yet (no --pod-cidr, none "
                                "remembered in %s): retrying every %g s at most", e,
                                self.node.state_dir, BACKOFF_CAP)
                self._error = str(e)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # nodes out of step
                delay = min(BACKOFF_CAP, delay * 2)
        if attempts > 1:
            log.info("etcd store: etcd answered after %d attempts (%.0f s)", attempts,
                     loop.time() - waited_since)
        self._error = None
        self._remember(cidr)
        log.info("etcd store: leased %s (claim lease %s)", cidr, self._claim_lease.id)
        return cidr

    async def release_claim(self, node_name: str) -> list[str]:
        """The node is deleted: free its block (its claim and liveness keys go; every node
        withdraws its routes). A node that is still running claims a block again, as a kubelet
        registers its Node again. Returns the blocks released; StoreUnavailable when etcd does
        not answer."""
        return await self._run(self._release, node_name)

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
        # No lease is revoked: a restarting node keeps its block and peers keep their routes to
        # it; a node that is really gone is NotReady after --node-timeout and keeps its block
        # until it is deleted or CLAIM_TTL passes.

    def _cancel_watch(self):
        if self._watch_cancel:
            cancel, self._watch_cancel = self._watch_cancel, None
            try:
                cancel()
            except Exception:  # noqa: BLE001 - a dead stream may fail to close
                pass

    def _start_watch(self, loop):
        """A watch on the claims wakes the loop at once on any change (the 1 s listing covers
        for a watch that died with the connection, and for liveness)."""
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
        """Renew liveness; check our claim key (re-made when it vanished: etcd was away past a
        lease, or the node was deleted while running) and renew its lease now and then."""
        own = self._own
        value = json.dumps(own.to_dict())
        if self._alive_lease and self._call(
                lambda c: Lease(self._alive_lease.id, c).refresh()) <= 0:
            self._alive_lease, self._alive_published = None, False  # lapsed: a new one
        got = self._call(lambda c: _range(c, block_key(own.pod_cidr)))
        if not (got and got[0][0] == value.encode()):
            if self._claim_lease and self._call(
                    lambda c: Lease(self._claim_lease.id, c).refresh()) <= 0:
                self._claim_lease = None  # revoked or expired: a new one with the new key
            if not self._claim(own.pod_cidr, value):
                raise StoreUnavailable(f"our block {own.pod_cidr} was taken by another node")
            if not got:  # (a value of ours that changed, e.g. after a restart, is no news)
                log.info("etcd store: re-published %s (claim lease %s)", own.pod_cidr,
                         self._claim_lease.id)
        elif time.monotonic() - self._claim_renewed >= CLAIM_RENEW:
            if self._call(lambda c: Lease(self._claim_lease.id, c).refresh()) <= 0:
                self._claim_lease = None
                self._claim(own.pod_cidr, value)  # the key went with the lease: re-made
            self._claim_renewed = time.monotonic()
        if not self._alive_published:
            self._call(lambda c: c.put(alive_key(own.pod_cidr), json.dumps({"name": own.name}),
                                       lease=self._alive_lease_for(c)))
            self._alive_published = True

    def _list(self) -> tuple[dict[str, NodeRecord], set[str]]:
        found, ignored = records_from_listing(self._call(lambda c: _range(c, PREFIX, prefix=True)),
                                              self.cfg.cluster_cidr, self.cfg.node_cidr_size)
        alive_listing = self._call(lambda c: _range(c, ALIVE_PREFIX, prefix=True))
        alive, ignored_alive = alive_from_listing(alive_listing, found)
        ignored += ignored_alive
        # Our liveness key deleted under a lease that lives on: put again at the next renewal.
        ours = alive_key(self._own.pod_cidr).encode()
        if self._alive_published and self._alive_lease and not any(
                isinstance(m, dict) and m.get("key") == ours
                and _revision(m, "lease") == self._alive_lease.id for _, m in alive_listing):
            self._alive_published = False
        # Logged once per key and revision (the listing repeats every second; the reason may
        # name the current time, so it is not part of what is remembered).
        for key, mod, reason in ignored:
            if self._ignored_logged.get(key) != mod:
                log.warning("etcd store: ignoring %s: %s", key, reason)
        self._ignored_logged = {key: mod for key, mod, _ in ignored}
        return found, alive

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        renew_every = max(0.5, self.cfg.node_timeout / 3)
        next_renew = 0.0
        logged: set[str] = set()  # what this outage has said: one line per kind, not per try
        while True:
            self._wake.clear()
            try:
                if loop.time() >= next_renew or not self._alive_published:
                    await self._run(self._keepalive)
                    self._own_heard = loop.time()
                    next_renew = loop.time() + renew_every
                self._start_watch(loop)
                found, alive = await self._run(self._list)
                if self._error:
                    log.info("etcd reachable again")
                self._error = None
                logged.clear()
                self._apply(found, alive, loop.time())
            except StoreUnavailable as e:
                if str(e) not in logged:
                    if len(logged) > 32:  # messages that vary: say again now and then
                        logged.clear()
                    logged.add(str(e))
                    log.warning("%s; keeping the last view and retrying", e)
                self._error = str(e)
                self._cancel_watch()
                next_renew = 0.0
            except Exception as e:  # noqa: BLE001 - the store loop must outlive any surprise
                if f"etcd store: {e}" not in logged:
                    logged.add(f"etcd store: {e}")
                    log.exception("etcd store: %s; keeping the last view and retrying", e)
                self._error = f"etcd store: {e}"
                next_renew = 0.0
            try:
                await within(self._wake.wait(), POLL)
            except asyncio.TimeoutError:
                pass

    def _apply(self, found: dict[str, NodeRecord], alive: set[str], now: float) -> None:
        # Our own record as we publish it, ordered among claims by our key's create revision.
        listed = found.get(self._own.name)
        own_order = listed.started_ms if listed and listed.pod_cidr == self._own.pod_cidr else 0
        found[self._own.name] = dataclasses.replace(self._own, started_ms=own_order)
        alive = alive - {self._own.name}
        changed = found != self._records or alive != self._alive
        for name in found:
            if name in alive:
                self._heard[name] = now
            else:
                self._heard.setdefault(name, now)  # never heard: counted from when first listed
        for name in set(self._heard) - set(found):
            del self._heard[name]
        self._records, self._alive = found, alive
        self._last_list = now
        self._synced = True
        if changed:
            self.on_change()

    def records(self) -> list[NodeRecord]:
        return sorted(self._records.values(), key=lambda r: r.name)

    def ready(self, name: str) -> bool:
        if name == self.node.name:
            # Ready as the others see us: our liveness renewed within the node timeout (before
            # the first renewal: unless etcd already failed us at start).
            if self._own_heard is None:
                return self._error is None
            return asyncio.get_running_loop().time() - self._own_heard <= self.cfg.node_timeout
        return name in self._alive

    def age(self, name: str) -> float:
        if name == self.node.name or name not in self._heard:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - self._heard[name])

    def synced(self) -> bool:
        return self._synced

    def last_sync(self) -> float | None:
        return self._last_list if self._synced else None

    def problem(self) -> str | None:
        return self._error


def release_claim_now(cfg, node_name: str) -> list[str]:
    """`podnetd --cleanup` with --store etcd: release node_name's claim without a running store
    (one attempt per endpoint; StoreUnavailable when none answers)."""
    from .store import LocalNode
    return EtcdStore(cfg, LocalNode(node_name, "", None, None), lambda: None)._release(node_name)
