"""The static store: podnetds exchange records over a gRPC Peer service (push-pull gossip).

Each round a node sends everything it knows to its seeds and to a few random known nodes and
merges what they answer, so records spread transitively. A change starts a round at once
(convergence in a few RPC latencies); heartbeats alone wait for the next round. A node whose
record was not refreshed for --node-timeout is withdrawn; a tombstone keeps a stale copy from
bringing it back.
"""
import asyncio
import logging
import random

import grpc

from ..api.podnet.v1 import cluster_pb2, cluster_pb2_grpc
from . import records as rec
from .records import Membership, NodeRecord
from .store import Store

log = logging.getLogger(__name__)

FANOUT = 3
RPC_TIMEOUT = 2.0


def to_pb(r: NodeRecord) -> cluster_pb2.NodeRecord:
    return cluster_pb2.NodeRecord(**r.to_dict())


def from_pb(m) -> NodeRecord:
    return NodeRecord(name=m.name, underlay_ip=m.underlay_ip, pod_cidr=m.pod_cidr,
                      vtep_mac=m.vtep_mac, heartbeat_ms=m.heartbeat_ms,
                      peer_address=m.peer_address, started_ms=m.started_ms)


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


class PeerService(cluster_pb2_grpc.PeerServicer):
    def __init__(self, store: "StaticStore"):
        self.store = store

    async def Exchange(self, request, context):
        ours = self.store.cfg.cluster_cidr or ""
        if request.cluster_cidr and ours and request.cluster_cidr != ours:
            message = (f"node {self.store.cfg.node_name} refuses {request.sender}: cluster CIDR "
                       f"{request.cluster_cidr} differs from ours ({ours})")
            self.store.report(request.sender, message)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
        refusal = self.store.receive([from_pb(m) for m in request.records], request.sender)
        if not refusal and request.records:
            self.store.contacted(request.sender)  # our answer carries our record to it
        if refusal:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        return cluster_pb2.ExchangeResponse(records=[to_pb(r) for r in self.store.records()])


