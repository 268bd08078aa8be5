"""What the runtime's parts share: the node's settings, the on-disk layout, the pod store, the
event and metrics hooks, and the asyncio side of each pod (PodRun: its task, stop signal, lock
and the per-container tasks and events), which the data model (model.py) does not hold."""
import asyncio
import dataclasses
import os

from .model import Ctr, Pod
from .store import PodStore


class Layout:
    """Where a pod's files live under the runtime directory."""

    def __init__(self, root: str):
        self.root = root

    def pod_dir(self, pod: Pod, *parts) -> str:
        return os.path.join(self.root, "pods", pod.uid, *parts)

    def ctr_dir(self, c: Ctr, *parts) -> str:
        return self.pod_dir(c.pod, "ctr", c.name, *parts)

    def log_path(self, c: Ctr, attempt: int) -> str:
        return self.pod_dir(c.pod, "logs", c.name, f"{attempt}.log")


@dataclasses.dataclass
class CtrRun:
    """The asyncio side of one container: its supervisor task, the exit of the attempt in
    flight, its startup probe's success, and why we killed it (if we did)."""
    task: asyncio.Task | None = None
    exited: asyncio.Event | None = None
    started: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    kill_reason: str | None = None


@dataclasses.dataclass
class PodRun:
    """The asyncio side of one pod: its lifecycle task, the stop signal, the lock that orders
    stop and remove, the pause container's pid (cached), and its containers' CtrRuns."""
    task: asyncio.Task | None = None
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    pause_pid: int = 0
    ctrs: dict[str, CtrRun] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    """The node the runtime runs pods on."""
    name: str
    bridge: str                 # the pod bridge (not the node's address)
    node_ip: str | None         # the cluster's underlay address, None outside a cluster


class Context:
    def __init__(self, cfg, oci: str, layout: Layout, store: PodStore, metrics, record_event):
        self.cfg = cfg              # RuntimeConfig (podnetd/runtime/__init__.py)
        self.node: NodeFacts | None = None  # set when the runtime starts (after node setup)
        self.oci = oci
        self.layout = layout
        self.store = store
        self.metrics = metrics
        self._record_event = record_event   # the node's event recorder
        self.runs: dict[str, PodRun] = {}   # by pod uid

    def event(self, pod: Pod, kind: str, reason: str, message: str,
              container: str = "") -> None:
        pod.event(kind, reason, message, container)
        self._record_event(pod, kind, reason, message, container)

    def persist(self, pod: Pod) -> None:
        self.store.save(pod)

    def run(self, pod: Pod) -> PodRun:
        run = self.runs.get(pod.uid)
        if run is None:
            run = self.runs[pod.uid] = PodRun()
        return run

    def ctr(self, c: Ctr) -> CtrRun:
        runs = self.run(c.pod).ctrs
        cr = runs.get(c.name)
        if cr is None:
            cr = runs[c.name] = CtrRun()
            if c.started:
                cr.started.set()
        return cr

    def forget(self, pod: Pod) -> None:
        self.runs.pop(pod.uid, None)
