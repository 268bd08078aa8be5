"""The cluster component of podnetd: store + routing backend + reconcile loop (which also keeps
the node firewall's VXLAN senders, podnetd/firewall.py, in step with the peers).

Wiring (the cluster feature, podnetd/cluster/wire.py; the contract is podnetd/features.py):
prepare(plan) runs before the node is set up and returns the node plan with the underlay
address, the pod MTU and GSO limit, the firewall's cluster rules and, with etcd, the leased pod
CIDR; start() runs after node setup and the firewall's start; the feature serves
podnet.v1.ClusterService.
"""
import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from dataclasses import replace

from ..aio import within
from ..kernel import ip_lib, vxlan
from ..kernel.errors import KernelError
from ..errors import StartupError
from ..events import ObjectRef
from ..firewall_rules import ClusterRules
from ..metrics import counter, gauge
from ..wiring import DaemonContext, NodePlan
from . import backends, records as rec, routing
from .backends import Context, Entry
from .flags import ClusterConfig
from .records import NodeRecord
from .store import LocalNode

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def make_store(cfg: ClusterConfig, node: LocalNode, on_change):
    # imported here: a node loads only the store it uses (etcd3gw or the peer gRPC service)
    if cfg.store == "etcd":
        from .etcd import EtcdStore
        return EtcdStore(cfg, node, on_change)
    from .static import StaticStore
    return StaticStore(cfg, node, on_change)


