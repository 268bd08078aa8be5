"""get -w's resumption logic (pure: a scripted client): a cut stream resumes from the last
resourceVersion on the next server, OUT_OF_RANGE lists again and reports only what changed,
and an error no retry fixes ends the watch with kubectl's line."""
import json

import grpc
import pytest

from podnetd.api.podnet.api.v1 import api_pb2
from podnetd.ctl.apiclient import ApiError
from podnetd.ctl.watch import Watcher


class Cut(grpc.RpcError):
    def __init__(self, code, details="cut"):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def obj(name, rv):
    return {"metadata": {"namespace": "default", "name": name, "resourceVersion": str(rv)}}


def event(kind, name, rv):
    return api_pb2.WatchObjectsResponse(type=kind, object=json.dumps(obj(name, rv)).encode())


ADDED, MODIFIED, DELETED, BOOKMARK = (api_pb2.WATCH_EVENT_TYPE_ADDED,
                                      api_pb2.WATCH_EVENT_TYPE_MODIFIED,
                                      api_pb2.WATCH_EVENT_TYPE_DELETED,
                                      api_pb2.WATCH_EVENT_TYPE_BOOKMARK)


class Script:
    """Each stream() call plays the next script entry: events, then an error (or the end)."""

    server = "s1"

    def __init__(self, rounds, listing=None):
        self.rounds, self.listing = list(rounds), listing
        self.requests, self.switches = [], 0

    def stream(self, service, method, request):
        self.requests.append(request.resource_version)
        events, error = self.rounds.pop(0)

        class Stream:
            def __iter__(s):
                yield from events
                if error:
                    raise error

            def cancel(s):
                pass
        return Stream()

    def next_server(self):
        self.switches += 1

    def list(self, *args):
        return self.listing


def run(script, seed=(), seed_rv="10", stop_after=None):
    seen = []
    w = Watcher(script, "pods", emit=lambda t, o: seen.append((t, o["metadata"]["name"])),
                sleep=lambda s: None)
    w.seed(list(seed), seed_rv)
    w.run(until=lambda: stop_after is not None and len(seen) >= stop_after)
    return seen, w


def test_a_cut_stream_resumes_after_the_last_event_on_the_next_server():
    script = Script([
        ([event(ADDED, "a", 11), event(MODIFIED, "a", 12)], Cut(grpc.StatusCode.UNAVAILABLE)),
        ([event(BOOKMARK, "", 15)], Cut(grpc.StatusCode.INTERNAL, "stream reset")),
        ([event(DELETED, "a", 16)], None),
    ])
    seen, _ = run(script, stop_after=3)
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert script.requests == ["10", "12", "15"]     # no gap, no repeat; bookmarks count
    assert script.switches == 2


def test_too_old_lists_again_and_reports_only_the_difference():
    listing = {"metadata": {"resourceVersion": "40"},
               "items": [obj("same", 5), obj("changed", 30), obj("new", 31)]}
    script = Script([([], Cut(grpc.StatusCode.OUT_OF_RANGE, "too old resource version")),
                     ([event(MODIFIED, "new", 41)], None)], listing)
    seen, w = run(script, seed=[obj("same", 5), obj("changed", 6), obj("gone", 7)],
                  stop_after=4)
    assert sorted(seen[:3]) == [("ADDED", "new"), ("DELETED", "gone"), ("MODIFIED", "changed")]
    assert seen[3] == ("MODIFIED", "new")
    assert script.requests == ["10", "40"]


def test_an_error_no_retry_fixes_ends_the_watch_in_kubectls_words():
    script = Script([([], Cut(grpc.StatusCode.PERMISSION_DENIED, 'pods is forbidden: User '
                                                                 '"alice" cannot watch'))])
    with pytest.raises(ApiError) as e:
        run(script)
    assert str(e.value) == 'Error from server (Forbidden): pods is forbidden: User "alice" ' \
                           'cannot watch'
