"""The control plane feature of podnetd (podnetd/features.py): on every node, candidates for
the scheduler's and the controller manager's leases (kube-system/kube-scheduler,
kube-system/kube-controller-manager); whichever node holds a lease runs those loops. Nodes die,
leases expire, another node takes over within the lease duration plus a retry period."""
import argparse
import asyncio
import dataclasses

from .. import config
from ..wiring import DaemonContext, Feature
from .clusterrole_aggregation import ClusterRoleAggregationController
from .event_recorder import ApiEventRecorder
from .leader import LeaderElector
from .namespaces import NamespaceController
from .node_lifecycle import NodeLifecycleController


@dataclasses.dataclass(frozen=True)
class ControlPlaneConfig:
    leader_elect: bool = True
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    node_monitor_grace_period: float = 40.0


@dataclasses.dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ("system:authenticated",)


SCHEDULER_USER = ServiceUser("system:kube-scheduler")
CONTROLLER_USER = ServiceUser("system:kube-controller-manager")


def add_flags(p) -> None:
    g = p.add_argument_group("control plane")
    g.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                   help="run the scheduler and the controllers only while this node holds "
                        "their lease (default on; --no-leader-elect: never run them here)")
    g.add_argument("--leader-elect-lease-duration", type=float, default=15.0,
                   help="seconds a leader's lease lasts without renewal (default 15)")
    g.add_argument("--node-monitor-grace-period", type=float, default=40.0,
                   help="seconds without a node Lease renewal before the node is "
                        "Ready=Unknown and tainted unreachable (default 40)")


def build_config(ns, daemon: config.DaemonConfig) -> ControlPlaneConfig:
    duration = ns.leader_elect_lease_duration
    if not 1.0 <= duration <= 3600:
        raise config.ConfigError(f"--leader-elect-lease-duration {duration}: must be between 1 "
                                 "and 3600 seconds")
    if not 1.0 <= ns.node_monitor_grace_period <= 86400:
        raise config.ConfigError(f"--node-monitor-grace-period {ns.node_monitor_grace_period}: "
                                 "must be between 1 and 86400 seconds")
    return ControlPlaneConfig(
        leader_elect=ns.leader_elect, lease_duration=duration,
        renew_deadline=max(0.5, duration * 2 / 3), retry_period=max(0.2, min(2.0, duration / 7)),
        node_monitor_grace_period=ns.node_monitor_grace_period)


class ControlPlane:
    def __init__(self, api, cfg: ControlPlaneConfig, identity: str, release_claim=None):
        """release_claim: the fabric's (cluster component's) release of a deleted node's pod
        CIDR block, or None on a node without cluster routing."""
        from .scheduling import SchedulerLoop
        self.cfg = cfg
        sched_client = api.as_user(SCHEDULER_USER)
        cm_client = api.as_user(CONTROLLER_USER)
        self.scheduler = None
        self.lifecycle = None

        async def schedule():
            self.scheduler = SchedulerLoop(sched_client,
                                           ApiEventRecorder(sched_client, "default-scheduler"))
            await self.scheduler.run()

        async def control():
            self.lifecycle = NodeLifecycleController(
                cm_client, cfg.node_monitor_grace_period,
                ApiEventRecorder(cm_client, "node-controller"), release_claim)
            await asyncio.gather(self.lifecycle.run(), NamespaceController(cm_client).run(),
                                 ClusterRoleAggregationController(cm_client).run())
        timing = dict(lease_duration=cfg.lease_duration, renew_deadline=cfg.renew_deadline,
                      retry_period=cfg.retry_period)
        self.electors = [LeaderElector(sched_client, "kube-scheduler", identity, lead=schedule,
                                       **timing),
                         LeaderElector(cm_client, "kube-controller-manager", identity,
                                       lead=control, **timing)]

    async def start(self) -> None:
        for e in self.electors:
            await e.start()

    async def stop(self) -> None:
        for e in self.electors:
            await e.stop()


def make_component(ctx: DaemonContext, cfg: ControlPlaneConfig) -> ControlPlane | None:
    api = ctx.component("apiserver")
    if api is None or not cfg.leader_elect:
        return None
    fabric = ctx.component("cluster")
    return ControlPlane(api.api, cfg, ctx.config.node_name,
                        fabric.release_claim if fabric is not None else None)


FEATURE = Feature("controllers", add_flags=add_flags, config=build_config,
                  component=make_component)
