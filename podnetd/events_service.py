"""podnet.v1.EventService: the node's events, listed and watched (Kubernetes-shaped JSON)."""
import json

import grpc

from .api.podnet.v1 import events_pb2, events_pb2_grpc
from .events import EventRecorder, ObjectRef, matches

KINDS = ("Pod", "Node")


def _ref(message, context) -> ObjectRef | None:
    if not message.kind:
        return None
    if message.kind not in KINDS or not message.name:
        raise ValueError(f"involved_object: kind must be one of {', '.join(KINDS)}, with a name")
    return ObjectRef(message.kind, message.name, message.namespace)


class EventService(events_pb2_grpc.EventServiceServicer):
    def __init__(self, recorder: EventRecorder):
        self.recorder = recorder

    async def ListEvents(self, request, context):
        try:
            obj = _ref(request.involved_object, context)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return events_pb2.ListEventsResponse(
            event_json=[json.dumps(e) for e in self.recorder.list(obj)])

    async def WatchEvents(self, request, context):
        try:
            obj = _ref(request.involved_object, context)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        queue = self.recorder.watch()
        try:
            while True:
                event = await queue.get()
                if event is None:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        "the watch fell too far behind; list and watch again")
                if matches(event, obj):
                    yield events_pb2.WatchEventsResponse(event_json=json.dumps(event))
        finally:
            self.recorder.unwatch(queue)


def register(server, recorder: EventRecorder) -> list[str]:
    events_pb2_grpc.add_EventServiceServicer_to_server(EventService(recorder), server)
    return [events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name]
