"""The forwarding half of PodIOService (podio.py): a gRPC channel over mutual TLS to the cluster
API of the node that runs a pod, found from its Node object (status.addresses InternalIP and
status.daemonEndpoints.kubeletEndpoint.Port, the node's --api-listen port).

This node authenticates with its own certificate (--tls-cert/--tls-key: CN system:node:NAME,
O system:nodes), and verifies the other node's against --tls-ca (the CA that signs every node's
certificate), else --client-ca. gRPC checks the certificate against the address dialled, so node
certificates carry their InternalIP as an IP subjectAltName (the lab's do)."""
import asyncio
import dataclasses
import ipaddress

import grpc

from ..aio import within
from ..server import MAX_MESSAGE_BYTES

DIAL_TIMEOUT = 5.0
MAX_TLS_FILE = 1 << 20


class DialError(Exception):
    """The pod's node cannot be reached (answered as UNAVAILABLE); the message says why."""


@dataclasses.dataclass(frozen=True)
class NodeTls:
    cert: str
    key: str
    ca: str


def node_address(node: dict) -> tuple[str, int]:
    """(InternalIP, API port) of a Node object. The object is written by that node: every field
    is checked before it is dialled."""
    name = (node.get("metadata") or {}).get("name", "?")
    status = node.get("status") or {}
    ips = [a.get("address") for a in status.get("addresses") or []
           if isinstance(a, dict) and a.get("type") == "InternalIP"]
    if not ips or not isinstance(ips[0], str):
        raise DialError(f'node "{name}" has no InternalIP address')
    try:
        ip = ipaddress.ip_address(ips[0])
    except ValueError:
        raise DialError(f'node "{name}": InternalIP {ips[0]!r} is not an IP address') from None
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise DialError(f'node "{name}": kubeletEndpoint port {port!r} is not a port')
    if port == 0:
        raise DialError(f'node "{name}" serves no cluster API (it runs without --api-listen): '
                        "its pods' logs and exec cannot be reached")
    return str(ip), port


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_TLS_FILE + 1)
    if len(data) > MAX_TLS_FILE:
        raise DialError(f"{path}: larger than {MAX_TLS_FILE} bytes")
    return data


class Dialer:
    def __init__(self, tls: NodeTls | None):
        self.tls = tls

    async def dial(self, node: dict) -> grpc.aio.Channel:
        """A ready channel to the node's cluster API (the caller closes it), or DialError
        after DIAL_TIMEOUT. The files are read at each dial: a renewed certificate is used
        without a restart."""
        name = (node.get("metadata") or {}).get("name", "?")
        if self.tls is None:
            raise DialError(f'cannot forward to node "{name}": this node has no certificate to '
                            "authenticate with (--tls-cert/--tls-key and --tls-ca or "
                            "--client-ca)")
        ip, port = node_address(node)
        try:
            cert, key, ca = await asyncio.to_thread(
                lambda: (_read(self.tls.cert), _read(self.tls.key), _read(self.tls.ca)))
        except OSError as e:
            raise DialError(f"forwarding to node {name!r}: {e.filename}: {e.strerror}") from None
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                             certificate_chain=cert)
        target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        channel = grpc.aio.secure_channel(target, creds, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0)])
        try:
            await within(channel.channel_ready(), DIAL_TIMEOUT)
        except asyncio.TimeoutError:
            await channel.close()
            raise DialError(f"error dialing backend: node {name!r} at {target}: no TLS "
                            f"connection within {DIAL_TIMEOUT:g} s") from None
        except BaseException:
            await channel.close()
            raise
        return channel
