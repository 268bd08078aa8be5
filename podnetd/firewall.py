"""Keeps podnetd's nftables tables (firewall_rules.py says what they hold) in step with the
node, in every mode: a daemon component started before any other, so no pod is attached
without its anti-spoofing entry and the node is never without its input limits.

Declarative: the desired tables are generated, compared with what the kernel lists (nft JSON)
and repaired; a table is rewritten (atomically) only when its chains, rules or set types
drifted, otherwise set elements are added/removed one by one to match the IPAM records (pods)
and the cluster's peers (VXLAN senders).
"""
import asyncio
import concurrent.futures
import logging
import threading

from . import firewall_rules as rules
from .errors import StartupError
from .events import ObjectRef
from .wiring import DaemonContext, Feature
from .kernel import nft
from .kernel.errors import KernelError, NotFound

log = logging.getLogger(__name__)

TABLE = rules.TABLE


class Firewall:
    """Owns both tables. Attach and detach changes go through one worker thread in order
    (a detach's delete never overtakes a later attach's add for the same port); attach waits
    for its add (~0.2 ms with libnftables), detach does not wait (a delete costs ~15 ms, the
    kernel synchronises the set)."""

    def __init__(self, policy: rules.Policy, records):
        self.policy = policy
        self.records = records  # () -> IPAM records
        self._lock = threading.Lock()
        self._written: dict[str, list] = {}  # family -> structure as listed after our write
        # The VXLAN senders we want; None until the cluster first says (a restarted daemon
        # keeps the kernel's set meanwhile, so peers' traffic flows across the restart).
        self._vxlan_peers: set[str] | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="podnet-nft")

    @property
    def uses_vxlan_peers(self) -> bool:
        return self.policy.cluster is not None and self.policy.cluster.vxlan_port is not None

    def _listing(self, family: str) -> list[dict] | None:
        try:
            return nft.list_table(family, TABLE)
        except NotFound:
            return None

    def _record_sets(self) -> dict[str, set]:
        """What the IPAM records put into the bridge table's sets."""
        sets = {name: set() for name in rules.BRIDGE_SETS}
        for record in self.records():
            if getattr(record, "state", "") == "releasing":
                continue
            try:
                elements = rules.record_elements(record)
            except rules.RuleInputError as e:
                log.error("anti-spoofing: record %s/%s left out: %s",
                          record.container_id[:12], record.ifname, e)
                continue
            for name, values in (elements or {}).items():
                sets[name] |= values
        return sets

    def _bridge_sets(self, listing: list[dict] | None) -> dict[str, set]:
        """The bridge sets we want: the records' elements, plus what the packet path learned
        for live ports (a MAC a pod took, a settled port); the bridge's MAC is taken."""
        want = self._record_sets()
        live = {port for port, _ in want[rules.PODS_SET]}
        for value in rules.listed_elements(listing or [], rules.POD_MACS_SET):
            if isinstance(value, tuple) and value[0] in live:
                want[rules.POD_MACS_SET].add(value)
        want[rules.PORTS_SETTLED_SET] = {
            p for p in rules.listed_elements(listing or [], rules.PORTS_SETTLED_SET) if p in live}
        for name in rules.BRIDGE_SETS:  # learned elements of a shape we never write: dropped
            want[name] = {v for v in want[name] if _valid(name, v)}
        want[rules.MACS_TAKEN_SET] = {m for _, m in want[rules.POD_MACS_SET]}
        if self.policy.bridge_mac:
            want[rules.MACS_TAKEN_SET].add(self.policy.bridge_mac.lower())
        return want

    def _rewrite(self, family: str, body: str) -> None:
        nft.replace_table(family, TABLE, body)
        self._written[family] = rules.structure(nft.list_table(family, TABLE))

    def _fix_elements(self, family: str, set_name: str, have: set, want: set,
                      remove: bool = True) -> tuple[int, int]:
        add, extra = want - have, (have - want if remove else set())
        nft.add_elements(family, TABLE, set_name, rules.elements_text(set_name, add))
        nft.delete_elements(family, TABLE, set_name, rules.elements_text(set_name, extra))
        return len(add), len(extra)

    def sync(self) -> dict:
        """Repair both tables; returns what was done (for logs and tests)."""
        done = {"rewritten": [], "added": 0, "removed": 0}
        with self._lock:
            self._sync_inet(done)
            self._sync_bridge(done)
        return done

    def _sync_inet(self, done: dict) -> None:
        current = self._listing("inet")
        have = rules.listed_elements(current or [], rules.VXLAN_PEERS_SET)
        want = self._vxlan_peers if self._vxlan_peers is not None else have
        if current is None or rules.structure(current) != self._written.get("inet"):
            self._rewrite("inet", rules.inet_body(self.policy, _valid_addresses(want)))
            done["rewritten"].append("inet")
        elif self.uses_vxlan_peers:
            added, removed = self._fix_elements("inet", rules.VXLAN_PEERS_SET, have,
                                                _valid_addresses(want))
            done["added"] += added
            done["removed"] += removed

    def _sync_bridge(self, done: dict) -> None:
        current = self._listing("bridge")
        want = self._bridge_sets(current)
        if current is None or rules.structure(current) != self._written.get("bridge"):
            self._rewrite("bridge", rules.bridge_body(self.policy, want))
            done["rewritten"].append("bridge")
            return
        try:
            for name in rules.BRIDGE_SETS:
                added, removed = self._fix_elements(
                    "bridge", name, rules.listed_elements(current, name), want[name])
                done["added"] += added
                done["removed"] += removed
        except rules.RuleInputError:  # an element we never wrote: start from clean sets
            self._rewrite("bridge", rules.bridge_body(self.policy, want))
            done["rewritten"].append("bridge")

    def set_vxlan_peers(self, addresses, allow_removal: bool = True) -> tuple[int, int]:
        """Accept VXLAN from exactly these underlay addresses (called by the cluster's
        reconcile before it routes to them). allow_removal=False (the store's view is not
        complete yet, e.g. just after a restart) only adds. Returns (added, removed)."""
        if not self.uses_vxlan_peers:
            return 0, 0
        want = _valid_addresses(addresses)
        with self._lock:
            current = self._listing("inet")
            if current is None or rules.structure(current) != self._written.get("inet"):
                # missing or drifted: rewrite it whole (keeping what the kernel had until the
                # view is complete)
                have = rules.listed_elements(current or [], rules.VXLAN_PEERS_SET)
                self._vxlan_peers = want if allow_removal else want | _valid_addresses(have)
                self._rewrite("inet", rules.inet_body(self.policy, self._vxlan_peers))
                return len(self._vxlan_peers - have), len(have - self._vxlan_peers)
            have = rules.listed_elements(current, rules.VXLAN_PEERS_SET)
            self._vxlan_peers = want if allow_removal else want | _valid_addresses(have)
            return self._fix_elements("inet", rules.VXLAN_PEERS_SET, have, self._vxlan_peers)

    # -- attach / detach --------------------------------------------------------------------

    def _add(self, elements: dict[str, set]) -> None:
        with self._lock:
            nft.add_elements_to_sets("bridge", TABLE, {
                name: rules.elements_text(name, values) for name, values in elements.items()})

    def _remove_port(self, port: str) -> None:
        """Remove everything of a port, including what the packet path learned for it."""
        with self._lock:
            listing = self._listing("bridge") or []
            mine = {name: {v for v in rules.listed_elements(listing, name)
                           if (v[0] if isinstance(v, tuple) else v) == port}
                    for name in rules.BRIDGE_SETS}
            mine[rules.MACS_TAKEN_SET] = {
                v[1] for v in mine[rules.POD_MACS_SET]} - {self.policy.bridge_mac.lower()}
            nft.delete_elements_from_sets("bridge", TABLE, {
                name: rules.elements_text(name, values) for name, values in mine.items()})

    def allow(self, record) -> None:
        elements = rules.record_elements(record)
        if elements:
            self._worker.submit(self._add, elements).result()

    def forbid(self, record) -> None:
        try:
            port = rules.ifname(record.host_ifname, "pod port") if record.host_ifname else None
        except rules.RuleInputError as e:
            log.warning("anti-spoofing: remove elements: %s (the next sync rewrites the sets)", e)
            return
        if port:
            self._worker.submit(self._remove_port, port).add_done_callback(_log_failure)

    def close(self) -> None:
        self._worker.shutdown(wait=True)


