"""podnetctl get events [-w] [--for KIND/NAME] on a node used without a cluster: the node's own
events (podnet.v1.EventService) with kubectl's columns. ctl/get.py decides when."""
import calendar
import json
import sys
import time

import grpc

from ..api.podnet.v1 import events_pb2, events_pb2_grpc
from ..events import parse_ref
from . import output
from .client import CtlError, call, channel

COLUMNS = [("LAST SEEN", "last_seen"), ("TYPE", "type"), ("REASON", "reason"),
           ("OBJECT", "object"), ("MESSAGE", "message")]


def _epoch(rfc3339: str) -> float:
    try:
        return calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return time.time()


def row(event: dict) -> dict:
    involved = event["involvedObject"]
    return {"last_seen": output.age(_epoch(event.get("lastTimestamp"))), "type": event["type"],
            "reason": event["reason"], "object": f"{involved['kind'].lower()}/{involved['name']}",
            "message": event["message"] + (f" (x{event['count']})" if event["count"] > 1 else "")}


def _request_ref(args) -> events_pb2.ObjectReference:
    if not args.for_:
        return events_pb2.ObjectReference()
    try:
        ref = parse_ref(args.for_)
    except ValueError as e:
        raise CtlError(f"--for {e}") from None
    return events_pb2.ObjectReference(kind=ref.kind, name=ref.name,
                                      namespace=args.namespace if ref.kind == "Pod" else "")


def cmd_get_events(args) -> int:
    stub = events_pb2_grpc.EventServiceStub(channel(args.socket))
    ref = _request_ref(args)
    events = [json.loads(e) for e in call(stub.ListEvents, events_pb2.ListEventsRequest(
        involved_object=ref)).event_json]
    if args.output == "table":
        if events or not args.watch:
            sys.stdout.write(output.table([row(e) for e in events], COLUMNS)
                             if events else "No resources found.\n")
    else:
        output.emit(events, [], args.output, raw={"apiVersion": "v1", "kind": "List",
                                                   "items": events})
    sys.stdout.flush()
    if not args.watch:
        return 0
    try:
        for answer in stub.WatchEvents(events_pb2.WatchEventsRequest(involved_object=ref)):
            event = json.loads(answer.event_json)
            if args.output == "table":
                # kubectl -w: one row per event as it comes, in the columns of the table
                line = output.table([row(event)], COLUMNS).splitlines()[1]
                sys.stdout.write(line + "\n")
            else:
                output.emit(event, [], args.output, raw=event)
            sys.stdout.flush()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            raise CtlError(f"cannot reach podnetd: {e.details()}") from None
        raise CtlError(f"{e.code().name.lower()}: {e.details()}") from None
    return 0

