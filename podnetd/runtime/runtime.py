"""The pod runtime component of podnetd: pods from manifests, a pause container per pod
attached through CNI, init/sidecar/app containers under runc, kubelet's lifecycle.

Every blocking or forking step is asynchronous (asyncio subprocesses) or runs off the loop, so
the daemon keeps serving the CNI plugin's relayed calls (the podnet plugin calls back into this
very daemon during a pod's ADD)."""
import asyncio
import collections
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import stat
import threading
import time
import uuid

from ..kernel import vxlan
from ..kernel.errors import KernelError
from . import cni_client, host, manifest, oci, probes, spec as ocispec, userdb
from .images import ImageError, ImageStore
from ..events import ObjectRef
from ..metrics import gauge
from ..timestamps import rfc3339
from .model import Ctr, Pod
from . import seccomp

log = logging.getLogger(__name__)
SHIM_CHECK_INTERVAL = 2.0  # seconds between checks that a shim did not outlive its container
SHM_SIZE = 64 * 2**20
STARTUP_TIMEOUT = 30.0
EVICTION_PERIOD = 10.0     # seconds between checks of emptyDir sizeLimits (kubelet: 10 s)


class PodError(Exception):
    """A request cannot be served (unknown pod, bad manifest...); the message is for users."""

    def __init__(self, message: str, code: str = "invalid"):
        super().__init__(message)
        self.code = code   # invalid | not_found | exists | precondition | internal


