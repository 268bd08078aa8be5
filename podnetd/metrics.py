"""Prometheus metrics of podnetd (`--metrics-listen`, default 127.0.0.1:9633).

Two kinds, both on one registry of the daemon's own (never the process-global one):
- events counted where they happen (CNI invocations, gRPC calls, reconcile repairs, firewall
  syncs, container restarts, probe results, image imports), through the small `observe_*`
  methods the components are given;
- state read when Prometheus scrapes (IPAM pool, endpoints, peers, pods), through collector
  callbacks the components register, so nothing has to be kept in step on the hot path.

Names follow Prometheus' conventions: `podnet_` prefix, base units (`_seconds`), `_total` for
counters, and labels of low cardinality only (a command, a mode, a phase: never a pod IP, a
container id or a pod name). Scrapes are served by prometheus_client's HTTP server in a thread
of its own: the event loop never serves them.
"""
import json
import logging
import threading
import time

import grpc
from prometheus_client import (CollectorRegistry, Counter, Histogram, disable_created_metrics,
                               start_http_server)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9633"
# CNI and gRPC latencies: from a 1 ms VERSION to a multi-second ADD under load.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _Callbacks(Collector):
    """Gauges whose values are read from the components at scrape time."""

    def __init__(self):
        self._sources: list = []
        self._lock = threading.Lock()

    def add(self, source) -> None:
        """source() -> iterable of GaugeMetricFamily (or any metric family)."""
        with self._lock:
            self._sources.append(source)

    def collect(self):
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            try:
                yield from source()
            except Exception as e:  # noqa: BLE001 - one failing source never breaks a scrape
                log.warning("metrics: %s: %s", getattr(source, "__qualname__", source), e)

    def describe(self):
        return []   # the families depend on the state: not described up front


def gauge(name: str, documentation: str, labels: list[str], values: dict) -> GaugeMetricFamily:
    """A gauge family from {label values tuple: value}."""
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter read from a component at scrape time (exposed as name_total)."""
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


class Metrics:
    def __init__(self):
        disable_created_metrics()   # no `_created` series beside every counter and histogram
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.cni_operations = Counter(
            "podnet_cni_operations", "CNI invocations handled, by command and result "
            "(result: success, or the CNI error code)", ["command", "result"], registry=r)
        self.cni_duration = Histogram(
            "podnet_cni_operation_duration_seconds", "Time podnetd took to handle a CNI "
            "invocation", ["command"], buckets=LATENCY_BUCKETS, registry=r)
        self.grpc_handled = Counter(
            "podnet_grpc_server_handled", "gRPC calls completed by the daemon's API, by service, "
            "method and status code", ["grpc_service", "grpc_method", "grpc_code"], registry=r)
        self.grpc_duration = Histogram(
            "podnet_grpc_server_handling_seconds", "Time the daemon's API took per gRPC call",
            ["grpc_service", "grpc_method"], buckets=LATENCY_BUCKETS, registry=r)
        self.reconcile_runs = Counter(
            "podnet_reconcile_runs", "Reconcile passes of the routing loop", registry=r)
        self.reconcile_repairs = Counter(
            "podnet_reconcile_repairs", "Kernel entries (routes, neighbours, FDB entries) the "
            "reconcile loop installed or removed to match the store", ["action"], registry=r)
        self.reconcile_errors = Counter(
            "podnet_reconcile_errors", "Kernel entries the reconcile loop failed to install or "
            "remove", registry=r)
        self.firewall_syncs = Counter(
            "podnet_firewall_syncs", "nftables syncs, by what they had to do", ["change"],
            registry=r)
        self.container_restarts = Counter(
            "podnet_container_restarts", "Container restarts by the pod runtime", registry=r)
        self.probe_results = Counter(
            "podnet_probe_results", "Container probe results", ["probe", "result"], registry=r)
        self.image_imports = Counter(
            "podnet_image_imports", "Image imports, by result", ["result"], registry=r)
        self.image_import_duration = Histogram(
            "podnet_image_import_duration_seconds", "Time an image import took",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r)
        self._callbacks = _Callbacks()
        self.registry.register(self._callbacks)
        self._server = None

    # -- state read at scrape time ---------------------------------------------------------

    def add_source(self, source) -> None:
        self._callbacks.add(source)

    # -- events ----------------------------------------------------------------------------

    def observe_cni(self, command: str, exit_code: int, stdout: bytes, seconds: float) -> None:
        self.cni_operations.labels(command, cni_result(exit_code, stdout)).inc()
        self.cni_duration.labels(command).observe(seconds)

    def observe_reconcile(self, result: dict) -> None:
        """One pass of the cluster reconcile loop: routing.sync's counts, and the firewall's
        when it was synced in that pass."""
        self.reconcile_runs.inc()
        self.reconcile_repairs.labels("install").inc(result.get("installed", 0))
        self.reconcile_repairs.labels("remove").inc(result.get("removed", 0))
        self.reconcile_errors.inc(len(result.get("errors", ())))
        firewall = result.get("firewall")
        if firewall is not None:
            changed = firewall["rewritten"] or firewall["added"] or firewall["removed"]
            self.firewall_syncs.labels("repaired" if changed else "none").inc()

    # -- serving ---------------------------------------------------------------------------

    def serve(self, listen: str) -> None:
        host, port = split_listen(listen)
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s/metrics", listen)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def split_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 in brackets) -> (host, port); ValueError when it is not one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{listen!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def cni_result(exit_code: int, stdout: bytes) -> str:
    """'success', or the CNI error code of the answer ('error' when it names none)."""
    if exit_code == 0:
        return "success"
    try:
        code = json.loads(stdout).get("code")
    except (ValueError, AttributeError):
        code = None
    return str(code) if isinstance(code, int) else "error"


class InstrumentedCni:
    """The CNI handler with every invocation counted and timed; the same handle() signature,
    so the CNI relay (podnetd/cni_relay.py) calls it unchanged."""

    def __init__(self, handler, metrics: Metrics):
        self._handler = handler
        self._metrics = metrics

    def __getattr__(self, name):
        return getattr(self._handler, name)

    def handle(self, command, container_id, netns, ifname, raw_config):
        started = time.perf_counter()
        exit_code, stdout = self._handler.handle(command, container_id, netns, ifname,
                                                 raw_config)
        self._metrics.observe_cni(command if command in KNOWN_CNI_COMMANDS else "unknown",
                                  exit_code, stdout, time.perf_counter() - started)
        return exit_code, stdout


# The label takes only the spec's commands: anything else a caller sends is "unknown".
KNOWN_CNI_COMMANDS = frozenset({"ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"})


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call of the daemon's gRPC API (unary and server-streaming)."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        observe = self._observer(service or "unknown", method)
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                started = time.perf_counter()
                try:
                    response = await inner(request, context)
                except BaseException:
                    observe(context, started, failed=True)
                    raise
                observe(context, started)
                return response
            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                started = time.perf_counter()
                try:
                    async for item in _as_async_iter(inner_stream(request, context)):
                        yield item
                except BaseException:
                    observe(context, started, failed=True)
                    raise
                observe(context, started)
            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler   # client- and bidi-streaming: none in our API

    def _observer(self, service: str, method: str):
        def observe(context, started: float, failed: bool = False) -> None:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            self._metrics.grpc_handled.labels(service, method, name).inc()
            self._metrics.grpc_duration.labels(service, method).observe(
                time.perf_counter() - started)
        return observe


async def _as_async_iter(result):
    """A server-streaming handler is an async generator, or a coroutine that writes itself."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result
