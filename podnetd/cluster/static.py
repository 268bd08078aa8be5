"""The static store: podnetds exchange records over podnet.peer.v1.PeerService (push-pull gossip).

Each round a node sends everything it knows to its seeds and to a few random known nodes and
merges what they answer, so records spread transitively. A change starts a round at once
(convergence in a few RPC latencies); heartbeats alone wait for the next round. A node whose
record was not refreshed for --node-timeout is withdrawn; a tombstone keeps a stale copy from
bringing it back.

Peers are untrusted input: the Peer service requires mutual TLS (--insecure-peers turns it off
for labs), an Exchange's sender must be a name of the client certificate, each record is
validated on its own (a bad one is logged and dropped, the rest are taken), and only a node's
own record sent by itself is first-hand (records.Membership has the rules for hearsay).
"""
import asyncio
import ipaddress
import json
import logging
import os
import random
import time

import grpc

from ..aio import within
from ..api.podnet.peer.v1 import peer_pb2, peer_pb2_grpc
from . import records as rec
from .bounded import LruDict, RateLimitedLog
from .records import Membership, NodeRecord, RecordError, Verdict
from .store import Store

log = logging.getLogger(__name__)

FANOUT = 3
RPC_TIMEOUT = 2.0
MAX_RECORDS = rec.MAX_NODES          # records in one Exchange request or answer
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # MAX_RECORDS records of the largest valid size fit
MAX_CONCURRENT_EXCHANGES = 64        # Exchange calls served at once; more get RESOURCE_EXHAUSTED
MAX_CHANNELS = 256                   # open client channels to peers (least recently used closed)
SELF_BUMP_LIMIT_MS = rec.MAX_FUTURE_MS // 2

MESSAGE_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


def to_pb(r: NodeRecord) -> peer_pb2.NodeRecord:
    return peer_pb2.NodeRecord(**rec.to_wire(r))


def from_pb(m) -> NodeRecord:
    """A protobuf record as it came (unvalidated; receive() validates)."""
    return NodeRecord(**rec.wire_fields(m))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class TlsFiles:
    def __init__(self, cert: str | None, key: str | None, ca: str | None):
        self.cert, self.key, self.ca = cert, key, ca

    @property
    def enabled(self) -> bool:
        return bool(self.cert and self.key and self.ca)

    def server(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(_read(self.key), _read(self.cert))],
                                           root_certificates=_read(self.ca), require_client_auth=True)

    def channel(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=_read(self.ca),
                                            private_key=_read(self.key), certificate_chain=_read(self.cert))


def certificate_names(auth_context: dict) -> set[str]:
    """The node names a verified client certificate stands for: its subject CN and its DNS
    subjectAltNames (IP SANs are addresses, not names)."""
    names = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for raw in auth_context.get(key, ()):
            name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            try:
                ipaddress.ip_address(name)
                continue
            except ValueError:
                names.add(name)
    return names


def _shown(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


class PeerService(peer_pb2_grpc.PeerServiceServicer):
    def __init__(self, store: "StaticStore"):
        self.store = store

    async def Exchange(self, request, context):
        store, me = self.store, self.store.node.name
        peer = context.peer()
        try:
            sender = rec.validate_name(request.sender)
        except RecordError as e:
            store.say(logging.WARNING, ("bad-sender",),
                      "peer %s: Exchange refused: sender %s", peer, e.why)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"node {me}: sender: {e.why}")
        if store.tls.enabled:
            names = certificate_names(context.auth_context())
            if sender not in names:
                message = (f"node {me} refuses an Exchange from {peer}: sender {sender!r} is not "
                           f"a name of its certificate ({', '.join(sorted(names)) or 'none'})")
                store.say(logging.WARNING, ("impostor", tuple(sorted(names))), "%s", message)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        if len(request.records) > MAX_RECORDS:
            message = (f"node {me} refuses {sender}: {len(request.records)} records in one "
                       f"Exchange (at most {MAX_RECORDS})")
            store.say(logging.WARNING, ("too-many", sender), "%s", message)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        ours = store.cfg.cluster_cidr
        if request.cluster_cidr and ours and request.cluster_cidr != ours:
            message = (f"node {me} refuses {sender}: cluster CIDR "
                       f"{_shown(request.cluster_cidr, 40)} differs from ours ({ours})")
            store.say(logging.ERROR, ("other-cluster", sender), "node %s refused: %s", sender, message)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
        refusal = store.receive(request.records, sender, via=f"{sender} ({peer})")
        if not refusal and request.records:
            store.contacted(sender)  # our answer carries our record to it
        if refusal:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        return peer_pb2.ExchangeResponse(records=[to_pb(r) for r in store.records()])


