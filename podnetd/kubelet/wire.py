"""The node agent feature of podnetd (podnetd/features.py): registration and the node Lease
(registration.py), and the pods bound to this node (pod_sync.py, when the pod runtime runs).
It talks to the cluster API in-process, as `system:node:NAME` (group system:nodes)."""
import dataclasses

from .. import config
from ..wiring import DaemonContext, Feature
from . import facts, node_object
from ..controllers.event_recorder import ApiEventRecorder
from .pod_sync import PodSync, is_cluster_pod
from .registration import NodeRegistration


@dataclasses.dataclass(frozen=True)
class NodeUser:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ("system:nodes", "system:authenticated")


def node_user(node_name: str) -> NodeUser:
    return NodeUser(f"system:node:{node_name}")


@dataclasses.dataclass(frozen=True)
class KubeletConfig:
    labels: tuple = ()
    taints: tuple = ()
    system_reserved: tuple = ()
    max_pods: int = 110
    lease_renew: float = 10.0


def add_flags(p) -> None:
    g = p.add_argument_group("node agent")
    g.add_argument("--node-labels", help="labels of this node's Node object, k=v,k2=v2")
    g.add_argument("--register-with-taints", help="taints this node registers with, "
                                                  "k=v:NoSchedule,k2:NoExecute")
    g.add_argument("--system-reserved", help="resources kept from pods, cpu=500m,memory=1Gi")
    g.add_argument("--max-pods", type=int, default=110, help="pods this node takes (default 110)")
    g.add_argument("--node-lease-renew", type=float, default=10.0,
                   help="seconds between renewals of the node's Lease (default 10)")


def build_config(ns, daemon: config.DaemonConfig) -> KubeletConfig:
    try:
        kc = KubeletConfig(node_object.parse_labels(ns.node_labels),
                           node_object.parse_taints(ns.register_with_taints),
                           node_object.parse_reserved(ns.system_reserved), ns.max_pods,
                           ns.node_lease_renew)
    except node_object.NodeConfigError as e:
        raise config.ConfigError(str(e)) from None
    if not 1 <= kc.max_pods <= 10000:
        raise config.ConfigError(f"--max-pods {kc.max_pods}: must be between 1 and 10000")
    if not 0.1 <= kc.lease_renew <= 300:
        raise config.ConfigError(f"--node-lease-renew {kc.lease_renew}: must be between 0.1 "
                                 "and 300 seconds")
    return kc


NODE_ONLY_REASONS = frozenset({"Scheduled", "SandboxReady"})


class KubeletComponent:
    def __init__(self, ctx: DaemonContext, kc: KubeletConfig, apiserver, runtime):
        """apiserver: the cluster API's component; runtime: the pod runtime, or None."""
        self.ctx = ctx
        node_name = ctx.config.node_name
        self.client = apiserver.api.as_user(node_user(node_name))
        api_listen = apiserver.cfg.api_listen
        scope = "cluster" if apiserver.cfg.store_kind == "etcd" else "node-local"
        oci = runtime.cfg.oci_runtime if runtime is not None else "runc"

        def gather():
            from ..kernel import vxlan
            plan = ctx.node.plan  # the node is set up before components start
            ip = plan.node_ip or vxlan.default_route_address() or "127.0.0.1"
            port = int(api_listen.rpartition(":")[2]) if api_listen else 0
            images = node_object.node_images(runtime.images.list()) if runtime else ()
            return facts.gather(node_name, ip, plan.pod_cidr, oci, ctx.config.state_dir,
                                labels=kc.labels, taints=kc.taints,
                                system_reserved=kc.system_reserved, max_pods=kc.max_pods,
                                api_port=port, api_scope=scope, images=images)
        self.registration = NodeRegistration(self.client, gather, lambda: ctx.node.status(),
                                             kc.lease_renew)
        self.pods = PodSync(self.client, runtime, node_name) if runtime else None
        self.recorder = ApiEventRecorder(self.client, "kubelet", node_name)
        if runtime is not None:
            runtime.listeners.append(self._pod_event)

    def _pod_event(self, pod, type_: str, reason: str, message: str, container: str) -> None:
        self.pods.poke(pod.key)
        # The scheduler says Scheduled; the sandbox's own events stay on the node (`podnetctl pod
        # events`): the kubelet reports a sandbox only when it had to be made again.
        if is_cluster_pod(pod) and reason not in NODE_ONLY_REASONS:
            self.recorder({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": pod.name, "namespace": pod.namespace,
                                        "uid": pod.uid}}, type_, reason, message)

    async def start(self) -> None:
        await self.registration.start()
        if self.pods is not None:
            await self.pods.start()

    async def stop(self) -> None:
        if self.pods is not None:
            await self.pods.stop()
        await self.registration.stop()


def make_component(ctx: DaemonContext, kc: KubeletConfig) -> KubeletComponent | None:
    apiserver = ctx.component("apiserver")
    if apiserver is None:
        return None
    return KubeletComponent(ctx, kc, apiserver, ctx.component("runtime"))


FEATURE = Feature("kubelet", add_flags=add_flags, config=build_config, component=make_component)
