"""A small client of podnet.api.v1 for tests/test_apiserver_podio.py, run as a process (inside a
node's netns with nsenter when it dials a TLS listener there): one JSON request on stdin, one
JSON answer on stdout: {"code": "OK" | gRPC code name, "details": ..., and the call's fields}.

request: {"target": "unix:///path" | "IP:PORT", "tls": [ca, cert, key] (for IP:PORT),
          "op": "create" | "get" | "logs" | "exec", ...op fields}
logs: follow, tail (-1 all), container, until (stop once this text arrived), timeout."""
import base64
import json
import sys

import grpc

from podnetd.api.podnet.api.v1 import api_pb2, api_pb2_grpc


def channel(req: dict):
    if req["target"].startswith("unix://"):
        return grpc.insecure_channel(req["target"])
    ca, cert, key = (open(p, "rb").read() for p in req["tls"])
    return grpc.secure_channel(req["target"], grpc.ssl_channel_credentials(ca, key, cert))


def run(req: dict) -> dict:
    timeout = req.get("timeout", 30)
    with channel(req) as ch:
        objects = api_pb2_grpc.ObjectServiceStub(ch)
        io = api_pb2_grpc.PodIOServiceStub(ch)
        op = req["op"]
        if op == "create":
            r = objects.CreateObject(api_pb2.CreateObjectRequest(
                resource=req["resource"], namespace=req.get("namespace", ""),
                object=json.dumps(req["object"]).encode()), timeout=timeout)
            return {"object": json.loads(r.object)}
        if op == "get":
            r = objects.GetObject(api_pb2.GetObjectRequest(
                resource=req["resource"], namespace=req.get("namespace", ""), name=req["name"]),
                timeout=timeout)
            return {"object": json.loads(r.object)}
        if op == "logs":
            call = io.StreamPodLogs(api_pb2.StreamPodLogsRequest(
                namespace=req.get("namespace", ""), name=req["name"],
                container=req.get("container", ""), follow=req.get("follow", False),
                tail_lines=req.get("tail", -1), previous=req.get("previous", False)),
                timeout=timeout)
            data, pieces, biggest = b"", 0, 0
            for piece in call:
                data += piece.data
                pieces += 1
                biggest = max(biggest, len(piece.data))
                if req.get("until") and req["until"].encode() in data:
                    call.cancel()
                    break
            return {"data": data.decode(errors="replace"), "pieces": pieces,
                    "biggest": biggest}
        if op == "exec":
            r = io.ExecPod(api_pb2.ExecPodRequest(
                namespace=req.get("namespace", ""), name=req["name"],
                container=req.get("container", ""), command=req["command"],
                stdin=base64.b64decode(req.get("stdin", ""))), timeout=timeout)
            return {"stdout": r.stdout.decode(errors="replace"),
                    "stderr": r.stderr.decode(errors="replace"), "exit_code": r.exit_code,
                    "stdout_len": len(r.stdout)}
        raise SystemExit(f"unknown op {op}")


def main() -> None:
    req = json.loads(sys.stdin.read())
    try:
        out = {"code": "OK", **run(req)}
    except grpc.RpcError as e:
        out = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