CLAIMS_FILE = "cluster-peer-claims.json"


def load_claims(path: str | None) -> dict[str, tuple[str, int]]:
    """The claim dates this node gave other nodes before it restarted; {} when none or
    unreadable (then it dates them anew, as a newcomer would)."""
    if not path:
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        return {name: (cidr, started) for name, (cidr, started) in list(data.items())[:rec.MAX_NODES]
                if isinstance(name, str) and isinstance(cidr, str) and isinstance(started, int)}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def save_claims(path: str, claims: dict[str, tuple[str, int]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(claims, f)
    os.replace(tmp, path)


class StaticStore(Store):
    name = "static"

    def __init__(self, cfg, node, on_change):
        super().__init__(cfg, node, on_change)
        self._claims_path = os.path.join(node.state_dir, CLAIMS_FILE) if node.state_dir else None
        self._claims_saved = load_claims(self._claims_path)
        self.members = Membership(node.name, cfg.node_timeout, claims=self._claims_saved)
        self.listen = cfg.listen or f"{node.ip}:7946"
        host, _, port = self.listen.rpartition(":")
        self.advertise = f"{node.ip}:{port}" if host in ("0.0.0.0", "::", "[::]") else self.listen
        self.seeds = [p for p in cfg.peer_list if p not in (self.listen, self.advertise)]
        self.tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        self.interval = min(1.0, cfg.node_timeout / 5)
        self._server = None
        self._task = None
        self._wake = asyncio.Event()
        self._channels = LruDict(MAX_CHANNELS)   # target -> (channel, stub)
        self._closing: set[asyncio.Task] = set()
        self._own: NodeRecord | None = None
        self.say = RateLimitedLog(log)
        self._refused_by: str | None = None
        self._accepted_at: float | None = None  # monotonic time a peer last took our Exchange
        self._contacted = False
        self._last_contact: float | None = None   # time.monotonic() of the last exchange
        self._rounds = 0
        self._start_time = 0.0
        self._peer_errors = LruDict(MAX_CHANNELS)  # target -> last error
        self._announced_to: set[str] = set()  # peers this process has told about itself directly
        self.dropped = 0  # records refused by validation (for tests and status)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, own: NodeRecord) -> None:
        self._own = NodeRecord(**{**own.to_dict(), "peer_address": self.advertise})
        self.members.set_self(self._own)
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *MESSAGE_OPTIONS],
                                       maximum_concurrent_rpcs=MAX_CONCURRENT_EXCHANGES)
        peer_pb2_grpc.add_PeerServiceServicer_to_server(PeerService(self), self._server)
        try:
            if self.tls.enabled:
                bound = self._server.add_secure_port(self.listen, self.tls.server())
            elif self.cfg.insecure_peers:
                log.warning("peer service on %s WITHOUT TLS (--insecure-peers): any host that "
                            "reaches it can join the cluster and announce routes; use it in labs "
                            "only", self.listen)
                bound = self._server.add_insecure_port(self.listen)
            else:
                raise ValueError("mutual TLS is required (--tls-cert/--tls-key/--tls-ca, "
                                 "or --insecure-peers)")
        except (RuntimeError, OSError, ValueError) as e:
            raise OSError(f"peer service: cannot listen on {self.listen}: {e}") from None
        if not bound:
            raise OSError(f"peer service: cannot listen on {self.listen}")
        await self._server.start()
        self._start_time = asyncio.get_running_loop().time()
        log.info("static store: peer service on %s, seeds %s", self.listen, self.seeds or "none")
        self._task = asyncio.create_task(self._gossip_loop(), name="static-store-gossip")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for channel, _ in self._channels.values():
            await channel.close()
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._server:
            await self._server.stop(grace=0.5)

    # -- state -----------------------------------------------------------------------------

    def records(self) -> list[NodeRecord]:
        return self.members.all()

    def age(self, name: str) -> float:
        return self.members.age(name)

    def synced(self) -> bool:
        # After a restart the view is complete once a peer answered or called (both sides
        # send everything they know), or after a timeout (a lone node: whatever it still has
        # in the kernel belongs to departed nodes). Until then nothing is removed, so pods keep
        # talking across a restart.
        if self._contacted:
            return True
        return asyncio.get_running_loop().time() - self._start_time > self.cfg.node_timeout

    def problem(self) -> str | None:
        if self.refusal():
            return self.refusal()
        if self.seeds and not self._contacted and self._peer_errors:
            target, err = next(iter(self._peer_errors.items()))
            return f"no peer reachable yet ({target}: {err})"
        return None

    def contacted(self, peer: str) -> None:
        """A peer and we exchanged records: it has ours, and we have its view. From now on
        a claim first seen is dated by our clock (records.Membership)."""
        if not self._contacted:
            log.info("static store: joined the cluster: %s has our record", peer)
        self._contacted = True
        self._last_contact = time.monotonic()
        self.members.joined = True

    def last_sync(self) -> float | None:
        return self._last_contact

    def rounds(self) -> int:
        return self._rounds

    def refusal(self) -> str | None:
        """A peer's refusal counts while no peer has taken our Exchange for a node timeout:
        one hostile or confused peer cannot cut a node off that the others accept."""
        if self._refused_by is None:
            return None
        if self._accepted_at is not None and time.monotonic() - self._accepted_at <= self.cfg.node_timeout:
            return None
        return self._refused_by

    def report(self, name: str, why: str) -> None:
        """Log a refusal (rate-limited: a refused peer retries every round)."""
        self.say(logging.ERROR, ("refused", name, why), "node %s refused: %s", name, why)

    def receive(self, incoming, sender: str = "", via: str = "") -> str | None:
        """Validate and merge records, each on its own; the refusal message when the sender's
        own record is refused. sender is the authenticated caller (its own record is
        first-hand); records from an answer (sender "") are all hearsay."""
        changed = False
        source = sender or via  # what log lines are rate-limited by: never a name a peer makes up
        for item in incoming:
            try:
                r = rec.validate_record(item if isinstance(item, NodeRecord) else rec.wire_fields(item),
                                        cluster_cidr=self.cfg.cluster_cidr)
            except RecordError as e:
                self.dropped += 1
                self.say(logging.WARNING, ("invalid", source, e.field),
                         "dropped a record from %s: %s", via or "a peer", e)
                continue
            if r.name == self.node.name:
                self._continue_above(r)
                continue
            if r.underlay_ip == self.node.ip:
                self.dropped += 1
                self.say(logging.WARNING, ("our-ip", source), "dropped a record from %s: "
                         "node %s claims our underlay address %s", via or "a peer", r.name, r.underlay_ip)
                continue
            verdict = self.members.judge(r, firsthand=bool(sender) and r.name == sender)
            if verdict == Verdict.HEARSAY_CONFLICT:
                self.say(logging.WARNING, ("hearsay", source, r.name),
                         "ignored a record of node %s relayed by %s: it differs from the one "
                         "we hold, and only %s itself may change it", r.name, via or "a peer", r.name)
            elif verdict == Verdict.FULL:
                self.say(logging.WARNING, ("full", source), "ignored node %s from %s: %d nodes "
                         "known already (the limit)", r.name, via or "a peer", len(self.members.records))
            changed |= verdict == Verdict.CHANGED
        refused = rec.conflicts(self.members.all(), self.cfg.cluster_cidr)
        for name, why in refused.items():
            self.report(name, why)
        if changed:
            self._wake.set()
            self.on_change()
        if sender and sender in refused and sender != self.node.name:
            return f"node {self.node.name} refuses {sender}: {refused[sender]}"
        return None

    def _continue_above(self, r: NodeRecord) -> None:
        """Peers hold a newer heartbeat of ours than our clock gives (we restarted with a clock
        behind): continue above it, or they would ignore us until withdrawal. Only up to a
        bound ahead of our clock, so a forged copy cannot push us out of our peers' range."""
        if self._own and self._own.heartbeat_ms <= r.heartbeat_ms <= rec.now_ms() + SELF_BUMP_LIMIT_MS:
            self._own = NodeRecord(**{**self._own.to_dict(), "heartbeat_ms": r.heartbeat_ms + 1})
            self.members.set_self(self._own)

    # -- gossip ----------------------------------------------------------------------------

    def _known_addresses(self) -> set[str]:
        return {r.peer_address for r in self.members.all()
                if r.name != self.node.name and r.peer_address}

    def _targets(self) -> list[str]:
        """Every seed until one answered; then every known node this process has not yet
        told about itself (a joining or restarted node tells the whole cluster itself, in one
        round, instead of waiting for gossip to carry it), plus FANOUT random nodes among
        seeds and known nodes, which spreads any record to n nodes in about log(n) rounds at
        a bounded cost per node."""
        known = self._known_addresses()
        if not self._contacted:
            return list(dict.fromkeys([*self.seeds, *sorted(known)]))
        pool = sorted((set(self.seeds) | known) - {self.advertise, self.listen})
        unannounced = sorted(known - self._announced_to - {self.advertise, self.listen})
        self._announced_to.update(unannounced)  # tried once; a peer that is down hears by gossip
        chosen = random.sample(pool, min(FANOUT, len(pool)))
        return list(dict.fromkeys([*unannounced, *chosen]))

    def _prune(self) -> None:
        """Forget channels, errors and announcements of addresses no known node has."""
        wanted = self._known_addresses() | set(self.seeds)
        self._announced_to &= wanted
        for target in [t for t in self._peer_errors if t not in wanted]:
            del self._peer_errors[target]
        for target in [t for t in self._channels if t not in wanted]:
            self._close(self._channels.pop(target))

    def _close(self, entry) -> None:
        task = asyncio.create_task(entry[0].close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _stub(self, target: str):
        if target in self._channels:
            return self._channels.touch(target)[1]
        if self.tls.enabled:
            channel = grpc.aio.secure_channel(target, self.tls.channel(), options=MESSAGE_OPTIONS)
        else:
            channel = grpc.aio.insecure_channel(target, options=MESSAGE_OPTIONS)
        entry = (channel, peer_pb2_grpc.PeerServiceStub(channel))
        for _, evicted in self._channels.put(target, entry):
            self._close(evicted)
        return entry[1]

    async def _exchange(self, target: str) -> None:
        request = peer_pb2.ExchangeRequest(
            sender=self.node.name, cluster_cidr=self.cfg.cluster_cidr,
            records=[to_pb(r) for r in self.members.all()])
        try:
            response = await self._stub(target).Exchange(request, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            text = (e.details() or "").strip()
            detail = _shown(text.splitlines()[0] if text else e.code().name, 300)
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                self.say(logging.ERROR, ("refused-by", target), "refused by peer %s: %s",
                         target, detail)
                self._refused_by = detail
            else:
                if self._peer_errors.get(target) != detail:
                    # one line a minute per peer and kind of failure (the status code: at most
                    # 17 kinds), so an oversized answer is not hidden behind an earlier refusal
                    self.say(logging.WARNING, ("peer", target, e.code()), "peer %s: %s", target,
                             detail)
                self._peer_errors.put(target, detail)
            return
        self._peer_errors.pop(target, None)
        self._refused_by = None
        self._accepted_at = time.monotonic()
        if len(response.records) > MAX_RECORDS:
            self.say(logging.WARNING, ("too-many-answer", target), "peer %s answered %d records "
                     "(at most %d): ignored", target, len(response.records), MAX_RECORDS)
        else:
            self.receive(response.records, via=target)
        self.contacted(target)

    async def _round(self) -> None:
        beat = max(rec.now_ms(), self._own.heartbeat_ms + 1)
        self._own = NodeRecord(**{**self._own.to_dict(), "heartbeat_ms": beat})
        self.members.set_self(self._own)
        targets = self._targets()
        if targets:
            results = await asyncio.gather(*(self._exchange(t) for t in targets),
                                           return_exceptions=True)
            for target, result in zip(targets, results):
                if isinstance(result, Exception):
                    self.say(logging.ERROR, ("exchange-bug", target, type(result).__name__),
                             "exchange with %s failed: %s: %s", target, type(result).__name__, result)
        gone = self.members.expire()
        if gone:
            log.warning("withdrew %s: silent for more than %.0f s", ", ".join(gone),
                        self.cfg.node_timeout)
            self.on_change()
        self._prune()
        self._rounds += 1
        await self._save_claims()

    async def _save_claims(self) -> None:
        """Keep the claim dates across a restart, so a claim backdated by a peer cannot win
        against a holder this node knew before (written off the event loop, on change only)."""
        claims = self.members.claims()
        if self._claims_path and claims != self._claims_saved:
            try:
                await asyncio.get_running_loop().run_in_executor(None, save_claims,
                                                                 self._claims_path, claims)
                self._claims_saved = claims
            except OSError as e:
                self.say(logging.WARNING, ("claims", str(e)), "cannot keep peer claim dates in "
                         "%s: %s", self._claims_path, e)

    async def _gossip_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._round()
            except Exception as e:  # noqa: BLE001 - routing must outlive any bad input
                self.say(logging.ERROR, ("round", type(e).__name__), "gossip round failed: %s: %s",
                         type(e).__name__, e)
            try:
                await within(self._wake.wait(), self.interval)
                await asyncio.sleep(0.02)  # let a burst of changes coalesce into one round
            except asyncio.TimeoutError:
                pass
