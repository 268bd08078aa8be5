"""Pod and container state as the runtime keeps it (persisted as JSON) and as Kubernetes shows
it (status.phase, conditions, containerStatuses with state/lastState/ready/restartCount).
Pure data and logic: no kernel, no processes, no asyncio tasks, events or locks (the runtime
keeps those in its own bookkeeping, lifecycle.PodRun)."""
import enum
import time

from .. import timestamps

from . import manifest

MAX_EVENTS = 200


class Stage(enum.Enum):
    """Where the pod is in its life, as the runtime drives it (kubelet's pod workers: sync,
    terminating, terminated). The Kubernetes status.phase is derived from it (Pod.phase)."""
    CREATING = "Creating"          # no sandbox yet (being made, or retried with back-off)
    INITIALIZING = "Initializing"  # sandbox up: init containers and sidecars, in order
    RUNNING = "Running"            # initialized: the app containers run under their policy
    COMPLETED = "Completed"        # every app container is done for good, or an init failed
    TERMINATING = "Terminating"    # a stop is under way (grace period, then the sandbox)
    TERMINATED = "Terminated"      # the stop ran to its end: nothing of the pod runs

    @property
    def stopping_or_stopped(self) -> bool:
        return self in (Stage.TERMINATING, Stage.TERMINATED)


def stage_from_flags(data: dict) -> Stage:
    """The stage of a state file written before the stage existed (its booleans)."""
    if data.get("stopped"):
        return Stage.TERMINATED
    if data.get("stopping"):
        return Stage.TERMINATING
    if data.get("finished"):
        return Stage.COMPLETED
    if data.get("initialized"):
        return Stage.RUNNING
    if data.get("sandbox"):
        return Stage.INITIALIZING
    return Stage.CREATING


def rfc3339(ts: float | None) -> str | None:
    """A status time, or None (omitted) when it never happened."""
    return timestamps.rfc3339(ts) if ts else None


class Ctr:
    """One container of a pod: its spec, current/last state and the attempt in flight."""

    def __init__(self, pod: "Pod", spec: dict, kind: str, index: int):
        self.pod = pod
        self.spec = spec
        self.name = spec["name"]
        self.kind = kind            # "init" | "sidecar" | "app"
        self.index = index
        self.restart_count = 0
        self.backoff_step = 0       # restarts since the last clean 10-minute run
        self.state: dict = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict = {}
        self.ready = False
        self.started = False        # startup probe passed (or none)
        self.attempt: dict | None = None   # {"shim_pid", "started_at", "log", "exit"}
        self.image_id = ""

    @property
    def cid(self) -> str:
        return f"pn-{self.pod.uid[:12]}-{self.name}"

    @property
    def cgroups_path(self) -> str:
        return f"/podnet-{self.pod.uid[:12]}-{self.name}"

    def running(self) -> bool:
        return "running" in self.state

    def exit_code(self) -> int | None:
        term = self.state.get("terminated")
        return term["exitCode"] if term else None

    def to_json(self) -> dict:
        return {"restartCount": self.restart_count, "backoffStep": self.backoff_step,
                "state": self.state, "lastState": self.last_state, "ready": self.ready,
                "started": self.started, "attempt": self.attempt, "imageID": self.image_id}

    def load(self, data: dict) -> None:
        self.restart_count = data.get("restartCount", 0)
        self.backoff_step = data.get("backoffStep", 0)
        self.state = data.get("state") or self.state
        self.last_state = data.get("lastState") or {}
        self.ready = data.get("ready", False)
        self.started = data.get("started", False)
        self.attempt = data.get("attempt")
        self.image_id = data.get("imageID", "")

    def status(self) -> dict:
        # As the kubelet: no container and image IDs before the container was first created
        # (so a pull under a waiting container is not a status change of its own)
        created = bool(self.attempt)
        return {"name": self.name, "image": self.spec["image"],
                "imageID": self.image_id if created else "",
                "containerID": f"runc://{self.cid}" if created else "",
                "state": self.state, "lastState": self.last_state, "ready": self.ready,
                "restartCount": self.restart_count, "started": self.started}


def _not_ready(phase: str, unready: list[str]) -> tuple[str, str]:
    """The kubelet's reason and message of ContainersReady/Ready when they are False."""
    if phase in ("Succeeded", "Failed"):
        return "PodCompleted", ""
    if unready:
        return "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]"
    return "", ""


