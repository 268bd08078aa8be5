"""The pod sandbox (kubelet's RunPodSandbox / StopPodSandbox): the pod's named network
namespace, its /dev/shm, the pause container (catatonit) that holds the IPC/UTS (and PID)
namespaces, and the CNI network chain. Made all or nothing: a failure rolls back every step."""
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time

from ..kernel import vxlan
from ..kernel.errors import KernelError
from . import cni_client, host, oci, spec as ocispec
from .context import Context
from .errors import SandboxError
from .model import Pod

log = logging.getLogger(__name__)
SHM_SIZE = 64 * 2**20


def hostname(pod: Pod) -> str:
    return (pod.spec.get("hostname") or pod.name)[:63]


def cni_args(pod: Pod) -> str:
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={pod.pause_id};K8S_POD_UID={pod.uid}")


def runtime_config(pod: Pod) -> dict:
    ports = [{"hostPort": p["hostPort"], "containerPort": p["containerPort"],
              "protocol": p.get("protocol", "TCP").lower()}
             for c in pod.containers.values() for p in c.spec.get("ports") or []
             if p.get("hostPort")]
    return {"portMappings": ports} if ports else {}


class Sandboxes:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.cni = cni_client.CniClient(ctx.cfg.cni_conf_dir, list(ctx.cfg.cni_bin_dirs))
        self.host_ip = ""           # the node's address, refreshed whenever a sandbox is made

    def pause_rootfs(self) -> str:
        root = os.path.join(self.ctx.layout.root, "pause-rootfs")
        binary = shutil.which("catatonit") or "/usr/bin/catatonit"
        target = os.path.join(root, "catatonit")
        if not os.path.exists(target):
            for d in ("proc", "dev", "sys", "etc"):
                os.makedirs(os.path.join(root, d), exist_ok=True)
            try:
                shutil.copy2(binary, target + ".tmp")
                os.rename(target + ".tmp", target)
            except OSError as e:
                # not a node problem (the network is fine): pods fail with this reason instead
                log.warning("pod runtime: no catatonit for pause containers: %s", e)
        if not os.path.exists(target):
            raise SandboxError("catatonit is not installed: no pause container "
                               "(apt-get install catatonit)")
        return root

    async def create(self, pod: Pod) -> None:
        """Make the sandbox: on success pod.sandbox is set (and persisted); on any failure
        whatever was made is undone and the error raised."""
        ctx = self.ctx
        async with contextlib.AsyncExitStack() as undo:
            os.makedirs(ctx.layout.pod_dir(pod, "ctr"), exist_ok=True)
            shm = ctx.layout.pod_dir(pod, "shm")
            host.mount_tmpfs(shm, SHM_SIZE)
            undo.callback(host.umount, shm)
            netns_path = None
            if not pod.host_network:
                pod.netns = f"podnet-{pod.uid[:12]}"
                undo.callback(setattr, pod, "netns", "")
                netns_path = await asyncio.to_thread(host.netns_create, pod.netns)
                undo.callback(host.netns_delete, pod.netns)
            bundle = ctx.layout.pod_dir(pod, "pause")
            os.makedirs(bundle, exist_ok=True)
            config = ocispec.container_spec(
                rootfs=self.pause_rootfs(), args=["/catatonit", "-P"], env=["PATH=/"],
                cwd="/", uid=0, gid=0, caps=[], readonly_root=True, no_new_privs=True,
                privileged=False, hostname=None if pod.host_network else hostname(pod),
                namespaces=ocispec.namespaces(net=netns_path, ipc="",
                                              uts=None if pod.host_network else "", pid=""),
                mounts=[ocispec.bind(shm, "/dev/shm")], base=ocispec.sandbox_mounts(),
                cgroups_path=f"/podnet-{pod.uid[:12]}", res=ocispec.resources(None, 2, None, False),
                annotations={"io.kubernetes.pod.name": pod.name,
                             "io.kubernetes.pod.namespace": pod.namespace})
            with open(os.path.join(bundle, "config.json"), "w") as f:
                f.write(json.dumps(config))   # one shot: json.dump encodes in Python
            # the pause container and the CNI chain only share the netns: run them together
            t0 = time.monotonic()
            undo.push_async_callback(oci.delete, ctx.oci, pod.pause_id)
            pause, net = await asyncio.gather(
                oci.run_detached(ctx.oci, pod.pause_id, bundle, os.path.join(bundle, "run.log")),
                self._network_add(pod, netns_path), return_exceptions=True)
            if net and not isinstance(net, BaseException):
                conflist, result = net
                undo.push_async_callback(self.cni.delete, conflist, result, pod.pause_id,
                                         netns_path, "eth0", cni_args(pod), runtime_config(pod))
            for outcome in (pause, net):
                if isinstance(outcome, BaseException):
                    raise outcome
            log.debug("pod %s: pause and network up in %.3fs", pod.key, time.monotonic() - t0)
            ctx.run(pod).pause_pid = pause     # checked again (pid_alive) where it is used
            if net:
                pod.cni = {"conflist": conflist, "result": result}
                pod.ip = cni_client.pod_ip(result)
            await self.refresh_host_ip()
            if pod.host_network:
                pod.ip = self.host_ip
            self._write_etc(pod)
            pod.sandbox = True
            pod.start_time = pod.start_time or time.time()
            ctx.event(pod, "Normal", "SandboxReady",
                      f"pause {pod.pause_id} up" + (f", IP {pod.ip}" if pod.ip else ""))
            ctx.persist(pod)
            undo.pop_all()

    async def _network_add(self, pod: Pod, netns_path: str | None) -> tuple | None:
        if pod.host_network:
            return None
        return await self.cni.add(pod.pause_id, netns_path, "eth0", cni_args(pod),
                                  runtime_config(pod))

    async def refresh_host_ip(self) -> None:
        try:
            self.host_ip = await asyncio.get_running_loop().run_in_executor(
                None, self._node_address)
        except KernelError as e:
            log.warning("node address: %s (status.hostIP stays %r)", e, self.host_ip)

    def _node_address(self) -> str:
        """The node's address, status.hostIP (and podIP with hostNetwork), as the kubelet
        reports its node's InternalIP: the cluster's --node-ip, else the default-route
        interface's address, else the first other IPv4 address that is not the pod bridge's.
        Blocking (netlink): called off the loop."""
        node = self.ctx.node
        if node.node_ip:
            return node.node_ip
        address = vxlan.default_route_address()
        if address:
            return address
        for a in vxlan.ipv4_addresses():
            if a["dev"] not in ("lo", node.bridge) and not a["ip"].startswith("127."):
                return a["ip"]
        return ""

    def _write_etc(self, pod: Pod) -> None:
        name = hostname(pod)
        fqdn = name
        if pod.spec.get("subdomain"):
            fqdn = f"{name}.{pod.spec['subdomain']}.{pod.namespace}.svc.cluster.local"
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        if pod.ip:
            hosts += f"{pod.ip}\t{fqdn}{' ' + name if fqdn != name else ''}\n"
        etc = self.ctx.layout.pod_dir(pod, "etc")
        os.makedirs(etc, exist_ok=True)
        with open(os.path.join(etc, "hosts"), "w") as f:
            f.write(hosts)
        with open(os.path.join(etc, "hostname"), "w") as f:
            f.write(name + "\n")
        try:
            with open("/etc/resolv.conf") as f:
                resolv = f.read()
        except OSError:
            resolv = ""
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write(resolv)

    async def alive(self, pod: Pod) -> bool:
        st = await oci.state(self.ctx.oci, pod.pause_id)
        return bool(st) and st.get("status") == "running"

    async def pause_pid(self, pod: Pod) -> int:
        run = self.ctx.run(pod)
        if run.pause_pid and host.pid_alive(run.pause_pid, "catatonit"):
            return run.pause_pid
        st = await oci.state(self.ctx.oci, pod.pause_id) or {}
        run.pause_pid = int(st.get("pid") or 0) if st.get("status") == "running" else 0
        return run.pause_pid

    async def teardown(self, pod: Pod) -> None:
        """Network DEL, pause container gone, netns deleted, every mount under the pod's
        directory undone; errors are reported as an event, the rest still runs."""
        ctx = self.ctx
        errors = []
        if pod.cni and pod.netns:
            try:
                await self.cni.delete(pod.cni["conflist"], pod.cni.get("result"), pod.pause_id,
                                      host.netns_path(pod.netns), "eth0", cni_args(pod),
                                      runtime_config(pod))
                pod.cni = {}
            except cni_client.CniClientError as e:
                errors.append(str(e))
        await oci.kill(ctx.oci, pod.pause_id, signal.SIGKILL)
        try:
            await oci.delete(ctx.oci, pod.pause_id)
        except oci.OciError as e:
            errors.append(str(e))
        if pod.netns:
            try:
                await asyncio.to_thread(host.netns_delete, pod.netns)
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
        for c in pod.containers.values():
            host.umount(ctx.layout.ctr_dir(c, "rootfs"))
        for m in sorted(host.mounts_under(ctx.layout.pod_dir(pod)), key=len, reverse=True):
            host.umount(m)
        pod.sandbox = False
        if errors:
            ctx.event(pod, "Warning", "TeardownFailed", "; ".join(errors))
            log.warning("pod %s: teardown: %s", pod.key, "; ".join(errors))
        else:
            ctx.event(pod, "Normal", "SandboxRemoved",
                      "network torn down, pause container removed")

    async def gc(self, valid: list[tuple[str, str]]) -> None:
        """CNI GC of every attachment that is not one of valid (pause id, ifname)."""
        for attempt in range(3):
            try:
                skipped = await self.cni.gc(valid)
                if skipped is not None:
                    log.info("CNI GC done: %d valid attachments", len(valid))
                if skipped:
                    log.info("CNI GC: not asked, as they do not support the configuration's "
                             "cniVersion: %s", "; ".join(skipped))
                return
            except cni_client.CniClientError as e:
                log.warning("CNI GC (attempt %d): %s", attempt + 1, e)
                await asyncio.sleep(0.5)