def _valid(set_name: str, value) -> bool:
    try:
        rules.element(set_name, value)
        return True
    except rules.RuleInputError:
        return False


def _valid_addresses(addresses) -> set[str]:
    """The IPv4 addresses among addresses (peers' underlay addresses come from other nodes:
    one that is not an address is logged and left out, never put into a rule)."""
    out = set()
    for a in addresses:
        try:
            out.add(rules.ipv4(a, "VXLAN peer underlay address"))
        except rules.RuleInputError as e:
            log.warning("%s: left out of %s", e, rules.VXLAN_PEERS_SET)
    return out


def _log_failure(future) -> None:
    if future.exception() is not None:
        log.warning("anti-spoofing: remove elements: %s (the next sync repairs the sets)",
                    future.exception())


def remove_tables() -> list[str]:
    errors = []
    for family in ("inet", "bridge"):
        try:
            nft.delete_table(family, TABLE)
        except KernelError as e:
            errors.append(str(e))
    return errors


class FirewallComponent:
    """The daemon component (the first feature, podnetd/features.py): builds the policy once the
    node is set up, writes the tables, hooks attach/detach, and repairs drift every
    --reconcile-interval. The cluster's part of the policy comes from the node plan
    (plan.firewall_cluster, decided by the cluster's prepare before node setup); the cluster's
    reconcile keeps the VXLAN senders in step with its peers (self.firewall.set_vxlan_peers)."""

    def __init__(self, ctx: DaemonContext):
        self.ctx = ctx
        self.node_name = ctx.config.node_name
        self.interval = ctx.config.reconcile_interval
        self.events = ctx.events
        self.metrics = ctx.metrics
        self.firewall: Firewall | None = None
        self.problem_text: str | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        node = self.ctx.node
        net = node.net
        try:
            policy = rules.Policy(bridge=net.bridge, gateway=net.gateway, pod_cidr=node.plan.pod_cidr,
                                  bridge_mac=node.bridge_facts()["mac"],
                                  cluster=node.plan.firewall_cluster)
        except rules.RuleInputError as e:
            raise StartupError(f"firewall: {e}") from None
        self.firewall = Firewall(policy, node.ipam.records)
        try:
            done = await asyncio.get_running_loop().run_in_executor(None, self.firewall.sync)
        except KernelError as e:
            raise StartupError(f"firewall: {e}") from None
        log.info("nftables: %s podnet written (anti-spoofing, pod access to the node%s)",
                 " and ".join(done["rewritten"]) or "tables", ", VXLAN senders"
                 if self.firewall.uses_vxlan_peers else "")
        # The attach hook runs inside attach's rollback scope: no pod comes up without its
        # entry (an ADD fails instead).
        node.endpoints.attach_hooks.append(self.firewall.allow)
        node.endpoints.detach_hooks.append(self.firewall.forbid)
        self._task = asyncio.create_task(self._loop(self.interval), name="firewall-sync")

    async def _loop(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                done = await loop.run_in_executor(None, self.firewall.sync)
                self.problem_text = None
            except KernelError as e:
                if self.problem_text != str(e):
                    log.error("nftables: %s", e)
                self.problem_text = str(e)
                continue
            except Exception as e:  # noqa: BLE001 - the loop must survive anything and retry
                log.exception("nftables sync failed: %s", e)
                continue
            self._observe(done)

    def _observe(self, done: dict) -> None:
        """Log, count (podnet_firewall_syncs) and, for a repair, record a DriftRepaired event."""
        changed = bool(done["rewritten"] or done["added"] or done["removed"])
        self.metrics.firewall_syncs.labels("repaired" if changed else "none").inc()
        if not changed:
            return
        message = (f"nftables: rewrote {','.join(done['rewritten']) or 'nothing'}, set elements "
                   f"+{done['added']} -{done['removed']}")
        log.info("%s", message)
        if done["rewritten"]:
            self.events.record(ObjectRef("Node", self.node_name), "Normal", "DriftRepaired",
                            f"the node firewall had drifted: {message}")

    def problem(self) -> str | None:
        """A table we cannot write makes the node unfit for new pods (CNI STATUS fails)."""
        return f"firewall: {self.problem_text}" if self.problem_text else None

    async def stop(self) -> None:
        # The tables stay: pods stay guarded across a daemon restart.
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.firewall:
            await asyncio.get_running_loop().run_in_executor(None, self.firewall.close)


# No flags of its own (it repairs every --reconcile-interval, a core flag): always on.
FEATURE = Feature("firewall", component=lambda ctx, _cfg: FirewallComponent(ctx))
