"""Node-level events, shaped as Kubernetes core/v1 Events, listed and watched through the API
(`podnetctl get events [-w] [--for KIND/NAME]`).

Like the kubelet's event correlator, an event repeated for the same object with the same
type, reason and message is counted (count, lastTimestamp) instead of stored again. The store
is bounded (the oldest events go first) and in memory: events are for an operator watching
now, as Kubernetes' own expire after an hour.

record() may be called from any thread (the CNI handler and the reconcile loop's kernel work
run in executor threads); watchers are asyncio queues fed on the daemon's loop.
"""
import asyncio
import collections
import itertools
import threading
import time
from dataclasses import dataclass

from .timestamps import rfc3339

MAX_EVENTS = 1000
WATCH_BACKLOG = 256   # a watcher that falls this far behind is cut off (it lists again)
TYPES = ("Normal", "Warning")


@dataclass(frozen=True)
class ObjectRef:
    kind: str          # "Node", "Pod"
    name: str
    namespace: str = ""

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


class EventRecorder:
    def __init__(self, node_name: str, max_events: int = MAX_EVENTS):
        self.node_name = node_name
        self.max_events = max_events
        self._events: collections.OrderedDict = collections.OrderedDict()  # key -> event
        self._lock = threading.Lock()
        self._serial = itertools.count(1)
        self._watchers: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop whose queues watchers read (set when the daemon starts)."""
        self._loop = loop

    # -- recording ---------------------------------------------------------------------------

    def record(self, obj: ObjectRef, type_: str, reason: str, message: str,
               field_path: str = "") -> dict:
        if type_ not in TYPES:
            raise ValueError(f"event type {type_!r}: must be Normal or Warning")
        now = time.time()
        key = (obj, type_, reason, message, field_path)
        with self._lock:
            event = self._events.pop(key, None)
            if event is None:
                event = self._new(obj, type_, reason, message, field_path, now)
            else:
                event = {**event, "count": event["count"] + 1, "lastTimestamp": rfc3339(now),
                         "metadata": {**event["metadata"],
                                      "resourceVersion": str(next(self._serial))}}
            self._events[key] = event          # most recently seen last
            while len(self._events) > self.max_events:
                self._events.popitem(last=False)
        self._publish(event)
        return event

    def _new(self, obj, type_, reason, message, field_path, now) -> dict:
        involved = {"kind": obj.kind, "name": obj.name}
        if obj.namespace:
            involved["namespace"] = obj.namespace
        if field_path:
            involved["fieldPath"] = field_path
        serial = next(self._serial)
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{obj.name}.{int(now * 1e9):x}{serial:x}",
                         "namespace": obj.namespace or "default",
                         "resourceVersion": str(serial)},
            "involvedObject": involved, "reason": reason, "message": message, "type": type_,
            "count": 1, "firstTimestamp": rfc3339(now), "lastTimestamp": rfc3339(now),
            "source": {"component": "podnetd", "host": self.node_name},
        }

    # -- reading -----------------------------------------------------------------------------

    def list(self, obj: ObjectRef | None = None) -> list[dict]:
        """Events (oldest last-seen first), of one object when given."""
        with self._lock:
            events = list(self._events.values())
        return [e for e in events if matches(e, obj)]

    def watch(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue) -> None:
        self._watchers.discard(queue)

    def _publish(self, event: dict) -> None:
        if self._loop is None or not self._watchers:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._deliver(event)
        else:
            self._loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: dict) -> None:
        for queue in list(self._watchers):
            if queue.qsize() >= WATCH_BACKLOG:   # too slow: end its watch, never grow unbounded
                self._watchers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(event)


def matches(event: dict, obj: ObjectRef | None) -> bool:
    if obj is None:
        return True
    involved = event["involvedObject"]
    return (involved["kind"].lower() == obj.kind.lower() and involved["name"] == obj.name
            and (not obj.namespace or involved.get("namespace", "") == obj.namespace))


def parse_ref(text: str) -> ObjectRef:
    """kubectl's --for KIND/NAME ("pod/web", "node/n1", "Pod/web"); ValueError otherwise."""
    kind, sep, name = text.partition("/")
    kinds = {"pod": "Pod", "pods": "Pod", "po": "Pod", "node": "Node", "nodes": "Node",
             "no": "Node"}
    if not sep or not name or kind.lower() not in kinds:
        raise ValueError(f"{text!r}: expected KIND/NAME with KIND pod or node")
    return ObjectRef(kinds[kind.lower()], name)