class StaticStore(Store):
    name = "static"

    def __init__(self, cfg, on_change):
        super().__init__(cfg, on_change)
        self.members = Membership(cfg.node_name, cfg.node_timeout)
        self.listen = cfg.listen or f"{cfg.node_ip}:7946"
        host, _, port = self.listen.rpartition(":")
        self.advertise = f"{cfg.node_ip}:{port}" if host in ("0.0.0.0", "::", "[::]") else self.listen
        self.seeds = [p for p in cfg.peer_list if p not in (self.listen, self.advertise)]
        self.tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        self.interval = min(1.0, cfg.node_timeout / 5)
        self._server = None
        self._task = None
        self._wake = asyncio.Event()
        self._channels: dict[str, tuple] = {}
        self._own: NodeRecord | None = None
        self._reported: set[str] = set()
        self._refused_by: str | None = None
        self._contacted = False
        self._start_time = 0.0
        self._peer_errors: dict[str, str] = {}
        self._announced_to: set[str] = set()  # peers this process has told about itself directly

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, own: NodeRecord) -> None:
        self._own = NodeRecord(**{**own.to_dict(), "peer_address": self.advertise})
        self.members.set_self(self._own)
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        cluster_pb2_grpc.add_PeerServicer_to_server(PeerService(self), self._server)
        try:
            if self.tls.enabled:
                bound = self._server.add_secure_port(self.listen, self.tls.server())
            else:
                log.warning("peer service on %s WITHOUT TLS: any host that reaches it can join "
                            "the cluster (give --tls-cert/--tls-key/--tls-ca)", self.listen)
                bound = self._server.add_insecure_port(self.listen)
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
        if self._refused_by:
            return self._refused_by
        if self.seeds and not self._contacted and self._peer_errors:
            target, err = next(iter(self._peer_errors.items()))
            return f"no peer reachable yet ({target}: {err})"
        return None

    def contacted(self, peer: str) -> None:
        """A peer and we exchanged records: it has ours, and we have its view."""
        if not self._contacted:
            log.info("static store: joined the cluster: %s has our record", peer)
        self._contacted = True

    def refusal(self) -> str | None:
        return self._refused_by

    def report(self, name: str, why: str) -> None:
        """Log a refusal once (a refused peer retries every round)."""
        if f"{name}:{why}" not in self._reported:
            self._reported.add(f"{name}:{why}")
            log.error("node %s refused: %s", name, why)

    def receive(self, incoming: list[NodeRecord], sender: str = "") -> str | None:
        """Merge records; the refusal message when the sender's own record is refused."""
        changed = False
        for r in incoming:
            if r.name == self.cfg.node_name and self._own and r.heartbeat_ms >= self._own.heartbeat_ms:
                # Peers hold a newer heartbeat of ours than our clock gives (we restarted with a
                # clock behind): continue above it, or they would ignore us until withdrawal.
                self._own = NodeRecord(**{**self._own.to_dict(), "heartbeat_ms": r.heartbeat_ms + 1})
                self.members.set_self(self._own)
            changed |= self.members.merge(r)
        refused = rec.conflicts(self.members.all(), self.cfg.cluster_cidr)
        for name, why in refused.items():
            self.report(name, why)
        if changed:
            self._wake.set()
            self.on_change()
        if sender and sender in refused and sender != self.cfg.node_name:
            return f"node {self.cfg.node_name} refuses {sender}: {refused[sender]}"
        return None

    # -- gossip ----------------------------------------------------------------------------

    def _targets(self) -> list[str]:
        """Every seed until one answered; then every known node this process has not yet
        told about itself (a joining or restarted node tells the whole cluster itself, in one
        round, instead of waiting for gossip to carry it), plus FANOUT random nodes among
        seeds and known nodes, which spreads any record to n nodes in about log(n) rounds at
        a bounded cost per node."""
        known = {r.peer_address for r in self.members.all()
                 if r.name != self.cfg.node_name and r.peer_address}
        if not self._contacted:
            return list(dict.fromkeys([*self.seeds, *known]))
        pool = sorted((set(self.seeds) | known) - {self.advertise, self.listen})
        unannounced = sorted(known - self._announced_to - {self.advertise, self.listen})
        self._announced_to.update(unannounced)  # tried once; a peer that is down hears by gossip
        chosen = random.sample(pool, min(FANOUT, len(pool)))
        return list(dict.fromkeys([*unannounced, *chosen]))

    def _stub(self, target: str):
        if target not in self._channels:
            if self.tls.enabled:
                channel = grpc.aio.secure_channel(target, self.tls.channel())
            else:
                channel = grpc.aio.insecure_channel(target)
            self._channels[target] = (channel, cluster_pb2_grpc.PeerStub(channel))
        return self._channels[target][1]

    async def _exchange(self, target: str) -> None:
        request = cluster_pb2.ExchangeRequest(
            sender=self.cfg.node_name, cluster_cidr=self.cfg.cluster_cidr or "",
            records=[to_pb(r) for r in self.members.all()])
        try:
            response = await self._stub(target).Exchange(request, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                if self._refused_by != e.details():
                    log.error("refused by peer %s: %s", target, e.details())
                self._refused_by = e.details()
            else:
                msg = (e.details() or e.code().name).splitlines()[0]
                if self._peer_errors.get(target) != msg:
                    log.warning("peer %s: %s", target, msg)
                self._peer_errors[target] = msg
            return
        self._peer_errors.pop(target, None)
        self.contacted(target)
        self._refused_by = None
        self.receive([from_pb(m) for m in response.records])

    async def _gossip_loop(self) -> None:
        while True:
            self._wake.clear()
            beat = max(rec.now_ms(), self._own.heartbeat_ms + 1)
            self._own = NodeRecord(**{**self._own.to_dict(), "heartbeat_ms": beat})
            self.members.set_self(self._own)
            targets = self._targets()
            if targets:
                await asyncio.gather(*(self._exchange(t) for t in targets))
            gone = self.members.expire()
            if gone:
                log.warning("withdrew %s: silent for more than %.0f s", ", ".join(gone),
                            self.cfg.node_timeout)
                self.on_change()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
                await asyncio.sleep(0.02)  # let a burst of changes coalesce into one round
            except asyncio.TimeoutError:
                pass
