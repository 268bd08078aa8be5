"""The cluster API's TLS front (podnetd/apiserver/tls_front.py): what the extra hop costs.

One server process runs the same AccessService.WhoAmI servicer twice: behind the TLS front (an
insecure grpc.aio backend on 127.0.0.1, the caller looked up with front.identity()) and directly
over grpc's own TLS (ssl_server_credentials with the client certificate required, the caller read
from auth_context()). A client process makes N small unary calls, one at a time, over one channel
presenting a client certificate to each, and prints p50/p99 latency and the difference; then the
same with C calls in flight (calls per second).

Usage: python bench/api_tls_front.py [--calls 2000] [--concurrency 16] [--json out.json]
"""
import argparse
import asyncio
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from podnetd.api.podnet.api.v1 import api_pb2, api_pb2_grpc  # noqa: E402
from podnetd.apiserver.tls_front import TlsFront  # noqa: E402
from podnetd.lab import pki  # noqa: E402


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class WhoAmI(api_pb2_grpc.AccessServiceServicer):
    def __init__(self, front: TlsFront | None):
        self.front = front

    async def WhoAmI(self, request, context):
        if self.front is not None:
            ident = self.front.identity(context.peer())
            name = ident.common_name if ident and ident.common_name else ""
        else:
            cns = context.auth_context().get("x509_common_name", [b""])
            name = cns[0].decode()
        return api_pb2.WhoAmIResponse(username=name)


async def serve(certs: dict) -> None:
    backend = grpc.aio.server()
    front = TlsFront("127.0.0.1:0", certs["server_cert"], certs["server_key"], certs["ca"],
                     "127.0.0.1:0")   # backend port filled in below
    api_pb2_grpc.add_AccessServiceServicer_to_server(WhoAmI(front), backend)
    backend_port = backend.add_insecure_port("127.0.0.1:0")
    front.backend_port = backend_port
    direct = grpc.aio.server()
    api_pb2_grpc.add_AccessServiceServicer_to_server(WhoAmI(None), direct)
    creds = grpc.ssl_server_credentials(
        [(read(certs["server_key"]), read(certs["server_cert"]))],
        root_certificates=read(certs["ca"]), require_client_auth=True)
    direct_port = direct.add_secure_port("127.0.0.1:0", creds)
    await backend.start()
    await direct.start()
    front_port = await front.start()
    print(json.dumps({"front": front_port, "direct": direct_port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)   # until EOF
    await front.stop()
    await backend.stop(None)
    await direct.stop(None)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def measure(port: int, certs: dict, calls: int, concurrency: int) -> dict:
    creds = grpc.ssl_channel_credentials(read(certs["ca"]), read(certs["client_key"]),
                                         read(certs["client_cert"]))
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        stub = api_pb2_grpc.AccessServiceStub(channel)
        request = api_pb2.WhoAmIRequest()
        for _ in range(100):   # warm up: connection, TLS, HTTP/2 windows
            answer = await stub.WhoAmI(request)
        if answer.username != "bench-client":
            raise SystemExit(f"port {port}: the server saw {answer.username!r}, not the client")
        latencies = []
        for _ in range(calls):
            t = time.perf_counter()
            await stub.WhoAmI(request)
            latencies.append(time.perf_counter() - t)

        async def worker(n: int):
            for _ in range(n):
                await stub.WhoAmI(request)
        t = time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        rate = (calls // concurrency * concurrency) / (time.perf_counter() - t)
    return {"p50_us": pct(latencies, 50) * 1e6, "p99_us": pct(latencies, 99) * 1e6,
            "mean_us": statistics.fmean(latencies) * 1e6, "calls_per_s": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json")
    parser.add_argument("--serve", help=argparse.SUPPRESS)   # the server process: certs JSON
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(json.loads(args.serve)))
        return
    tmp = tempfile.mkdtemp(prefix="bench-tlsfront-")
    server = None
    try:
        ca, ca_key = pki.make_ca(os.path.join(tmp, "ca"), "bench")
        scert, skey = pki.make_node_cert(os.path.join(tmp, "server"), ca, ca_key, "apiserver",
                                         "127.0.0.1")
        ccert, ckey = pki.make_node_cert(os.path.join(tmp, "client"), ca, ca_key,
                                         "bench-client", "127.0.0.1")
        certs = {"ca": ca, "server_cert": scert, "server_key": skey, "client_cert": ccert,
                 "client_key": ckey}
        server = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(certs)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ports = json.loads(server.stdout.readline())
        results = {}
        # alternate, so that a burst of load from elsewhere on the machine hits both alike
        for name in ("direct", "front", "direct", "front"):
            r = asyncio.run(measure(ports[name], certs, args.calls, args.concurrency))
            best = results.get(name)
            if best is None or r["p50_us"] < best["p50_us"]:
                results[name] = r
    finally:
        if server is not None:
            server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.calls} unary WhoAmI calls, one at a time over one channel (best of 2 rounds); "
          f"then {args.concurrency} in flight")
    print(f"{'path':<28}{'p50 us':>10}{'p99 us':>10}{'mean us':>10}{'calls/s':>12}")
    for name, label in (("direct", "grpc TLS (direct)"), ("front", "TLS front -> backend")):
        r = results[name]
        print(f"{label:<28}{r['p50_us']:>10.0f}{r['p99_us']:>10.0f}{r['mean_us']:>10.0f}"
              f"{r['calls_per_s']:>12.0f}")
    d, f = results["direct"], results["front"]
    print(f"front overhead: p50 +{f['p50_us'] - d['p50_us']:.0f} us, "
          f"p99 +{f['p99_us'] - d['p99_us']:.0f} us, "
          f"throughput x{f['calls_per_s'] / d['calls_per_s']:.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"calls": args.calls, "concurrency": args.concurrency, **results}, out,
                      indent=2)


if __name__ == "__main__":
    main()
