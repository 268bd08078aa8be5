"""The cluster API client: gRPC channels from a Target, identity as call metadata, failover
between a cluster's servers, and gRPC errors turned into kubectl's one-line messages."""
import json

import grpc

from ..api.podnet.api.v1 import api_pb2, api_pb2_grpc
from .client import CtlError
from .target import Target

# A List of many pods is larger than gRPC's default 4 MiB.
MAX_MESSAGE = 256 << 20
CONNECT_TIMEOUT = 5.0

# gRPC code -> kube-apiserver's StatusReason, as kubectl prints it: Error from server (REASON)
REASONS = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.ABORTED: "Conflict",
    grpc.StatusCode.INVALID_ARGUMENT: "Invalid",
    grpc.StatusCode.PERMISSION_DENIED: "Forbidden",
    grpc.StatusCode.OUT_OF_RANGE: "Expired",
    grpc.StatusCode.FAILED_PRECONDITION: "BadRequest",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "RequestEntityTooLarge",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Timeout",
    grpc.StatusCode.INTERNAL: "InternalError",
    grpc.StatusCode.UNKNOWN: "InternalError",
    grpc.StatusCode.UNIMPLEMENTED: "NotImplemented",
    grpc.StatusCode.CANCELLED: "Cancelled",
}


class ApiError(CtlError):
    """A failed call; str() is the line kubectl would print (podnetctl prints it as it is)."""

    def __init__(self, code: grpc.StatusCode, details: str, server: str = ""):
        self.code, self.details, self.server = code, details, server
        super().__init__(message(code, details, server))

    @property
    def reason(self) -> str:
        return reason(self.code, self.details)


class KubectlError(CtlError):
    """A client-side error, printed as kubectl prints its own: `error: ...`."""

    def __str__(self) -> str:
        return f"error: {self.args[0]}"


def reason(code: grpc.StatusCode, details: str) -> str:
    if code == grpc.StatusCode.INVALID_ARGUMENT and "is invalid" not in details:
        return "BadRequest"
    return REASONS.get(code, code.name.title().replace("_", ""))


def message(code: grpc.StatusCode, details: str, server: str = "") -> str:
    details = " ".join((details or "").split())
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"error: You must be logged in to the server ({details or 'Unauthorized'})"
    if code == grpc.StatusCode.UNAVAILABLE:
        where = f" {server}" if server else ""
        return f"Unable to connect to the server{where}: {details or 'unavailable'}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (f"error: the server{' ' + server if server else ''} does not serve the cluster "
                f"API (podnet.api.v1): {details}")
    return f"Error from server ({reason(code, details)}): {details}"


def _credentials(t: Target) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=t.ca, private_key=t.key,
                                        certificate_chain=t.cert)


class ApiClient:
    """Calls to one cluster: tries its servers in turn while they are UNAVAILABLE and sticks
    to the one that answered."""

    def __init__(self, target: Target):
        self.target = target
        self._at = 0
        self._channels: dict[int, grpc.Channel] = {}

    @property
    def server(self) -> str:
        return self.target.servers[self._at]

    @property
    def namespace(self) -> str:
        return self.target.namespace

    def metadata(self) -> list[tuple[str, str]]:
        md = []
        if self.target.token:
            md.append(("authorization", f"Bearer {self.target.token}"))
        if self.target.as_user:
            md.append(("impersonate-user", self.target.as_user))
        md += [("impersonate-group", g) for g in self.target.as_groups]
        return md

    def _channel(self, i: int) -> grpc.Channel:
        if i not in self._channels:
            target = self.target.servers[i]
            options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                       ("grpc.max_send_message_length", MAX_MESSAGE)]
            if self.target.tls:
                if self.target.tls_server_name:
                    options.append(("grpc.ssl_target_name_override", self.target.tls_server_name))
                self._channels[i] = grpc.secure_channel(target, _credentials(self.target), options)
            else:
                self._channels[i] = grpc.insecure_channel(target, options)
        return self._channels[i]

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def _stub(self, service: str, i: int):
        return getattr(api_pb2_grpc, f"{service}Stub")(self._channel(i))

    def _order(self) -> list[int]:
        n = len(self.target.servers)
        return [(self._at + k) % n for k in range(n)]

    def call(self, service: str, method: str, request, timeout: float | None = 30):
        """One unary call; ApiError on failure (UNAVAILABLE only once every server failed)."""
        last = None
        for i in self._order():
            try:
                answer = getattr(self._stub(service, i), method)(
                    request, metadata=self.metadata(), timeout=timeout)
            except grpc.RpcError as e:
                details = e.details() or ""
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    details = f"{service}.{method}: {details}"
                last = ApiError(e.code(), details, self.target.servers[i])
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    continue
                raise last from None
            self._at = i
            return answer
        raise last

    def stream(self, service: str, method: str, request, timeout: float | None = None):
        """A server stream from the first server that connects; the iterator raises
        grpc.RpcError when cut (callers that resume catch it, others use `errors`)."""
        last = None
        for i in self._order():
            try:
                grpc.channel_ready_future(self._channel(i)).result(timeout=CONNECT_TIMEOUT)
            except grpc.FutureTimeoutError:
                last = ApiError(grpc.StatusCode.UNAVAILABLE,
                                f"no connection within {CONNECT_TIMEOUT:g}s",
                                self.target.servers[i])
                continue
            self._at = i
            return getattr(self._stub(service, i), method)(request, metadata=self.metadata(),
                                                            timeout=timeout)
        raise last

    def next_server(self) -> None:
        """After a stream was cut: resume on the next server of the cluster."""
        self._at = (self._at + 1) % len(self.target.servers)

    # ObjectService, objects as dicts

    def get(self, resource: str, namespace: str, name: str) -> dict:
        answer = self.call("ObjectService", "GetObject", api_pb2.GetObjectRequest(
            resource=resource, namespace=namespace, name=name))
        return decode(answer.object)

    def list(self, resource: str, namespace: str = "", label_selector: str = "",
             field_selector: str = "") -> dict:
        answer = self.call("ObjectService", "ListObjects", api_pb2.ListObjectsRequest(
            resource=resource, namespace=namespace, label_selector=label_selector,
            field_selector=field_selector), timeout=120)
        return decode(answer.list)

    def create(self, resource: str, namespace: str, obj: dict) -> dict:
        answer = self.call("ObjectService", "CreateObject", api_pb2.CreateObjectRequest(
            resource=resource, namespace=namespace, object=encode(obj)))
        return decode(answer.object)

    def update(self, resource: str, namespace: str, obj: dict, subresource: str = "") -> dict:
        answer = self.call("ObjectService", "UpdateObject", api_pb2.UpdateObjectRequest(
            resource=resource, namespace=namespace, object=encode(obj), subresource=subresource))
        return decode(answer.object)

    def delete(self, resource: str, namespace: str, name: str,
               grace_period: float | None = None, resource_version: str = "") -> dict:
        request = api_pb2.DeleteObjectRequest(resource=resource, namespace=namespace, name=name,
                                              resource_version=resource_version)
        if grace_period is not None:
            request.grace_period.FromNanoseconds(int(grace_period * 1e9))
        return decode(self.call("ObjectService", "DeleteObject", request).object)

    def kinds(self) -> list:
        return list(self.call("ObjectService", "ListKinds", api_pb2.ListKindsRequest()).kinds)


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode(data: bytes) -> dict:
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise KubectlError(f"the server sent an object that is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise KubectlError("the server sent an object that is not a JSON object")
    return obj


def rpc_error(e: grpc.RpcError, server: str = "") -> ApiError:
    return ApiError(e.code(), e.details() or "", server)