class ClusterComponent:
    def __init__(self, ctx: DaemonContext, cfg: ClusterConfig):
        self.ctx = ctx
        self.cfg = cfg
        self.node_name = ctx.config.node_name
        self.state_dir = ctx.config.state_dir
        self.events = ctx.events
        self.metrics = ctx.metrics
        self.reconcile_interval = ctx.config.reconcile_interval
        self.node_ip: str = ""          # the underlay address, decided by prepare()
        self.pod_cidr: str = ""         # this node's pod CIDR, decided by prepare()
        self.backend = backends.get(self.cfg.backend)
        self.store = None
        self.underlay: dict = {}
        self.own: NodeRecord | None = None
        self.firewall = None  # the daemon's firewall.Firewall
        self.desired: list[Entry] = []
        self.modes: dict[str, tuple[str, str]] = {}
        self.refused: dict[str, str] = {}
        self.kernel_problem: str | None = None
        self.foreign: dict[str, str] = {}  # peer pod CIDR -> protocol of the route someone else made
        self.readiness: dict[str, bool] = {}  # node -> Ready, as of the last pass (for events)
        self._wake: asyncio.Event | None = None
        self._task = None
        self._lock = asyncio.Lock()
        self._problems_logged: set = set()
        self._metrics_snapshot: tuple = ({}, {}, 0, 0, None, 0, {})
        self._mode_problems_logged: set = set()

    # -- before node setup -----------------------------------------------------------------

    async def prepare(self, plan: NodePlan) -> NodePlan:
        """Before node setup: the underlay, the pod MTU and GSO limit, the store and (etcd) the
        leased pod CIDR; returns the plan the node is set up with."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        node_ip = cfg.node_ip
        if not node_ip:
            node_ip = await loop.run_in_executor(None, vxlan.default_route_address)
            if not node_ip:
                raise StartupError("no --node-ip given and no default route to take it from")
        try:
            self.underlay = await loop.run_in_executor(None, routing.underlay, node_ip)
        except KernelError as e:
            raise StartupError(f"--node-ip {node_ip}: {e}") from None
        vxlan_mtu = self.underlay["mtu"] - VXLAN_OVERHEAD
        mtu = plan.mtu
        if mtu is None:
            mtu = vxlan_mtu if self.backend.uses_vxlan() else self.underlay["mtu"]
        elif self.backend.uses_vxlan() and mtu > vxlan_mtu:
            message = (f"--mtu {mtu} exceeds the VXLAN MTU {vxlan_mtu}"
                       f" (underlay {self.underlay['mtu']} - {VXLAN_OVERHEAD}): large packets to "
                       f"VXLAN peers will be dropped")
            log.warning("%s", message)
            self.events.record(ObjectRef("Node", self.node_name), "Warning", "MTUMismatch", message)
        gso_limit = self.underlay["gso_limit"]
        if self.backend.uses_vxlan() and gso_limit > ip_lib.LEGACY_GSO_MAX_SIZE:
            # A pod's TCP sizes its GSO packets for the pod's own interface, not for the path,
            # and the VXLAN device takes none above 64 KiB: anything bigger routed into it is
            # segmented in software (5x slower here). So BIG TCP reaches pods only under host-gw.
            log.info("BIG TCP on %s (gso_ipv4_max_size %d) stays off for pods: backend %s "
                     "may route them into VXLAN", self.underlay["dev"], gso_limit,
                     self.backend.name)
            gso_limit = ip_lib.LEGACY_GSO_MAX_SIZE
        self.node_ip = node_ip
        self.store = make_store(cfg, LocalNode(self.node_name, node_ip, plan.pod_cidr,
                                               self.state_dir), self._changed)
        try:
            leased = await self.store.lease_cidr(self.node_name, self._vtep_mac())
        except Exception as e:  # noqa: BLE001 - one clear line at start
            raise StartupError(f"{self.store.name} store: {e}") from None
        self.pod_cidr = leased or plan.pod_cidr
        log.info("cluster: node %s underlay %s on %s (mtu %d), pod CIDR %s, pod mtu %d, store %s, "
                 "backend %s", self.node_name, node_ip, self.underlay["dev"], self.underlay["mtu"],
                 self.pod_cidr, mtu, self.store.name, self.backend.name)
        # The cluster's part of the node firewall (podnetd/firewall.py, which starts first):
        # egress masquerade, remote pods' access to the node, VXLAN only from known peers.
        rules = ClusterRules(cluster_cidr=cfg.cluster_cidr,
                             vxlan_port=cfg.vxlan_port if self.backend.uses_vxlan() else None)
        return replace(plan, pod_cidr=self.pod_cidr, mtu=mtu, node_ip=node_ip,
                       pod_gso_limit=gso_limit, firewall_cluster=rules)

    # -- start / stop ----------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except (KernelError, OSError, RuntimeError) as e:
            await self.stop()
            raise StartupError(f"cluster: {e}") from None

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        uses_vxlan = self.backend.uses_vxlan()
        if uses_vxlan:
            await loop.run_in_executor(None, self._ensure_vxlan)
        self.own = NodeRecord(name=self.node_name, underlay_ip=self.node_ip, pod_cidr=self.pod_cidr,
                              vtep_mac=self._vtep_mac(),
                              heartbeat_ms=rec.now_ms(), started_ms=self._claim_time())
        self.firewall = self.ctx.component("firewall").firewall  # started before this one
        await self.store.start(self.own)
        self._task = asyncio.create_task(self._loop(), name="cluster-reconcile")
        self.metrics.add_source(self._metrics)

    def _metrics(self):
        """Read by the metrics thread: the snapshot the reconcile loop last left."""
        peers, desired, store_up, synced, last_sync, rounds, statuses = self._metrics_snapshot
        yield gauge("podnet_peers", "Other nodes of the cluster, by backend mode (host-gw, "
                    "vxlan, unreachable) and state (ok, problem, refused)", ["mode", "state"],
                    peers)
        yield gauge("podnet_nodes", "Nodes of the cluster this node knows, itself included, by "
                    "status (Ready, NotReady: liveness lapsed, still routed)", ["status"], statuses)
        yield gauge("podnet_kernel_entries_desired", "Routes, neighbours and FDB entries the "
                    "store asks for", ["kind"], desired)
        yield gauge("podnet_store_up", "1 when the cluster store answers (etcd reachable, or a "
                    "static peer heard from), 0 otherwise", ["store"], {(self.cfg.store,): store_up})
        yield gauge("podnet_store_synced", "1 once the store has given a complete view (routes "
                    "are only removed then)", ["store"], {(self.cfg.store,): synced})
        if last_sync is not None:
            yield gauge("podnet_store_last_sync_age_seconds", "Seconds since the last complete "
                        "exchange with the store (etcd: a listing; static: a peer's exchange)",
                        ["store"], {(self.cfg.store,): time.monotonic() - last_sync})
        if self.cfg.store == "static":
            yield counter("podnet_gossip_rounds", "Gossip rounds of the static store", rounds)

    def _take_metrics_snapshot(self) -> None:
        peers: collections.Counter = collections.Counter()
        for node in self.nodes():
            if node["mode"] != "self":
                state = ("refused" if node["name"] in self.refused else
                         "problem" if node["problem"] else "ok")
                peers[(node["mode"], state)] += 1
        desired = collections.Counter((e.kind,) for e in self.desired)
        statuses = collections.Counter({("Ready",): 0, ("NotReady",): 0})
        statuses.update((_status(ready),) for ready in self.readiness.values())
        # one assignment: the metrics thread sees the old snapshot or the new one, never half
        self._metrics_snapshot = (peers, desired, 0 if self.store.problem() else 1,
                                  1 if self.store.synced() else 0, self.store.last_sync(),
                                  self.store.rounds(), statuses)

    async def stop(self) -> None:
        # Kernel state stays: pods keep talking across a daemon restart.
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.store:
            await self.store.stop()

    def _vtep_mac(self) -> str:
        return rec.vtep_mac(self.node_name) if self.backend.uses_vxlan() else ""

    def _claim_time(self) -> int:
        """When this node first claimed its pod CIDR (kept in the state dir), so a restart does
        not make its claim look newer than a conflicting newcomer's."""
        path = os.path.join(self.state_dir, "cluster-claim.json")
        try:
            with open(path) as f:
                data = json.load(f)
            if data.get("pod_cidr") == self.pod_cidr:
                return int(data["started_ms"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        started = rec.now_ms()
        with open(path + ".tmp", "w") as f:
            json.dump({"pod_cidr": self.pod_cidr, "started_ms": started}, f)
        os.replace(path + ".tmp", path)
        return started

    def _ensure_vxlan(self) -> None:
        cfg = self.cfg
        vxlan.vxlan_ensure(cfg.vxlan_dev, vni=cfg.vxlan_vni, port=cfg.vxlan_port, local=self.node_ip,
                           mac=rec.vtep_mac(self.node_name), mtu=self.underlay["mtu"] - VXLAN_OVERHEAD)
        # The VTEP address: the source of traffic the node itself sends to remote pods.
        ip_lib.addr_add(cfg.vxlan_dev, f"{rec.vtep_ip(self.pod_cidr)}/32")

    # -- reconcile -------------------------------------------------------------------------

    def _changed(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception as e:  # noqa: BLE001 - the loop must survive anything and retry
                log.exception("cluster reconcile failed: %s", e)
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._wake.wait(), self.reconcile_interval)

    async def reconcile(self) -> dict:
        async with self._lock:
            loop = asyncio.get_running_loop()
            records = self.store.records()
            before = (dict(self.modes), list(self.desired), dict(self.refused),
                      dict(self.readiness))
            # Readiness is shown, never routed on: a NotReady node keeps its routes until its
            # claim is deleted or expires (then its record leaves the store).
            self.readiness = {r.name: self.store.ready(r.name) for r in records}
            self.refused = rec.conflicts(records, self.cfg.cluster_cidr)
            for r in records:
                # A route via our own address is a kernel error on every pass (and fails CNI
                # STATUS): a peer claiming our underlay address is refused here instead.
                if r.name != self.node_name and r.underlay_ip == self.node_ip:
                    self.refused.setdefault(r.name, f"its underlay address {r.underlay_ip} is this "
                                                    f"node's own")
            if self.node_name in self.refused or self.store.refusal():
                peers = []  # a refused node routes nowhere: never half-applied
            else:
                peers = [r for r in records if r.name != self.node_name and r.name not in self.refused]
            result = await loop.run_in_executor(None, self._sync_kernel, peers, self.store.synced())
            self.metrics.observe_reconcile(result)
            self._take_metrics_snapshot()
            self._record_events(*before, result)
            for err in result["errors"]:
                if err not in self._problems_logged:
                    log.error("cluster routing: %s", err)
            self._problems_logged = set(result["errors"])
            self.kernel_problem = result["errors"][0] if result["errors"] else None
            if result["installed"] or result["removed"]:
                log.info("cluster routing: %d installed, %d removed (%d peers)",
                         result["installed"], result["removed"], len(peers))
            return result

    def _record_events(self, modes: dict, desired: list, refused: dict, readiness: dict,
                       result: dict) -> None:
        """Events for what an operator must see, on the transitions between two passes."""
        record = self.events.record
        for name in sorted(set(modes) - set(self.modes) - {self.node_name}):
            record(ObjectRef("Node", name), "Warning", "PeerUnreachable",
                   f"node {name} left this node's view of the cluster (etcd store: its claim "
                   f"was deleted or expired; static store: not heard from within the node "
                   f"timeout): its routes were removed")
        for name, ready in sorted(self.readiness.items()):
            # The node lifecycle controller's event (type, reason and message as Kubernetes');
            # a node first seen NotReady is said so too.
            if readiness.get(name, True) != ready:
                reason = "NodeReady" if ready else "NodeNotReady"
                record(ObjectRef("Node", name), "Normal", reason, f"Node {name} status is now: {reason}")
        for name, (mode, problem) in sorted(self.modes.items()):
            was = modes.get(name)
            if was == (mode, problem):
                continue
            if problem and (was is None or was[1] != problem):
                record(ObjectRef("Node", name), "Warning", "PeerUnreachable",
                       f"node {name}: {problem}")
            elif not problem and (was is None or was[1]):
                record(ObjectRef("Node", name), "Normal", "PeerReachable",
                       f"node {name} is routed by {mode}")
        for name, why in sorted(self.refused.items()):
            if refused.get(name) != why:
                record(ObjectRef("Node", name), "Warning", "CIDRConflict",
                       f"node {name} is refused: {why}")
        if desired == self.desired and (result["installed"] or result["removed"]):
            record(ObjectRef("Node", self.node_name), "Normal", "DriftRepaired",
                   f"the kernel had drifted from the store: {result['installed']} entries "
                   f"reinstalled, {result['removed']} removed")

    def _sync_kernel(self, peers: list[NodeRecord], synced: bool) -> dict:
        errors = []
        if self.backend.uses_vxlan():
            try:
                self._ensure_vxlan()
            except KernelError as e:
                errors.append(f"vxlan device {self.cfg.vxlan_dev}: {e}")
        try:
            self.underlay = routing.underlay(self.node_ip)
        except KernelError as e:
            errors.append(str(e))
        ctx = Context(self.own, self.underlay.get("subnets", ()), self.cfg.vxlan_dev)
        desired, modes = backends.plan(ctx, self.backend, peers)
        try:  # before the routes: a peer's VXLAN packets are accepted once we route to it
            added, removed = self.firewall.set_vxlan_peers([p.underlay_ip for p in peers],
                                                           allow_removal=synced)
            if added or removed:
                log.info("nftables: VXLAN senders +%d -%d", added, removed)
        except KernelError as e:
            errors.append(f"VXLAN senders: {e}")
        result = routing.sync(desired, self.cfg.vxlan_dev, allow_removal=synced)
        result["errors"] = errors + result["errors"]
        # Logged when a problem appears (or changes), not on every pass.
        current = {(name, problem) for name, (_, problem) in modes.items() if problem}
        for name, problem in sorted(current - self._mode_problems_logged):
            log.warning("node %s: %s", name, problem)
        self._mode_problems_logged = current
        self._note_foreign(result["foreign"], desired)  # logs its own changes
        for entry in desired:
            if entry.kind == "route" and entry.destination in self.foreign:
                mode = modes[entry.node][0]
                modes[entry.node] = (mode, f"route to {entry.destination} exists with proto "
                                           f"{self.foreign[entry.destination]} (not podnet's): left alone")
        self.desired, self.modes = desired, modes
        return result

    def _note_foreign(self, foreign: dict[str, str], desired: list[Entry]) -> None:
        """Log a foreign route to a peer's pod CIDR once when it appears, and once when it goes."""
        nodes = {e.destination: e.node for e in desired if e.kind == "route"}
        for dst, proto in sorted(foreign.items()):
            if self.foreign.get(dst) != proto:
                self.events.record(
                    ObjectRef("Node", nodes.get(dst, self.node_name)), "Warning",
                    "ForeignRoute", f"route to {dst} exists with proto {proto}, not podnet's: "
                                    f"left alone")
                log.warning("route to %s exists with proto %s, not podnet's (%d): left alone; node %s "
                            "is routed by it, not by podnet, until it is removed",
                            dst, proto, backends.ROUTE_PROTO, nodes.get(dst, "?"))
        for dst in sorted(set(self.foreign) - set(foreign)):
            if dst in nodes:
                log.info("the foreign route to %s is gone: podnet routes node %s", dst, nodes[dst])
        self.foreign = foreign

    # -- views -----------------------------------------------------------------------------

    def problem(self) -> str | None:
        """What makes the node unfit for new pods (CNI STATUS fails with it). A store that is
        away is not: pods on this node and the routes already made keep working."""
        if self.node_name in self.refused:
            return f"this node is refused by the cluster: {self.refused[self.node_name]}"
        if self.store.refusal():
            return f"this node is refused by the cluster: {self.store.refusal()}"
        return self.kernel_problem

    def cluster_problem(self) -> str | None:
        return self.problem() or self.store.problem()

    def nodes(self) -> list[dict]:
        out = []
        for r in self.store.records():
            if r.name == self.node_name:
                mode, problem = "self", self.refused.get(r.name, "")
            elif r.name in self.refused:
                mode, problem = "unreachable", self.refused[r.name]
            else:
                mode, problem = self.modes.get(r.name, ("unreachable", "not routed yet"))
            out.append({**r.to_dict(), "age": self.store.age(r.name), "mode": mode, "problem": problem,
                        "status": _status(self.store.ready(r.name))})
        return out

    async def release_claim(self, node_name: str) -> list[str]:
        """The Node is deleted (the cluster API calls this): free its pod CIDR block in the store,
        so every node withdraws its routes and another node may take the block. The blocks
        released. Raises the store's error when it does not answer (the caller retries)."""
        return await self.store.release_claim(node_name)

    def routes(self) -> list[tuple[Entry, str]]:
        """Each desired entry with its state: present, missing, or foreign (a route to its
        destination that podnet did not make holds the place)."""
        foreign = self.foreign
        return [(e, "present" if ok else "foreign" if e.kind == "route" and e.destination in foreign
                 else "missing") for e, ok in routing.present(self.desired, self.cfg.vxlan_dev)]


def _status(ready: bool) -> str:
    return "Ready" if ready else "NotReady"