def _expand(text: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


class Runtime:
    _volumes_lock = threading.Lock()  # volume set-up runs in worker threads (_mounts)

    def __init__(self, daemon):
        cfg = daemon.cfg
        self.daemon = daemon
        self.cfg = cfg
        self.oci = cfg.oci_runtime
        self.dir = cfg.runtime_dir or os.path.join(cfg.state_dir, "runtime")
        self.state_dir = os.path.join(cfg.state_dir, "pods")
        self.images = ImageStore(os.path.join(self.dir, "images"))
        self.seccomp = seccomp.Profiles(
            getattr(cfg, "seccomp_profile_root", None) or seccomp.DEFAULT_PROFILE_ROOT)
        self.cni = cni_client.CniClient(cfg.cni_conf_dir, cfg.cni_bin_dir.split(":"))
        self.backoff_base = cfg.restart_backoff
        self.backoff_max = cfg.restart_backoff_max
        self.pods: dict[str, Pod] = {}
        self._bg: set[asyncio.Task] = set()
        self._idle: oci.IdleShim | None = None
        self.metrics = daemon.metrics
        self.host_ip = ""           # the node's address, refreshed whenever a sandbox is made
        self.metrics.add_source(self._pod_metrics)

    # -- component ----------------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(self.dir, "pods"), mode=0o700, exist_ok=True)
        with contextlib.suppress(PodError):  # reported per pod when it is missing
            self._pause_rootfs()
        for name in sorted(os.listdir(self.state_dir)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.state_dir, name)) as f:
                    pod = Pod.from_json(json.load(f))
            except (OSError, ValueError, KeyError) as e:
                log.warning("pod state %s: cannot load: %s", name, e)
                continue
            pod.on_event = self._record_event
            self.pods[pod.key] = pod
        for pod in list(self.pods.values()):
            if not pod.stopped:
                await self._adopt(pod)
        await self._refresh_host_ip()
        self._spawn(self._gc_when_serving())
        self._spawn(self._local_storage_eviction())
        self._refill_shim()
        log.info("pod runtime: %s, %d pods adopted, CNI conf %s, plugins %s", self.oci,
                 sum(1 for p in self.pods.values() if not p.stopped), self.cfg.cni_conf_dir,
                 self.cfg.cni_bin_dir)

    def _record_event(self, pod: Pod, kind: str, reason: str, message: str,
                      container: str) -> None:
        self.daemon.events.record(ObjectRef("Pod", pod.name, pod.namespace), kind, reason,
                                  message, f"spec.containers{{{container}}}" if container else "")

    def _pod_metrics(self):
        """Pods by phase, read by the metrics thread (a dict the loop changes meanwhile is
        copied again)."""
        for _ in range(5):
            try:
                pods = list(self.pods.values())
                break
            except RuntimeError:
                continue
        else:
            return
        phases = collections.Counter((p.phase(),) for p in pods)
        yield gauge("podnet_pods", "Pods of this node's runtime, by phase", ["phase"], phases)

    async def stop(self) -> None:
        """podnetd stops: the pods keep running (their shims and runc are in other sessions);
        only our watchers go."""
        tasks = [p.task for p in self.pods.values() if p.task] + \
            [c.task for p in self.pods.values() for c in p.containers.values() if c.task] + \
            list(self._bg)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        for pod in self.pods.values():
            self._persist(pod)
        if self._idle is not None:
            self._idle.discard()
            host.reap(self._idle.pid)
            self._idle = None

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    def _pause_rootfs(self) -> str:
        root = os.path.join(self.dir, "pause-rootfs")
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
            raise PodError("catatonit is not installed: no pause container "
                           "(apt-get install catatonit)", "precondition")
        return root

    async def _gc_when_serving(self) -> None:
        """CNI GC once the daemon serves (the podnet plugin calls back into it)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.daemon.serving.wait(), 10)
        valid = [(p.pause_id, "eth0") for p in self.pods.values() if p.cni]
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

    # -- paths and persistence ----------------------------------------------------------

    def pod_dir(self, pod: Pod, *parts) -> str:
        return os.path.join(self.dir, "pods", pod.uid, *parts)

    def ctr_dir(self, c: Ctr, *parts) -> str:
        return self.pod_dir(c.pod, "ctr", c.name, *parts)

    def log_path(self, c: Ctr, attempt: int) -> str:
        return self.pod_dir(c.pod, "logs", c.name, f"{attempt}.log")

    def _state_file(self, pod: Pod) -> str:
        return os.path.join(self.state_dir, f"{pod.namespace}_{pod.name}.json")

    def _persist(self, pod: Pod) -> None:
        path = self._state_file(pod)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(pod.to_json(), f)
        os.replace(tmp, path)

    # -- requests -----------------------------------------------------------------------

    def get(self, name: str, namespace: str = "") -> Pod:
        pod = self.pods.get(f"{namespace or 'default'}/{name}")
        if pod is None:
            raise PodError(f"pod {name!r} not found in namespace {namespace or 'default'}",
                           "not_found")
        return pod

    async def run_pod(self, text: str) -> Pod:
        try:
            # off the loop: the text is untrusted (bounded, but parsing 1 MiB takes a while)
            doc = await asyncio.to_thread(manifest.parse, text)
        except manifest.ManifestError as e:
            raise PodError(f"invalid manifest: {e}") from None
        meta = doc["metadata"]
        key = f"{meta.get('namespace') or 'default'}/{meta['name']}"
        if key in self.pods:
            raise PodError(f"pod {key} already exists (pod rm it first)", "exists")
        for c in [*(doc["spec"].get("initContainers") or []), *doc["spec"]["containers"]]:
            if self.images.get(c["image"]) is None:
                raise PodError(f"image {c['image']!r} of container {c['name']!r} is not in the "
                               "image store (podnetctl image import NAME ARCHIVE)", "precondition")
        pod = Pod(doc, str(uuid.uuid4()), time.time())
        pod.on_event = self._record_event
        pod.event("Normal", "Scheduled", f"Assigned {key} to {self.cfg.node_name}")
        self.pods[key] = pod
        self._persist(pod)
        pod.task = asyncio.get_running_loop().create_task(self._run(pod))
        return pod

    async def wait_started(self, pod: Pod, timeout: float = 60) -> None:
        """Until the sandbox exists and every container has been started once (or the pod
        ended): what `pod run` waits for before answering."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pod.finished or pod.stopped or (pod.sandbox and pod.initialized and all(
                    c.state.get("waiting", {}).get("reason") != "ContainerCreating"
                    for c in pod.apps())) \
                    or (pod.reason and not pod.sandbox):
                return
            await asyncio.sleep(0.005)

    async def stop_pod(self, pod: Pod, max_grace: float | None = None,
                       reason: str = "Stopped") -> bool:
        """Stop the pod with its grace period, capped at max_grace when that is given; False
        when it was already stopped."""
        async with pod.lock:
            if pod.stopped:
                return False
            grace = manifest.grace_period(pod.spec)
            await self._stop(pod, grace if max_grace is None else min(grace, max_grace), reason)
            return True

    async def stop_all(self, max_grace: float | None = None) -> list[str]:
        """Stop every pod not yet stopped, all at once, as kubelet's graceful node shutdown
        does. Without it a shutdown leaves the containers to systemd-shutdown, which waits 90 s
        for any PID 1 that ignores SIGTERM. Returns the keys of the pods this call stopped."""
        pods = list(self.pods.values())
        stopped = await asyncio.gather(*(self.stop_pod(p, max_grace, "Terminated") for p in pods))
        return sorted(p.key for p, done in zip(pods, stopped) if done)

    async def remove_pod(self, pod: Pod) -> None:
        await self.stop_pod(pod)
        async with pod.lock:
            await asyncio.to_thread(self._remove_pod_dir, pod)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._state_file(pod))
            self.pods.pop(pod.key, None)

    def _remove_pod_dir(self, pod: Pod) -> None:
        """Unmount what is left under the pod's directory, then delete it. Its volumes hold
        whatever the containers wrote, so this runs off the event loop, and never while a
        mount is left: a volume's staging mount can be a hostPath, which rmtree would empty."""
        for m in sorted(host.mounts_under(self.pod_dir(pod)), key=len, reverse=True):
            host.umount(m)
        left = host.mounts_under(self.pod_dir(pod))
        if left:
            raise PodError(f"pod {pod.key}: still mounted, not removed: {', '.join(left)}",
                           "internal")
        shutil.rmtree(self.pod_dir(pod), ignore_errors=True)

    def images_in_use(self) -> set[str]:
        return {c.image_id for p in self.pods.values() if not p.stopped
                for c in p.containers.values() if c.image_id}

    # -- the pod's life -----------------------------------------------------------------

    async def _adopt(self, pod: Pod) -> None:
        """podnetd restarted: watch the pod again. Its containers never stopped."""
        if pod.sandbox:
            st = await oci.state(self.oci, pod.pause_id)
            if not st or st.get("status") != "running":
                pod.event("Warning", "SandboxLost", "the pause container is gone")
                pod.reason = "SandboxLost"
                await self._stop(pod, 0, "SandboxLost")
                return
        pod.event("Normal", "Adopted", "podnetd restarted and adopted the pod")
        for c in pod.containers.values():
            if c.attempt:
                c.exited = asyncio.Event()
        if pod.stopping:
            await self._stop(pod, 0, "Stopped")
            return
        pod.task = asyncio.get_running_loop().create_task(self._run(pod))

    async def _run(self, pod: Pod) -> None:
        try:
            if not pod.sandbox:
                try:
                    await self._create_sandbox(pod)
                except Exception as e:  # noqa: BLE001 - reported on the pod
                    log.warning("pod %s: sandbox: %s", pod.key, e)
                    pod.reason = "SandboxCreationFailed"
                    pod.event("Warning", "FailedCreatePodSandBox", str(e))
                    pod.finished = pod.stopped = True
                    for c in pod.containers.values():
                        c.state = {"waiting": {"reason": "ContainerCreating",
                                               "message": f"sandbox: {e}"}}
                    self._persist(pod)
                    return
            if not await self._run_init(pod):
                return
            for c in pod.apps():
                self._supervise(c)
            await asyncio.gather(*(c.task for c in pod.apps()))
            if pod.stopping:
                return
            # every app container is done for good: sidecars go, in reverse order
            pod.finished = True
            for c in reversed(pod.of_kind("sidecar")):
                await self._kill(c, manifest.grace_period(pod.spec), "pod completed")
                if c.task:
                    await c.task
            pod.event("Normal", "Completed" if pod.phase() == "Succeeded" else "Failed",
                      f"pod {pod.phase()}")
            self._persist(pod)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - never let a pod's runner die silently
            log.exception("pod %s: runner failed", pod.key)
            pod.event("Warning", "RuntimeError", str(e))
            self._persist(pod)

    async def _run_init(self, pod: Pod) -> bool:
        """Init containers one by one to success; sidecars started (and startup-probed) in
        order before what follows them. False when the pod failed or is stopping."""
        for c in pod.init_order():
            if pod.stopping:
                return False
            if c.kind == "sidecar":
                self._supervise(c)
                waiter = asyncio.ensure_future(c.started_event.wait())
                stopper = asyncio.ensure_future(pod.stop_event.wait())
                await asyncio.wait([waiter, stopper, c.task], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if not c.started:
                    return False
                continue
            if c.exit_code() == 0 and not c.attempt:
                continue
            self._supervise(c)
            await c.task
            if c.exit_code() != 0:
                if not pod.stopping:
                    pod.finished = True
                    pod.event("Warning", "Failed", f"init container {c.name} failed")
                    for s in reversed(pod.of_kind("sidecar")):
                        await self._kill(s, manifest.grace_period(pod.spec), "pod failed")
                    self._persist(pod)
                return False
        if not pod.initialized:
            pod.initialized = True
            self._persist(pod)
        return True

    # -- sandbox ------------------------------------------------------------------------

    def _cni_args(self, pod: Pod) -> str:
        return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={pod.pause_id};K8S_POD_UID={pod.uid}")

    def _runtime_config(self, pod: Pod) -> dict:
        ports = [{"hostPort": p["hostPort"], "containerPort": p["containerPort"],
                  "protocol": p.get("protocol", "TCP").lower()}
                 for c in pod.containers.values() for p in c.spec.get("ports") or []
                 if p.get("hostPort")]
        return {"portMappings": ports} if ports else {}

    def _hostname(self, pod: Pod) -> str:
        return (pod.spec.get("hostname") or pod.name)[:63]

    async def _create_sandbox(self, pod: Pod) -> None:
        async with contextlib.AsyncExitStack() as undo:
            os.makedirs(self.pod_dir(pod, "ctr"), exist_ok=True)
            shm = self.pod_dir(pod, "shm")
            host.mount_tmpfs(shm, SHM_SIZE)
            undo.callback(host.umount, shm)
            netns_path = None
            if not pod.host_network:
                pod.netns = f"podnet-{pod.uid[:12]}"
                netns_path = await asyncio.to_thread(host.netns_create, pod.netns)
                undo.callback(host.netns_delete, pod.netns)
            bundle = self.pod_dir(pod, "pause")
            os.makedirs(bundle, exist_ok=True)
            config = ocispec.container_spec(
                rootfs=self._pause_rootfs(), args=["/catatonit", "-P"], env=["PATH=/"],
                cwd="/", uid=0, gid=0, caps=[], readonly_root=True, no_new_privs=True,
                privileged=False, hostname=None if pod.host_network else self._hostname(pod),
                namespaces=ocispec.namespaces(net=netns_path, ipc="",
                                              uts=None if pod.host_network else "", pid=""),
                mounts=[ocispec.bind(shm, "/dev/shm")],
                cgroups_path=f"/podnet-{pod.uid[:12]}", res=ocispec.resources(None, 2, None, False),
                annotations={"io.kubernetes.pod.name": pod.name,
                             "io.kubernetes.pod.namespace": pod.namespace})
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(config, f)
            # the pause container and the CNI chain only share the netns: run them together
            t0 = time.monotonic()
            undo.push_async_callback(oci.delete, self.oci, pod.pause_id)
            pause, net = await asyncio.gather(
                oci.run_detached(self.oci, pod.pause_id, bundle, os.path.join(bundle, "run.log")),
                self._network_add(pod, netns_path), return_exceptions=True)
            if net and not isinstance(net, BaseException):
                conflist, result = net
                undo.push_async_callback(self.cni.delete, conflist, result, pod.pause_id,
                                         netns_path, "eth0", self._cni_args(pod),
                                         self._runtime_config(pod))
            for outcome in (pause, net):
                if isinstance(outcome, BaseException):
                    raise outcome
            log.debug("pod %s: pause and network up in %.3fs", pod.key, time.monotonic() - t0)
            if net:
                pod.cni = {"conflist": conflist, "result": result}
                pod.ip = cni_client.pod_ip(result)
            await self._refresh_host_ip()
            if pod.host_network:
                pod.ip = self.host_ip
            self._write_etc(pod)
            pod.sandbox = True
            pod.start_time = time.time()
            pod.event("Normal", "SandboxReady",
                      f"pause {pod.pause_id} up" + (f", IP {pod.ip}" if pod.ip else ""))
            self._persist(pod)
            undo.pop_all()

    async def _network_add(self, pod: Pod, netns_path: str | None) -> tuple | None:
        if pod.host_network:
            return None
        return await self.cni.add(pod.pause_id, netns_path, "eth0", self._cni_args(pod),
                                  self._runtime_config(pod))

    async def _refresh_host_ip(self) -> None:
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
        if getattr(self.cfg, "node_ip", None):
            return self.cfg.node_ip
        address = vxlan.default_route_address()
        if address:
            return address
        for a in vxlan.ipv4_addresses():
            if a["dev"] not in ("lo", self.cfg.bridge) and not a["ip"].startswith("127."):
                return a["ip"]
        return ""

    def _write_etc(self, pod: Pod) -> None:
        name = self._hostname(pod)
        fqdn = name
        if pod.spec.get("subdomain"):
            fqdn = f"{name}.{pod.spec['subdomain']}.{pod.namespace}.svc.cluster.local"
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        if pod.ip:
            hosts += f"{pod.ip}\t{fqdn}{' ' + name if fqdn != name else ''}\n"
        etc = self.pod_dir(pod, "etc")
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

    async def _teardown_sandbox(self, pod: Pod) -> None:
        errors = []
        if pod.cni and pod.netns:
            try:
                await self.cni.delete(pod.cni["conflist"], pod.cni.get("result"), pod.pause_id,
                                      host.netns_path(pod.netns), "eth0", self._cni_args(pod),
                                      self._runtime_config(pod))
                pod.cni = {}
            except cni_client.CniClientError as e:
                errors.append(str(e))
        await oci.kill(self.oci, pod.pause_id, signal.SIGKILL)
        try:
            await oci.delete(self.oci, pod.pause_id)
        except oci.OciError as e:
            errors.append(str(e))
        if pod.netns:
            try:
                await asyncio.to_thread(host.netns_delete, pod.netns)
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
        for c in pod.containers.values():
            host.umount(self.ctr_dir(c, "rootfs"))
        for m in sorted(host.mounts_under(self.pod_dir(pod)), key=len, reverse=True):
            host.umount(m)
        pod.sandbox = False
        if errors:
            pod.event("Warning", "TeardownFailed", "; ".join(errors))
            log.warning("pod %s: teardown: %s", pod.key, "; ".join(errors))
        else:
            pod.event("Normal", "SandboxRemoved", "network torn down, pause container removed")

    # -- containers ---------------------------------------------------------------------

    def _supervise(self, c: Ctr) -> None:
        if c.task is None or c.task.done():
            c.task = asyncio.get_running_loop().create_task(self._supervisor(c))

    def _should_restart(self, c: Ctr, code: int) -> bool:
        pod = c.pod
        if pod.stopping or (pod.finished and c.kind == "sidecar"):
            return False
        if c.kind == "sidecar":
            return True
        policy = manifest.restart_policy(pod.spec)
        if c.kind == "init":
            return code != 0 and policy != "Never"
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    def _backoff(self, c: Ctr) -> float:
        """kubelet: the first restart is immediate, then 10 s doubling up to 300 s."""
        if c.backoff_step <= 1:
            return 0.0
        return min(self.backoff_base * 2 ** (c.backoff_step - 2), self.backoff_max)

    async def _supervisor(self, c: Ctr) -> None:
        pod = c.pod
        while True:
            start_failed = False
            if c.attempt is None:
                if pod.stopping:
                    return
                try:
                    await self._start_container(c)
                except (PodError, ImageError, OSError, oci.OciError, ValueError) as e:
                    reason = e.code if isinstance(e, PodError) and e.code[0].isupper() \
                        else "CreateContainerError"
                    c.state = {"waiting": {"reason": reason, "message": str(e)}}
                    pod.event("Warning", "Failed", f"Error: {e}", c.name)
                    self._persist(pod)
                    code, ran, start_failed = 128, 0.0, True
                else:
                    code, ran = await self._watch(c)
            else:
                code, ran = await self._watch(c)
            if not self._should_restart(c, code):
                return
            if "terminated" in c.state:  # kubelet: lastState is the run before the current one
                c.last_state = c.state
            # kubelet: a container that ran twice the maximum back-off (10 minutes by default)
            # without failing restarts without back-off
            c.backoff_step = 1 if ran >= 2 * self.backoff_max else c.backoff_step + 1
            delay = self._backoff(c)
            if delay > 0:
                if not start_failed:  # a config/create error keeps its own reason (kubelet)
                    c.state = {"waiting": {"reason": "CrashLoopBackOff", "message":
                                           f"back-off {delay:g}s restarting failed container="
                                           f"{c.name} pod={pod.name}"}}
                pod.event("Warning", "BackOff", f"Back-off restarting failed container "
                                                f"{c.name} ({delay:g}s)", c.name)
                self._persist(pod)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(pod.stop_event.wait(), delay)
                if pod.stopping:
                    return
            if not start_failed:  # a container that never ran was not restarted
                c.restart_count += 1
                self.metrics.container_restarts.inc()

    def _argv_env(self, c: Ctr, image: dict) -> tuple[list[str], list[str]]:
        cfg = image.get("config") or {}
        env: dict = {}
        for item in cfg.get("Env") or []:
            k, _, v = item.partition("=")
            env[k] = v
        env["HOSTNAME"] = self._hostname(c.pod)
        for e in c.spec.get("env") or []:
            env[e["name"]] = _expand(e.get("value", ""), env)
        command, args = c.spec.get("command"), c.spec.get("args")
        if command:
            argv = command + (args or [])
        else:
            argv = (cfg.get("Entrypoint") or []) + (args if args is not None
                                                     else cfg.get("Cmd") or [])
        argv = [_expand(a, env) for a in argv]
        if not argv:
            raise PodError(f"container {c.name}: no command (none in the image either)")
        return argv, [f"{k}={v}" for k, v in env.items()]

    def _user(self, c: Ctr, image: dict, rootfs: str) -> tuple[int, int]:
        """(uid, gid): runAsUser/runAsGroup, else the image's User, names looked up in the
        image's own /etc/passwd and /etc/group (see _lookup). Runs off the event loop."""
        sec = manifest.security(c.pod.spec, c.spec)
        uid, gid = 0, None
        image_user = (image.get("config") or {}).get("User") or ""
        if image_user:
            try:
                name, group = userdb.split_user(str(image_user))
                if "runAsUser" not in sec:
                    uid = userdb.numeric_id(name)
                    if uid is None:
                        uid = self._lookup(rootfs, "passwd", name)
                if group and "runAsGroup" not in sec:
                    gid = userdb.numeric_id(group)
                    if gid is None:
                        gid = self._lookup(rootfs, "group", group)
            except userdb.UserError as e:
                raise PodError(str(e), "CreateContainerConfigError") from None
        if "runAsUser" in sec:
            uid = sec["runAsUser"]
        if "runAsGroup" in sec:
            gid = sec["runAsGroup"]
        if gid is None:
            gid = 0 if uid == 0 else uid
        if sec.get("runAsNonRoot") and uid == 0:
            raise PodError("container has runAsNonRoot and image will run as root",
                           "CreateContainerConfigError")
        return uid, gid

    @staticmethod
    def _lookup(rootfs: str, db: str, name: str) -> int:
        """The id of name in the image's /etc/passwd or /etc/group. The file is the image's:
        opened inside the rootfs (links resolved as in the container, never to the host's
        files), read only when it is a regular file of at most 1 MiB (a FIFO would block)."""
        what = "user" if db == "passwd" else "group"
        try:
            data = host.read_regular_beneath(rootfs, f"etc/{db}", userdb.DB_LIMIT)
        except host.UnsafePath as e:
            raise PodError(f"unable to find {what} {name}: /etc/{db} in the image: "
                           f"{e.strerror}", "CreateContainerConfigError") from None
        value = userdb.find_id(data, name)
        if value is None:
            raise PodError(f"unable to find {what} {name}: no matching entries in {db} file",
                           "CreateContainerConfigError")
        return value

    def _mounts(self, c: Ctr) -> list[dict]:
        """The container's mounts. A subPath, and every hostPath, is opened and checked here and
        bind-mounted from that very fd onto a staging path under the pod's directory, which
        runc then mounts: runc never resolves a path a container can change (CVE-2017-1002101).
        Runs off the event loop; the lock keeps two containers of a pod from making the same
        emptyDir twice."""
        pod = c.pod
        etc = self.pod_dir(pod, "etc")
        mounts = [ocispec.bind(self.pod_dir(pod, "shm"), "/dev/shm"),
                  ocispec.bind(os.path.join(etc, "hosts"), "/etc/hosts"),
                  ocispec.bind(os.path.join(etc, "hostname"), "/etc/hostname"),
                  ocispec.bind(os.path.join(etc, "resolv.conf"), "/etc/resolv.conf")]
        volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
        pinned: list[str] = []
        try:
            with self._volumes_lock:
                for index, m in enumerate(c.spec.get("volumeMounts") or []):
                    vol = volumes[m["name"]]
                    source = self._volume_source(pod, vol)
                    if m.get("subPath") or "hostPath" in vol:
                        source = self._pin_volume(c, index, m, vol, source)
                        pinned.append(source)
                    mounts.append(ocispec.bind(source, m["mountPath"], bool(m.get("readOnly"))))
        except BaseException:
            for target in pinned:  # no half-made container: what this call mounted goes
                with contextlib.suppress(Exception):
                    host.umount(target)
            raise
        return mounts

    async def _local_storage_eviction(self) -> None:
        """kubelet's local storage eviction for emptyDir sizeLimit on disk (a Memory emptyDir is
        a tmpfs of that size): a running pod whose emptyDir holds more than its sizeLimit is
        evicted, without grace. The volume is what its containers wrote: it is measured in a
        worker thread, without following links, and only up to the limit."""
        while True:
            await asyncio.sleep(EVICTION_PERIOD)
            for pod in list(self.pods.values()):
                if pod.stopped or pod.stopping or not pod.sandbox:
                    continue
                for vol in pod.spec.get("volumes") or []:
                    ed = vol.get("emptyDir")
                    if ed is None or ed.get("medium") == "Memory" or not ed.get("sizeLimit"):
                        continue
                    limit = int(manifest.quantity(ed["sizeLimit"], ""))
                    try:
                        used = await asyncio.to_thread(
                            host.disk_usage, self.pod_dir(pod, "volumes", vol["name"]), limit)
                    except OSError:
                        continue
                    if used > limit and not (pod.stopping or pod.stopped):
                        message = (f"Usage of EmptyDir volume \"{vol['name']}\" exceeds the "
                                   f"limit \"{ed['sizeLimit']}\". ")
                        log.warning("pod %s: evicted: %s", pod.key, message)
                        pod.event("Warning", "Evicted", message)
                        pod.reason = "Evicted"
                        self._spawn(self.stop_pod(pod, 0, "Evicted"))
                        break

    def _volume_source(self, pod: Pod, vol: dict) -> str:
        """The volume's root on the host, created when it should be (emptyDir, *OrCreate)."""
        if "hostPath" in vol:
            hp = vol["hostPath"]
            path, kind = hp["path"], hp.get("type") or ""
            try:
                if kind == "DirectoryOrCreate":
                    os.makedirs(path, mode=0o755, exist_ok=True)
                elif kind == "FileOrCreate":
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    # O_EXCL: a dangling link at path fails instead of creating its target
                    with contextlib.suppress(FileExistsError):
                        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            except OSError as e:
                raise PodError(f"hostPath {path}: cannot create: {e.strerror}",
                               "CreateContainerConfigError") from None
            return path
        path = self.pod_dir(pod, "volumes", vol["name"])
        ed = vol.get("emptyDir") or {}
        if ed.get("medium") == "Memory":
            size = ed.get("sizeLimit")
            host.mount_tmpfs(path, int(manifest.quantity(size, "")) if size else None)
        else:
            os.makedirs(path, mode=0o777, exist_ok=True)
            os.chmod(path, 0o777)
        return path

    def _pin_volume(self, c: Ctr, index: int, m: dict, vol: dict, root: str) -> str:
        """Open the volume's root (a hostPath: once, links followed as Kubernetes does; an
        emptyDir: ours, no link), then the subPath beneath it without any link, '..' or
        absolute path (creating missing directories with the volume's mode, as kubelet does),
        and bind-mount the result onto pods/<uid>/volume-subpaths/<volume>/<container>/<i>."""
        sub = m.get("subPath") or ""
        what = f"volumeMount {m['name']!r} of container {c.name!r}"
        target = self.pod_dir(c.pod, "volume-subpaths", m["name"], c.name, str(index))
        host.umount(target)  # the previous start's
        fds = []
        try:
            try:
                fds.append(host.open_host_path(root) if "hostPath" in vol
                           else host.open_dir_nofollow(root))
            except OSError as e:
                if "hostPath" in vol and e.errno == errno.ENOENT:
                    raise PodError(f"hostPath type check failed: {root} does not exist",
                                   "CreateContainerConfigError") from None
                raise PodError(f"{what}: volume {root}: {e.strerror}",
                               "CreateContainerConfigError") from None
            if "hostPath" in vol:
                _check_host_path_kind(root, vol["hostPath"].get("type") or "",
                                      host.fd_kind(fds[0]))
            if sub:
                try:
                    fds.append(self._open_sub_path(fds[0], sub))
                except host.UnsafePath as e:
                    raise PodError(f"failed to prepare subPath for {what}: subPath {sub!r}: "
                                   f"{e.strerror}", "CreateContainerConfigError") from None
            is_dir = host.fd_kind(fds[-1]) == "directory"
            _make_mount_target(target, is_dir)
            host.bind_fd(fds[-1], target)
        except (OSError, KernelError) as e:
            raise PodError(f"{what}: cannot mount {root}{'/' + sub if sub else ''}: {e}",
                           "CreateContainerConfigError") from None
        finally:
            for fd in fds:
                os.close(fd)
        return target

    @staticmethod
    def _open_sub_path(root_fd: int, sub: str) -> int:
        try:
            return host.open_beneath(root_fd, sub)
        except host.UnsafePath as e:
            if e.errno != errno.ENOENT:
                raise
        if host.fd_kind(root_fd) != "directory":
            raise host.UnsafePath(errno.ENOTDIR, sub, "the volume is not a directory")
        host.make_dirs_beneath(root_fd, sub, stat.S_IMODE(os.fstat(root_fd).st_mode))
        return host.open_beneath(root_fd, sub)

    def _container_config(self, c: Ctr, image: dict, rootfs: str, pause_pid: int) -> dict:
        pod = c.pod
        sec = manifest.security(pod.spec, c.spec)
        caps = sec.get("capabilities") or {}
        privileged = bool(sec.get("privileged"))
        argv, env = self._argv_env(c, image)
        uid, gid = self._user(c, image, rootfs)
        capset = ocispec.capabilities(caps.get("add") or [], caps.get("drop") or [], privileged,
                                      host.bounding_set())
        try:
            profile = self.seccomp.oci(sec, privileged, capset)
        except seccomp.ProfileError as e:
            raise PodError(str(e), "CreateContainerError") from None
        return ocispec.container_spec(
            rootfs=rootfs, args=argv, env=env,
            cwd=c.spec.get("workingDir") or (image.get("config") or {}).get("WorkingDir") or "/",
            uid=uid, gid=gid, groups=sec.get("supplementalGroups"), seccomp=profile,
            caps=capset,
            readonly_root=bool(sec.get("readOnlyRootFilesystem")),
            no_new_privs=sec.get("allowPrivilegeEscalation") is False,
            privileged=privileged, hostname=None,
            namespaces=self._join_namespaces(pod, pause_pid),
            mounts=self._mounts(c), cgroups_path=c.cgroups_path,
            res=ocispec.resources(manifest.cpu_millis(c.spec, "limits"),
                                  manifest.cpu_millis(c.spec, "requests"),
                                  manifest.memory_bytes(c.spec), privileged),
            annotations={"io.kubernetes.pod.name": pod.name,
                         "io.kubernetes.container.name": c.name})

    def _join_namespaces(self, pod: Pod, pid: int) -> list[dict]:
        if not pid:
            raise PodError("the pause container is not running", "CreateContainerError")
        ns = f"/proc/{pid}/ns"
        return ocispec.namespaces(
            net=None if pod.host_network else host.netns_path(pod.netns),
            ipc=f"{ns}/ipc", uts=None if pod.host_network else f"{ns}/uts",
            pid=f"{ns}/pid" if pod.spec.get("shareProcessNamespace") else "")

    async def _pause_pid(self, pod: Pod) -> int:
        pid = getattr(pod, "_pause_pid", 0)
        if pid and host.pid_alive(pid, "catatonit"):
            return pid
        st = await oci.state(self.oci, pod.pause_id)
        pod._pause_pid = int((st or {}).get("pid") or 0) if (st or {}).get("status") == "running" else 0
        return pod._pause_pid

    async def _start_container(self, c: Ctr) -> None:
        pod = c.pod
        image = self.images.get(c.spec["image"])
        if image is None:
            raise PodError(f"image {c.spec['image']!r} is not in the image store",
                           "ErrImageNeverPull")
        c.image_id = f"sha256:{image['id']}"
        rootfs = self.ctr_dir(c, "rootfs")
        # off the event loop: the old writable layer holds whatever the container wrote (any
        # number of files), and the config reads the image's files and prepares volumes
        await asyncio.to_thread(self._fresh_rootfs, c, image, rootfs)
        pause_pid = await self._pause_pid(pod)
        config = await asyncio.to_thread(self._container_config, c, image, rootfs, pause_pid)
        if pod.stopping:  # stopped while we prepared: do not start what the stop missed
            raise PodError(f"pod {pod.key} is stopping", "precondition")
        with open(self.ctr_dir(c, "config.json"), "w") as f:
            json.dump(config, f)
        attempt = c.restart_count
        log_file = self.log_path(c, attempt)
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        self._prune_logs(c, attempt)
        exit_file, pid_file = self.ctr_dir(c, "exit"), self.ctr_dir(c, "pid")
        for p in (exit_file, pid_file):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        if os.path.exists(f"/run/{self.oci}/{c.cid}"):  # left by a crash between exit and delete
            await oci.delete(self.oci, c.cid)
        shim = self._shim(["--log-max-size", str(self.cfg.container_log_max_size),
                           "--log-max-files", str(self.cfg.container_log_max_files),
                           *oci.shim_argv(self.oci, c.cid, self.ctr_dir(c), log_file,
                                          exit_file, pid_file)])
        c.attempt = {"shim_pid": shim, "started_at": time.time(), "log": log_file,
                     "exit": exit_file, "n": attempt}
        c.exited = asyncio.Event()
        c.kill_reason = None
        t0 = time.monotonic()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not os.path.exists(pid_file) and not os.path.exists(exit_file) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.003)
        log.debug("pod %s: container %s started in %.3fs", pod.key, c.name, time.monotonic() - t0)
        c.state = {"running": {"startedAt": rfc3339()}}
        c.ready = False
        c.started = False
        c.started_event.clear()
        pod.event("Normal", "Started", f"Started container {c.name}", c.name)
        self._persist(pod)

    def _fresh_rootfs(self, c: Ctr, image: dict, rootfs: str) -> None:
        """Every start gets a fresh writable layer, as in kubelet."""
        host.umount(rootfs)
        for d in ("upper", "work"):
            shutil.rmtree(self.ctr_dir(c, d), ignore_errors=True)
        host.mount_overlay([image["rootfs"]], self.ctr_dir(c, "upper"), self.ctr_dir(c, "work"),
                           rootfs)

    def _prune_logs(self, c: Ctr, attempt: int) -> None:
        """Keep the logs of this attempt and the previous one (kubelet keeps one dead container
        per container): a crash loop does not fill the disk with old attempts' logs."""
        log_dir = os.path.dirname(self.log_path(c, attempt))
        for name in os.listdir(log_dir):
            n = name.split(".", 1)[0]
            if n.isdigit() and int(n) < attempt - 1:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(log_dir, name))

    def _shim(self, argv: list[str]) -> int:
        """Hand the job to the idle shim and pre-start the next one."""
        idle, self._idle = self._idle, None
        if idle is not None and host.pid_alive(idle.pid, "shim.py"):
            pid = idle.run(argv)
        else:
            if idle is not None:
                idle.discard()
            pid = oci.spawn_shim(argv, os.path.join(self.dir, "shim.log"))
        self._refill_shim()
        return pid

    def _refill_shim(self) -> None:
        try:
            self._idle = oci.IdleShim(os.path.join(self.dir, "shim.log"))
        except OSError as e:
            log.warning("cannot pre-start a shim: %s", e)
            self._idle = None

    async def _wait_exit(self, c: Ctr) -> None:
        pid = c.attempt["shim_pid"]
        if os.path.exists(c.attempt["exit"]) or not host.pid_alive(pid, "shim.py"):
            host.reap(pid)
            return
        fd = host.pidfd_open(pid)
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        stopped_checks = 0
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(fut), SHIM_CHECK_INTERVAL)
                    break
                except asyncio.TimeoutError:
                    stopped_checks = await self._shim_outlived_container(c, pid, stopped_checks)
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        host.reap(pid)

    async def _shim_outlived_container(self, c: Ctr, shim_pid: int, stopped_checks: int) -> int:
        """Watchdog for a shim whose `runc run` did not return although the container's init is
        dead (seen rarely, right after a kill during a probe's `runc exec`): after two checks in
        a row that find init gone, end the shim's process group so the exit is noticed and the
        restart policy runs. Cheap while init lives (one /proc read). Returns the new count."""
        if _init_alive(self.ctr_dir(c, "pid")):
            return 0
        if stopped_checks + 1 < 2:
            return stopped_checks + 1
        log.warning("pod %s: container %s has exited but its shim %d did not finish; ending it",
                    c.pod.key, c.name, shim_pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(shim_pid, signal.SIGKILL)
        return 0

    async def _watch(self, c: Ctr) -> tuple[int, float]:
        """Probe the running container until it exits; record how it ended.
        Returns (exit code, seconds it ran)."""
        pod = c.pod
        if c.exited is None:
            c.exited = asyncio.Event()
        probing = asyncio.get_running_loop().create_task(self._probe(c))
        try:
            await self._wait_exit(c)
        finally:
            probing.cancel()
            with contextlib.suppress(BaseException):
                await probing
        code, finished = 255, time.time()
        try:
            with open(c.attempt["exit"]) as f:
                parts = f.read().split()
                code, finished = int(parts[0]), float(parts[1])
        except (OSError, ValueError, IndexError):
            if c.kill_reason:  # we killed it (the watchdog may have ended its shim too)
                code = 128 + signal.SIGKILL
            else:
                pod.event("Warning", "ExitUnknown", "the container's exit status was lost", c.name)
        oom = host.oom_killed(c.cgroups_path)
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        started = c.attempt["started_at"]
        term = {"exitCode": code, "reason": reason, "startedAt": rfc3339(started),
                "finishedAt": rfc3339(finished), "containerID": f"runc://{c.cid}"}
        if c.kill_reason:
            term["message"] = c.kill_reason
        with contextlib.suppress(oci.OciError):
            await oci.delete(self.oci, c.cid)
        c.state = {"terminated": term}
        c.ready = False
        c.attempt = None
        c.exited.set()
        kind = "Normal" if code == 0 and not oom else "Warning"
        pod.event(kind, reason if oom else "Exited",
                  f"container {c.name} exited with code {code}" + (" (OOM killed)" if oom else ""),
                  c.name)
        self._persist(pod)
        return code, finished - started

    async def _probe(self, c: Ctr) -> None:
        """Startup gates the others; liveness failure restarts; readiness flips Ready."""
        spec = c.spec
        startup, live, ready = (spec.get(k) for k in ("startupProbe", "livenessProbe",
                                                       "readinessProbe"))
        if not c.started:
            if startup:
                ok = await self._probe_loop(c, startup, "Startup", until_success=True)
                if not ok:
                    await self._kill(c, manifest.grace_period(c.pod.spec),
                                     "startup probe failed", restart=True)
                    return
            c.started = True
            c.started_event.set()
            if not ready:
                c.ready = True
            self._persist(c.pod)
        tasks = []
        if live:
            tasks.append(self._liveness(c, live))
        if ready:
            tasks.append(self._readiness(c, ready))
        elif not c.ready:
            c.ready = True
            self._persist(c.pod)
        if tasks:
            await asyncio.gather(*tasks)

    async def _probe_once(self, c: Ctr, probe: dict, kind: str) -> tuple[bool, str]:
        s = manifest.probe_settings(probe)
        ok, msg = await probes.run_handler(probe, runtime=self.oci, cid=c.cid, container=c.spec,
                                           pod_ip=c.pod.ip, timeout=s["timeoutSeconds"])
        self.metrics.probe_results.labels(kind.lower(), "success" if ok else "failure").inc()
        return ok, msg

    async def _probe_loop(self, c: Ctr, probe: dict, kind: str, until_success: bool) -> bool:
        s = manifest.probe_settings(probe)
        await asyncio.sleep(s["initialDelaySeconds"])
        failures = 0
        while True:
            ok, msg = await self._probe_once(c, probe, kind)
            if ok:
                return True
            failures += 1
            c.pod.event("Warning", "Unhealthy", f"{kind} probe failed: {msg}", c.name)
            if failures >= s["failureThreshold"]:
                return False
            await asyncio.sleep(s["periodSeconds"])

    async def _liveness(self, c: Ctr, probe: dict) -> None:
        s = manifest.probe_settings(probe)
        await asyncio.sleep(s["initialDelaySeconds"])
        failures = 0
        while True:
            ok, msg = await self._probe_once(c, probe, "Liveness")
            if ok:
                failures = 0
            else:
                failures += 1
                c.pod.event("Warning", "Unhealthy", f"Liveness probe failed: {msg}", c.name)
                if failures >= s["failureThreshold"]:
                    c.pod.event("Normal", "Killing", f"Container {c.name} failed liveness "
                                                     "probe, will be restarted", c.name)
                    await self._kill(c, probe.get("terminationGracePeriodSeconds",
                                                  manifest.grace_period(c.pod.spec)),
                                     "liveness probe failed", restart=True)
                    return
            await asyncio.sleep(s["periodSeconds"])

    async def _readiness(self, c: Ctr, probe: dict) -> None:
        s = manifest.probe_settings(probe)
        await asyncio.sleep(s["initialDelaySeconds"])
        ok_n = fail_n = 0
        while True:
            ok, msg = await self._probe_once(c, probe, "Readiness")
            ok_n, fail_n = (ok_n + 1, 0) if ok else (0, fail_n + 1)
            if ok and not c.ready and ok_n >= s["successThreshold"]:
                c.ready = True
                self._persist(c.pod)
            elif not ok and fail_n >= s["failureThreshold"] and c.ready:
                c.ready = False
                c.pod.event("Warning", "Unhealthy", f"Readiness probe failed: {msg}", c.name)
                self._persist(c.pod)
            await asyncio.sleep(s["periodSeconds"])

    async def _kill(self, c: Ctr, grace: float, why: str, restart: bool = False) -> None:
        """preStop, SIGTERM, the grace period, SIGKILL; returns once the container is gone.
        (Called from the container's own probe task when restart is set: then it only
        signals; the supervisor sees the exit.)"""
        if c.attempt is None or c.exited is None:
            return
        c.kill_reason = why
        deadline = time.monotonic() + grace
        pre = (c.spec.get("lifecycle") or {}).get("preStop")
        if pre and grace > 0:
            ok, msg = await probes.run_handler(pre, runtime=self.oci, cid=c.cid,
                                               container=c.spec, pod_ip=c.pod.ip,
                                               timeout=max(grace, 0.1))
            if not ok:
                c.pod.event("Warning", "FailedPreStopHook", msg, c.name)
        await oci.kill(self.oci, c.cid, signal.SIGTERM)
        left = deadline - time.monotonic()
        if left > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(c.exited.wait()), left)
        if not c.exited.is_set():
            if grace > 0:
                c.pod.event("Normal", "Killing", f"grace period over ({grace:.1f}s left at SIGTERM): SIGKILL",
                            c.name)
            await oci.kill(self.oci, c.cid, signal.SIGKILL, all_=True)
        if not restart:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(c.exited.wait()), 30)

    async def _stop(self, pod: Pod, grace: float, reason: str) -> None:
        pod.stopping = True
        pod.stop_event.set()
        self._persist(pod)
        pod.event("Normal", "Killing", f"stopping pod (grace period {grace:g}s)")
        deadline = time.monotonic() + grace

        def left() -> float:
            return max(0.0, deadline - time.monotonic())
        # app containers together, then init containers and sidecars in reverse
        await asyncio.gather(*(self._kill(c, left(), "pod stopped") for c in pod.apps()
                               if c.attempt))
        for c in reversed(pod.init_order()):
            if c.attempt:
                await self._kill(c, left(), "pod stopped")
        if pod.task and not pod.task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pod.task), 10)
            if not pod.task.done():
                pod.task.cancel()
        for c in pod.containers.values():
            if c.task and not c.task.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(c.task), 5)
            if c.attempt:  # adopted and never watched, or lost: make sure it is gone
                await oci.kill(self.oci, c.cid, signal.SIGKILL, all_=True)
                await oci.delete(self.oci, c.cid)
                c.attempt = None
            if "running" in c.state or "waiting" in c.state:
                c.state = {"terminated": {"exitCode": 137, "reason": "Error",
                                          "message": "pod stopped",
                                          "finishedAt": rfc3339()}}
            c.ready = False
        await self._teardown_sandbox(pod)
        pod.reason = pod.reason or reason
        pod.finished = pod.stopped = True
        pod.stopping = False
        self._persist(pod)


def _check_host_path_kind(path: str, want: str, kind: str) -> None:
    """kubelet's hostPath type checks, on the object that is then mounted."""
    need = {"Directory": "directory", "DirectoryOrCreate": "directory", "File": "file",
            "FileOrCreate": "file"}.get(want)
    if need and kind != need:
        raise PodError(f"hostPath type check failed: {path} is not a {need}",
                       "CreateContainerConfigError")


def _make_mount_target(target: str, is_dir: bool) -> None:
    """An empty directory or file at target (in our own tree), of the type to be mounted."""
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(target) != is_dir or os.path.islink(target):
            if os.path.isdir(target) and not os.path.islink(target):
                os.rmdir(target)
            else:
                os.unlink(target)
    if is_dir:
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))


def _init_alive(pid_file: str) -> bool:
    """Whether the container's init (pid from runc's --pid-file) still runs; True when unknown."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return not os.path.exists(pid_file)  # no pid file yet: still starting