class Pod:
    def __init__(self, doc: dict, uid: str, created: float):
        self.doc = doc
        self.uid = uid
        self.created = created
        meta = doc["metadata"]
        self.name = meta["name"]
        self.namespace = meta.get("namespace") or "default"
        self.spec = doc["spec"]
        self.containers: dict[str, Ctr] = {}
        for i, c in enumerate(self.spec.get("initContainers") or []):
            self.containers[c["name"]] = Ctr(self, c, "sidecar" if manifest.is_sidecar(c)
                                             else "init", i)
        for i, c in enumerate(self.spec["containers"]):
            self.containers[c["name"]] = Ctr(self, c, "app", i)
        self.netns = ""             # named netns ("" with hostNetwork)
        self.ip = ""
        self.cni: dict = {}         # {"conflist", "result"} kept for DEL
        self.sandbox = False        # pause running and network attached
        self.stage = Stage.CREATING
        self.initialized_at: float | None = None   # the Initialized condition's transition
        self.start_time: float | None = None
        self.events: list[dict] = []
        self.reason = ""
        self.condition_times: dict[str, tuple[str, float]] = {}   # type -> (status, since)

    @property
    def initialized(self) -> bool:
        return self.initialized_at is not None

    @property
    def stop_requested(self) -> bool:
        return self.stage.stopping_or_stopped

    @property
    def stopped(self) -> bool:
        return self.stage is Stage.TERMINATED

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def pause_id(self) -> str:
        return f"pn-{self.uid[:12]}"

    @property
    def host_network(self) -> bool:
        return bool(self.spec.get("hostNetwork"))

    def of_kind(self, *kinds) -> list[Ctr]:
        return [c for c in self.containers.values() if c.kind in kinds]

    def init_order(self) -> list[Ctr]:
        return [c for c in self.containers.values() if c.kind in ("init", "sidecar")]

    def apps(self) -> list[Ctr]:
        return self.of_kind("app")

    def event(self, kind: str, reason: str, message: str, container: str = "") -> None:
        """Keep an event in the pod's own list (the runtime also tells the node's recorder)."""
        self.events.append({"time": time.time(), "type": kind, "reason": reason,
                            "message": message, "container": container})
        del self.events[:-MAX_EVENTS]

    # -- persistence --------------------------------------------------------------------

    def to_json(self) -> dict:
        return {"doc": self.doc, "uid": self.uid, "created": self.created, "netns": self.netns,
                "ip": self.ip, "cni": self.cni, "sandbox": self.sandbox,
                "stage": self.stage.value, "initializedAt": self.initialized_at,
                "startTime": self.start_time, "events": self.events, "reason": self.reason,
                "conditionTimes": {k: list(v) for k, v in self.condition_times.items()},
                "containers": {n: c.to_json() for n, c in self.containers.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "Pod":
        """A persisted pod; a state file of an older podnetd (booleans initialized, finished,
        stopping, stopped instead of the stage) is read too, so its running pods are adopted."""
        pod = cls(data["doc"], data["uid"], data["created"])
        for key in ("netns", "ip", "cni", "sandbox", "events", "reason"):
            if key in data:
                setattr(pod, key, data[key])
        pod.stage = Stage(data["stage"]) if "stage" in data else stage_from_flags(data)
        pod.start_time = data.get("startTime")
        times = data.get("conditionTimes")
        if isinstance(times, dict):
            pod.condition_times = {
                k: (v[0], float(v[1])) for k, v in times.items()
                if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                and isinstance(v[1], (int, float)) and not isinstance(v[1], bool)}
        pod.initialized_at = data.get("initializedAt")
        if pod.initialized_at is None and data.get("initialized"):
            pod.initialized_at = pod.start_time or pod.created
        for name, c in (data.get("containers") or {}).items():
            if name in pod.containers:
                pod.containers[name].load(c)
        return pod

    # -- Kubernetes view ----------------------------------------------------------------

    def phase(self) -> str:
        apps_done = all(c.exit_code() is not None for c in self.apps())
        if self.stage in (Stage.COMPLETED, Stage.TERMINATED) \
                or (self.stage is Stage.TERMINATING and apps_done and self.initialized):
            codes = [c.exit_code() for c in self.apps()]
            if codes and all(code == 0 for code in codes):
                return "Succeeded"
            return "Failed"
        if not self.sandbox or not self.initialized:
            inits = [c for c in self.of_kind("init")]
            if any(c.exit_code() not in (None, 0) for c in inits) \
                    and manifest.restart_policy(self.spec) == "Never":
                return "Failed"
            return "Pending"
        # kubelet: no app container running or ever ended, some still waiting (an image being
        # pulled, ErrImagePull, a config error): the pod is still Pending
        if not any(c.running() or c.exit_code() is not None or c.last_state
                   for c in self.apps()):
            return "Pending"
        return "Running"

    def display_status(self) -> str:
        """What kubectl prints in STATUS."""
        if self.stage is Stage.TERMINATING:
            return "Terminating"
        if self.stage is Stage.TERMINATED and self.reason:
            return self.reason
        inits = self.init_order()
        if not self.initialized and self.sandbox:
            for i, c in enumerate(inits):
                if c.kind == "init" and c.exit_code() == 0:
                    continue
                if c.kind == "sidecar" and c.started:
                    continue
                waiting = c.state.get("waiting", {}).get("reason")
                term = c.state.get("terminated", {}).get("reason")
                if waiting and waiting not in ("ContainerCreating", "PodInitializing"):
                    return f"Init:{waiting}"
                if term and term != "Completed":
                    return f"Init:{term}"
                return f"Init:{i}/{len(inits)}"
        reason = ""
        for c in self.apps():
            waiting = c.state.get("waiting", {}).get("reason")
            term = c.state.get("terminated", {}).get("reason")
            if waiting:
                reason = waiting
            elif term and not reason:
                reason = term
        if not self.sandbox and self.stage in (Stage.CREATING, Stage.INITIALIZING,
                                               Stage.RUNNING):
            return self.reason or "ContainerCreating"
        if self.phase() == "Running" and not reason:
            return "Running"
        return reason or self.phase()

    def ready_count(self) -> tuple[int, int]:
        apps = self.apps()
        return sum(1 for c in apps if c.ready), len(apps)

    def restarts(self) -> int:
        return sum(c.restart_count for c in self.containers.values())

    def conditions(self) -> list[dict]:
        """The kubelet's pod conditions, with its reasons and messages; lastTransitionTime is
        when a condition last changed its status (kept with the pod's state)."""
        phase = self.phase()
        unready = [c.name for c in self.apps() if not c.ready]
        unready_sidecars = [c.name for c in self.of_kind("sidecar") if not c.ready]
        cready = not unready and phase == "Running"
        found = [("PodReadyToStartContainers", self.sandbox, "", ""),
                 ("Initialized", self.initialized, *self._not_initialized()),
                 ("ContainersReady", cready, *_not_ready(phase, unready)),
                 ("Ready", cready and not unready_sidecars,
                  *_not_ready(phase, unready + unready_sidecars)),
                 ("PodScheduled", True, "", "")]
        out = []
        for kind, ok, reason, message in found:
            status = str(bool(ok))
            was = self.condition_times.get(kind)
            if was is None or was[0] != status:
                was = self.condition_times[kind] = (status, time.time())
            cond = {"type": kind, "status": status, "lastProbeTime": None,
                    "lastTransitionTime": rfc3339(was[1])}
            if not ok and reason:
                cond.update(reason=reason, message=message)
            out.append(cond)
        return out

    def _not_initialized(self) -> tuple[str, str]:
        pending = [c.name for c in self.init_order()
                   if not (c.exit_code() == 0 if c.kind == "init" else c.started)]
        if not pending:
            return "", ""
        return ("ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(pending)}]")

    def k8s(self, node_name: str, host_ip: str = "") -> dict:
        meta = dict(self.doc["metadata"])
        meta.update({"namespace": self.namespace, "uid": self.uid,
                     "creationTimestamp": rfc3339(self.created)})
        spec = dict(self.spec)
        spec.setdefault("restartPolicy", manifest.restart_policy(self.spec))
        spec.setdefault("terminationGracePeriodSeconds", manifest.grace_period(self.spec))
        spec["nodeName"] = node_name
        status = {"phase": self.phase(), "conditions": self.conditions(),
                  "hostIP": host_ip, "podIP": self.ip,
                  "podIPs": [{"ip": self.ip}] if self.ip else [],
                  "startTime": rfc3339(self.start_time),
                  "initContainerStatuses": [c.status() for c in self.init_order()],
                  "containerStatuses": [c.status() for c in self.apps()]}
        if self.reason:
            status["reason"] = self.reason
        if not status["initContainerStatuses"]:
            del status["initContainerStatuses"]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
                "status": status}
