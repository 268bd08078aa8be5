"""gRPC channel to the local podnetd."""
import grpc

from ..config import DEFAULT_SOCKET


class CtlError(Exception):
    pass


def channel(socket_path: str = DEFAULT_SOCKET) -> grpc.Channel:
    return grpc.insecure_channel(f"unix://{socket_path}")


def call(method, request, *, timeout: float = 10):
    """Call a stub method, turning gRPC failures into one readable line."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise CtlError(f"cannot reach podnetd: {e.details()}") from None
        raise CtlError(f"{code.name.lower()}: {e.details()}") from None
