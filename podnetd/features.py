"""What podnetd is made of beside its core (IPAM, bridge, endpoints, the CNI relay, the API): the
one place where a feature is added (FEATURES below), and the contract a feature follows (its
types are in podnetd/wiring.py: Feature, NodePlan, Node, DaemonContext).

How podnetd starts (podnetd/main.py, podnetd/daemon.py):
 1. parse: the core's flags (config.py) and every feature's `add_flags(parser)`; `--config FILE`
    (YAML/JSON, keys mirror the long flags) fills in what the command line leaves out. The core's
    checks make a `config.DaemonConfig`, then every feature's `config(namespace, daemon_config)`
    makes that feature's typed configuration (None: the feature is off for these flags). The
    result is a `config.Settings` (settings.daemon, settings.feature("cluster"), ...).
 2. build: for every feature that is on, in FEATURES' order, `component(ctx, feature_config)`
    makes its component (or None); no kernel or network work happens here.
 3. prepare: every component that has `async prepare(plan) -> NodePlan` may change the node plan
    (the pod CIDR, the pod MTU, the underlay address, the pods' GSO limit, the firewall's
    cluster rules) before the node is set up; it returns a new plan (dataclasses.replace).
 4. node setup: the bridge, IPAM and endpoints, from the DaemonConfig and the final plan
    (ctx.node is set from then on).
 5. start: components start in FEATURES' order (`async start()`) and stop in reverse
    (`async stop()`); a component may have `problem() -> str | None`, which makes CNI STATUS
    and `podnetctl status` report the node unfit for new pods.
 6. serve: every feature's `services(server, ctx, component)` adds its gRPC services and returns
    their full names; it is called for every feature, with component None when the feature is
    off, so a service can still answer (ClusterService: "cluster mode is off on this node").

To add a feature (e.g. podnetd/apiserver/):
 - in its package (`from ..config import ConfigError, DaemonConfig`,
   `from ..wiring import DaemonContext, Feature`), a frozen dataclass for its configuration
   (e.g. `ApiServerConfig`; its flags also work as `--config` file keys with no more work), and
     def add_flags(parser): group = parser.add_argument_group("api server"); group.add_argument(...)
     def config(ns, daemon: DaemonConfig) -> ApiServerConfig | None:
         # check ns.<your flags>; raise ConfigError("--api-listen X: why") (one line, the
         # flag first: podnetd prints "podnetd: error: <message>" and exits 2); return None when
         # the feature is off for these flags; parse values here (sizes to ints, lists to
         # tuples), so nothing downstream reads the Namespace
     def component(ctx: DaemonContext, cfg: ApiServerConfig): return ApiServer(ctx, cfg)
     def services(server, ctx, component) -> list[str]: register servicers, return full names
     FEATURE = Feature("apiserver", add_flags=add_flags, config=config, component=component,
                       services=services)
 - import it below and add it to FEATURES where it must start (after what it uses).
 A component gets what it needs from its config and the context (ctx.config, ctx.events,
 ctx.metrics, ctx.serving, ctx.node after setup, ctx.component("name") for a component started
 before it); it does not reach into the Daemon. Every hook is optional; a feature without
 `config` is always on and its component() gets config None.
"""
from .apiserver.wire import FEATURE as apiserver
from .cluster.wire import FEATURE as cluster
from .controllers.wire import FEATURE as controllers
from .firewall import FEATURE as firewall
from .kubelet.wire import FEATURE as kubelet
from .runtime import FEATURE as runtime
from .wiring import Feature

# Start order: the firewall first (anti-spoofing and the node's input limits exist before any
# pod is attached), then cluster routing, then the cluster API (its store may be the cluster's
# etcd), then the pod runtime (its pods need the network), then the node agent (it runs the
# cluster's pods with the runtime and reports to the API), then the control plane (leader
# election for the scheduler and the controllers).
FEATURES: tuple[Feature, ...] = (firewall, cluster, apiserver, runtime, kubelet, controllers)
