"""The scheduler's decision logic (kube-scheduler's semantics and words): a Snapshot of the
nodes and the pods bound to them, kept current from watch events, and schedule(pod, snapshot),
which says where a pod goes or, in kube-scheduler's words, why it fits nowhere. The loop that
watches the API, holds the leader lease and posts pods/binding lives elsewhere."""
from podnetd.scheduler.framework import (DEFAULT_SCHEDULER, Result, fit_error_message,
                                         queue_sort_key, schedule, wants_scheduling)
from podnetd.scheduler.objects import InvalidObject
from podnetd.scheduler.snapshot import Snapshot

__all__ = ["DEFAULT_SCHEDULER", "InvalidObject", "Result", "Snapshot", "fit_error_message",
           "queue_sort_key", "schedule", "wants_scheduling"]
