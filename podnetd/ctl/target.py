"""Which cluster API podnetctl talks to, as whom: the client config and the flags resolved.

In order: --server (with the context's credentials, if a config names any); an explicit --socket
(the local podnetd, where root is cluster admin); the context of the client config (--context or
current-context); with no config at all, the local podnetd's default socket.
"""
import dataclasses
import ipaddress
import urllib.parse

from ..config import DEFAULT_SOCKET
from . import kubeconfig
from .kubeconfig import ConfigError


@dataclasses.dataclass(frozen=True)
class Overrides:
    """The global flags that choose the target and the identity."""
    config: str | None = None
    context: str | None = None
    server: str | None = None
    socket: str | None = None
    token: str | None = None
    namespace: str | None = None
    as_user: str | None = None
    as_groups: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Target:
    servers: tuple[str, ...]        # gRPC targets: "HOST:PORT" (TLS) or "unix:/path" (local)
    tls: bool
    namespace: str
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    token: str = ""
    tls_server_name: str = ""
    as_user: str = ""
    as_groups: tuple[str, ...] = ()
    context: str = ""

    @property
    def local(self) -> bool:
        """The local podnetd's socket, with no client config: node-local fallbacks apply."""
        return not self.tls and not self.context


def grpc_target(server: str) -> tuple[str, bool]:
    """(gRPC target, TLS?) of a server URL: https://HOST[:PORT] or unix:///PATH."""
    if server.startswith("unix:"):
        path = server[len("unix:"):].lstrip("/")
        if not path:
            raise ConfigError(f"server {server!r}: no socket path")
        return f"unix:/{path}", False
    url = urllib.parse.urlsplit(server if "://" in server else "https://" + server)
    if url.scheme != "https":
        raise ConfigError(f"server {server!r}: the cluster API speaks TLS only (https://HOST:PORT)")
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise ConfigError(f"server {server!r}: give https://HOST:PORT and nothing more")
    try:
        host, port = url.hostname, url.port or 443
    except ValueError as e:
        raise ConfigError(f"server {server!r}: {e}") from None
    if not host:
        raise ConfigError(f"server {server!r}: no host")
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"{host}:{port}", True


def _material(path: str, data: bytes | None, what: str) -> bytes | None:
    if data is not None:
        return data
    return kubeconfig.read_limited(path, what) if path else None


def _check_header_value(value: str, what: str) -> str:
    # gRPC metadata values are printable ASCII; anything else cannot be sent as given
    if not all(0x20 <= ord(c) < 0x7f for c in value):
        raise ConfigError(f"{what}: only printable ASCII can be sent")
    return value


def resolve(o: Overrides, env: dict | None = None) -> Target:
    path, named = kubeconfig.config_path(o.config, env)
    config = kubeconfig.load(path, must_exist=named)
    name = o.context or config.current_context
    ctx = cluster = user = None
    if o.context and o.context not in config.contexts:
        raise ConfigError(f"context was not found for specified context: {o.context}")
    if name and name in config.contexts:
        ctx = config.contexts[name]
        cluster = config.clusters.get(ctx.cluster)
        if cluster is None:
            raise ConfigError(f'context "{name}": cluster "{ctx.cluster}" does not exist')
        if ctx.user:
            user = config.users.get(ctx.user)
            if user is None:
                raise ConfigError(f'context "{name}": user "{ctx.user}" does not exist')
    elif name and not o.server and not o.socket:
        raise ConfigError(f'current-context "{name}" does not exist in {path}')
    common = dict(namespace=o.namespace or (ctx.namespace if ctx else "") or "default",
                  as_user=_check_header_value(o.as_user or "", "--as"),
                  as_groups=tuple(_check_header_value(g, "--as-group") for g in o.as_groups),
                  token=_check_header_value(o.token or (user.token if user else ""), "token"))
    if o.server:
        servers = (o.server,)
    elif o.socket or ctx is None:
        return Target((f"unix:{o.socket or DEFAULT_SOCKET}",), False, **common)
    else:
        servers = cluster.servers
    targets = [grpc_target(s) for s in servers]
    if any(tls for _, tls in targets):
        if not all(tls for _, tls in targets):
            raise ConfigError(f"cluster {cluster.name}: mixes unix sockets and https servers")
        if user and bool(user.cert_path or user.cert_data) != bool(user.key_path or user.key_data):
            raise ConfigError(f'user "{user.name}": a client certificate needs its key, '
                              f"and a key its certificate")
        return Target(tuple(t for t, _ in targets), True, context=name if ctx else "",
                      ca=_material(cluster.ca_path, cluster.ca_data, "certificate-authority")
                      if cluster else None,
                      cert=_material(user.cert_path, user.cert_data, "client-certificate")
                      if user else None,
                      key=_material(user.key_path, user.key_data, "client-key") if user else None,
                      tls_server_name=cluster.tls_server_name if cluster else "", **common)
    return Target(tuple(t for t, _ in targets), False, context=name if ctx else "", **common)
