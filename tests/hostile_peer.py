"""A hostile peer: speaks podnet.peer.v1.PeerService/Exchange (grpcio, the generated stubs) with whatever a
test asks for. As a client: reads a JSON list of attempts on stdin, prints a JSON list of
outcomes. As a server (`hostile_peer.py serve CONFIG`): answers Exchanges with forged records.

An attempt: {"target": "IP:PORT", "transport": "plain" | "tls", "ca": path, "cert": path|null,
"key": path|null, "sender": str, "cluster_cidr": str, "records": [record dicts: records.py's
field names, heartbeat_ms/started_ms as integers, sent as the wire's Timestamps],
"copies": n (the records repeated n times), "pad": n (a name of n bytes in one extra record)}.
An outcome: {"code": "OK" | grpc status name, "details": str, "records": [names answered]}.
"""
import json
import sys

import grpc

from google.protobuf.timestamp_pb2 import Timestamp

from podnetd.api.podnet.peer.v1 import peer_pb2, peer_pb2_grpc
from podnetd.cluster.records import WIRE_TIMES


def record(fields: dict) -> peer_pb2.NodeRecord:
    """A NodeRecord from records.py's field names, any integer milliseconds as sent."""
    fields = dict(fields)
    for name, wire in WIRE_TIMES.items():
        if name in fields:
            ms = fields.pop(name)
            fields[wire] = Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)
    return peer_pb2.NodeRecord(**fields)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def channel(a: dict) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if a["transport"] == "plain":
        return grpc.insecure_channel(a["target"], options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(a["ca"]),
        private_key=read(a["key"]) if a.get("key") else None,
        certificate_chain=read(a["cert"]) if a.get("cert") else None)
    return grpc.secure_channel(a["target"], creds, options=options)


def attempt(a: dict) -> dict:
    records = [record(r) for r in a.get("records", [])] * a.get("copies", 1)
    if a.get("pad"):
        records.append(record({"name": "p" * a["pad"], "underlay_ip": "10.250.0.200",
                               "pod_cidr": "10.244.77.0/24", "heartbeat_ms": 1}))
    request = peer_pb2.ExchangeRequest(sender=a.get("sender", ""), records=records,
                                          cluster_cidr=a.get("cluster_cidr", ""))
    with channel(a) as ch:
        try:
            response = peer_pb2_grpc.PeerServiceStub(ch).Exchange(request, timeout=10)
        except grpc.RpcError as e:
            return {"code": e.code().name, "details": e.details() or "", "records": []}
    return {"code": "OK", "details": "", "records": [r.name for r in response.records]}


class HostileServer(peer_pb2_grpc.PeerServiceServicer):
    """Answers every Exchange with the next of the configured answers (cycled), and prints one
    line per call: the caller's sender name."""

    def __init__(self, answers: list[dict]):
        self.calls = 0
        self.answers = []  # built once: a slow answer on a busy machine would just time out
        for a in answers:
            records = [record(r) for r in a.get("records", [])] * a.get("copies", 1)
            if a.get("pad"):
                records.append(peer_pb2.NodeRecord(name="p" * a["pad"]))
            self.answers.append(peer_pb2.ExchangeResponse(records=records))

    def Exchange(self, request, context):
        answer = self.answers[self.calls % len(self.answers)]
        self.calls += 1
        print(json.dumps({"call": self.calls, "sender": request.sender}), flush=True)
        return answer


def serve(config: dict) -> None:
    """serve: {"listen": "IP:PORT", "cert", "key", "ca", "answers": [{"records", "copies", "pad"}]};
    prints "ready", then a line per call, until stdin closes."""
    from concurrent import futures
    server = grpc.server(futures.ThreadPoolExecutor(4),
                         options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    peer_pb2_grpc.add_PeerServiceServicer_to_server(HostileServer(config["answers"]), server)
    creds = grpc.ssl_server_credentials([(read(config["key"]), read(config["cert"]))],
                                        root_certificates=read(config["ca"]), require_client_auth=True)
    server.add_secure_port(config["listen"], creds)
    server.start()
    print("ready", flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(json.loads(sys.argv[2]))
    else:
        print(json.dumps([attempt(a) for a in json.load(sys.stdin)]))
