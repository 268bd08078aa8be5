"""The cluster API's TLS front: terminates TLS for `--api-listen` and relays each connection, as
plain bytes, to the daemon's insecure grpc.aio server on 127.0.0.1, remembering who is behind each
relayed connection so that the authentication layer can ask `identity(context.peer())`.

Why not grpc's own TLS: grpcio's `ssl_server_credentials(..., require_client_auth=False)` does not
request a client certificate at all, and `require_client_auth=True` makes one mandatory, which
would lock bearer-token users out. kube-apiserver asks for a certificate and lets the client
decline; this front does the same with Python's ssl (verify_mode CERT_OPTIONAL).

What the handshake decides, and what it leaves to the authentication layer:
- No client certificate: the handshake succeeds; the identity has cert_der None (the caller then
  looks for a bearer token, or treats the call as anonymous).
- A certificate signed by `--client-ca`: the handshake succeeds; the identity carries it, with
  verified_chain True and its subject (CN, O) and validity window already decoded.
- An expired or not-yet-valid certificate of that CA: the handshake still succeeds, because
  OpenSSL's time checks are switched off (X509_V_FLAG_NO_CHECK_TIME), so that the authentication
  layer can answer UNAUTHENTICATED as kube-apiserver answers 401, instead of the client seeing a
  bare TLS failure. `ClientIdentity.validity_error()` does that check (leaf and issuing CA).
- A certificate of a foreign CA (or a malformed one): the handshake FAILS, the client sees
  UNAVAILABLE, and the backend never hears of it. Python's ssl module has no verify callback, so
  a failed chain cannot be let through to be refused later with UNAUTHENTICATED; kube-apiserver
  would finish the handshake and answer 401. The outcome (nothing done) is the same.
- Python 3.11's ssl exposes only the leaf (no verified chain), so intermediates a client sends
  are not reported; the issuing CA's validity is looked up among the `--client-ca` certificates.

How the backend's calls are tied to clients: for every accepted TLS connection the front opens a
TCP connection to the backend and records that connection's local (address, port), which is
exactly what grpc reports as the backend call's `context.peer()`, BEFORE relaying any byte. A
backend connection that did not come through the front (a local process dialling the backend
directly) is not in the map: `identity()` returns None for it, i.e. no certificate.

When a relayed connection ends its entry is not dropped at once: it stays, marked closed, for
`port_quarantine` seconds. A call the backend had already received on that connection then gets
`PeerGone` (its client is gone: refuse it), and a later connection that the kernel gives the same
port (loopback reuses TIME_WAIT ports at once) can never inherit the old client's identity: the
front dials again when it is handed a quarantined port, and a direct connection on such a port
gets PeerGone too, never someone else's identity.

Call `identity()` first thing in a call (an interceptor): a port says who the client is only while
its connection is open. One race remains that the front alone cannot close: a local process that
dials the backend directly, sends a call and resets the connection at once frees its port, and if
the front is handed that very port for a new client before the backend's handler has called
identity(), that call is attributed to the new client. Keep other local users off the backend
port (an nftables `meta skuid != 0` reject on it), or have the front dial from privileged source
ports (below 1024, which only root can bind) and refuse unmapped ones below 1024.

Limits: at most `max_connections` connections (counted from accept, so handshakes in progress
count; beyond, a new connection is closed at once), `handshake_timeout` seconds for the TLS
handshake (a client that connects and says nothing cannot hold a slot), and a connection that
relays no byte in either direction for `idle_timeout` seconds is closed (checked by one sweeper
task, so it happens between idle_timeout and 1.25 x idle_timeout). Each direction relays through
bounded buffers (reads of CHUNK bytes, StreamReader limit, drain() before the next read), so a
slow reader slows its writer instead of filling memory: about 4 x CHUNK per direction.
"""
import asyncio
import dataclasses
import errno
import ipaddress
import random
import logging
import socket
import ssl
import time
import urllib.parse
from ..aio import within

log = logging.getLogger(__name__)

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (x509_vfy.h); Python's ssl has no name for it, and the
# verify_flags setter passes the bits through to X509_VERIFY_PARAM_set_flags.
X509_V_FLAG_NO_CHECK_TIME = 0x200000

CHUNK = 32 * 1024
_BACKEND_CONNECT_TIMEOUT = 5.0
PRIVILEGED_PORTS = (512, 1024)   # the front's source ports to the backend (root only)
_BACKEND_DIAL_ATTEMPTS = 64

_Key = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


class TlsFrontError(Exception):
    """The front cannot start: a bad address, an unreadable certificate or key, a port in use."""


class PeerGone(Exception):
    """The backend call came on a relayed connection that has since ended: its client is gone,
    and the port may soon carry someone else. The call must be refused, not run anonymously."""


@dataclasses.dataclass(frozen=True)
class ClientIdentity:
    """What the TLS handshake established about one client connection. Times are seconds since
    the epoch; subject fields are decoded only for a certificate that verified."""
    remote: str                         # the TLS client's "ip:port" ("[v6]:port" for IPv6)
    # the client's leaf certificate, None when it sent none (kept out of repr: log lines)
    cert_der: bytes | None = dataclasses.field(default=None, repr=False)
    cert_pem: str | None = dataclasses.field(default=None, repr=False)
    verified_chain: bool = False        # the certificate chains to --client-ca (times unchecked)
    common_name: str | None = None      # the subject's CN (the last one, as Go's pkix.Name)
    organizations: tuple[str, ...] = ()  # the subject's O values, in order (the groups)
    not_before: float | None = None
    not_after: float | None = None
    issuer_not_before: float | None = None  # the --client-ca certificate that issued the leaf
    issuer_not_after: float | None = None

    def validity_error(self, now: float | None = None) -> str | None:
        """None when the certificate and its issuing CA are within their validity windows at
        `now`; else the reason, in Go's x509 words (what kube-apiserver logs on its 401)."""
        if self.cert_der is None:
            return None
        now = time.time() if now is None else now
        for what, start, end in (("certificate", self.not_before, self.not_after),
                                 ("issuing CA certificate", self.issuer_not_before,
                                  self.issuer_not_after)):
            if start is not None and now < start:
                return (f"x509: {what} has expired or is not yet valid: current time "
                        f"{_rfc3339(now)} is before {_rfc3339(start)}")
            if end is not None and now > end:
                return (f"x509: {what} has expired or is not yet valid: current time "
                        f"{_rfc3339(now)} is after {_rfc3339(end)}")
        return None


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """"HOST:PORT" or "[V6]:PORT" -> (host, port); port 0 allowed (pick one)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise TlsFrontError(f"{what} {value!r}: want HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise TlsFrontError(f"{what} {value!r}: an IPv6 address goes in brackets: [ADDR]:PORT")
    if not port.isdigit() or int(port) > 65535:
        raise TlsFrontError(f"{what} {value!r}: port must be a number 0-65535")
    return host, int(port)


def parse_peer(peer: str) -> _Key | None:
    """grpc's context.peer() ("ipv4:127.0.0.1:54321", "ipv6:[::1]:54321", percent-encoded in
    some versions) -> (address, port); None for anything else (unix sockets, garbage)."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    host, sep, port = urllib.parse.unquote(rest).rpartition(":")
    if not sep or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host), int(port)
    except ValueError:
        return None


def _why(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _format_addr(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cert_time(value) -> float | None:
    try:
        return float(ssl.cert_time_to_seconds(value)) if value else None
    except ValueError:
        return None


def _subject(decoded: dict) -> tuple[str | None, tuple[str, ...]]:
    common_name, organizations = None, []
    for rdn in decoded.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                common_name = value
            elif attr == "organizationName":
                organizations.append(value)
    return common_name, tuple(organizations)


def server_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """The front's TLS context (blocking: reads files). Raises TlsFrontError naming the file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION   # a client could otherwise make us redo handshakes
    ctx.set_alpn_protocols(["h2"])           # gRPC clients insist on h2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TlsFrontError(f"API TLS: load --tls-cert {cert} / --tls-key {key}: {e}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as e:
            raise TlsFrontError(f"API TLS: load --client-ca {client_ca}: {e}") from None
        if not ctx.get_ca_certs():
            raise TlsFrontError(f"API TLS: --client-ca {client_ca}: no CA certificate in it")
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    else:
        ctx.verify_mode = ssl.CERT_NONE    # no CA to check against: do not ask for certificates
    return ctx


def _ca_windows(ctx: ssl.SSLContext) -> dict[tuple, tuple[float | None, float | None]]:
    """--client-ca subject -> validity window; of several CAs with one subject (a rotation), the
    one that expires last."""
    windows: dict[tuple, tuple[float | None, float | None]] = {}
    for ca in ctx.get_ca_certs():
        window = (_cert_time(ca.get("notBefore")), _cert_time(ca.get("notAfter")))
        old = windows.get(ca.get("subject"))
        if old is None or (window[1] or 0) > (old[1] or 0):
            windows[ca.get("subject")] = window
    return windows


class _LogLimiter:
    """At most `burst` debug lines per `period` seconds; the rest are counted and reported once,
    so a flood of garbage connections cannot flood the log."""

    def __init__(self, burst: int = 20, period: float = 60.0, clock=time.monotonic):
        self.burst, self.period, self.clock = burst, period, clock
        self.window_start, self.count, self.suppressed = -period, 0, 0

    def debug(self, msg: str, *args) -> None:
        now = self.clock()
        if now - self.window_start >= self.period:
            if self.suppressed:
                log.debug("API TLS front: %d more failures not logged in the last %.0f s",
                          self.suppressed, self.period)
            self.window_start, self.count, self.suppressed = now, 0, 0
        if self.count < self.burst:
            self.count += 1
            log.debug(msg, *args)
        else:
            self.suppressed += 1


@dataclasses.dataclass(eq=False)   # by identity: kept in a set
class _Conn:
    remote: str
    task: asyncio.Task | None = None
    last_io: float = 0.0


class TlsFront:
    """See the module docstring. start() binds and returns the port; identity(peer) answers for a
    backend call; stop() closes everything."""

    def __init__(self, listen: str, cert: str, key: str, client_ca: str | None, backend: str, *,
                 max_connections: int = 480, handshake_timeout: float = 10.0,
                 idle_timeout: float = 600.0, port_quarantine: float = 120.0):
        self.listen_host, self.listen_port = parse_host_port(listen, "--api-listen")
        self.backend_host, self.backend_port = parse_host_port(backend, "API backend")
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.port_quarantine = port_quarantine
        self._ctx: ssl.SSLContext | None = None
        self._ca_windows: dict = {}
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self._sweep_task: asyncio.Task | None = None
        self._conns: set[_Conn] = set()
        # backend connection's local (address, port) -> the client behind it; an entry whose
        # value is None is a closed connection's port in quarantine (until _quarantined[key]).
        self._ids: dict[_Key, ClientIdentity | None] = {}
        self._quarantined: dict[_Key, float] = {}
        self._log = _LogLimiter()

    @property
    def connections(self) -> int:
        """Connections accepted and not yet closed (handshaking or relaying)."""
        return len(self._conns)

    def identity(self, peer: str) -> ClientIdentity | None:
        """The client behind a backend call, from its context.peer(). None: the call did not come
        through the front (no certificate, no TLS). Raises PeerGone for a call on a relayed
        connection that has ended (refuse it)."""
        key = parse_peer(peer)
        if key is None or key not in self._ids:
            return None
        ident = self._ids[key]
        if ident is None:
            raise PeerGone(f"the client connection behind {peer} has closed")
        return ident

    async def start(self) -> int:
        self._ctx = await asyncio.to_thread(server_context, self.cert, self.key, self.client_ca)
        self._ca_windows = _ca_windows(self._ctx) if self.client_ca else {}
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.listen_host or None, self.listen_port,
                                           type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            sock = socket.create_server(addr, family=family, backlog=512)
        except OSError as e:
            raise TlsFrontError(f"API TLS: listen on {self.listen_host}:{self.listen_port}: "
                                f"{e.strerror or e}") from None
        sock.setblocking(False)
        self._sock = sock
        self._accept_task = asyncio.create_task(self._accept_loop(), name="api-tls-accept")
        self._sweep_task = asyncio.create_task(self._sweep_loop(), name="api-tls-sweep")
        return sock.getsockname()[1]

    async def stop(self) -> None:
        for task in (self._accept_task, self._sweep_task):
            if task:
                task.cancel()
        if self._sock:
            self._sock.close()
        tasks = [c.task for c in self._conns if c.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*[t for t in (self._accept_task, self._sweep_task) if t], *tasks,
                             return_exceptions=True)
        # The closed connections' entries stay (closed): a backend call still running on one
        # gets PeerGone, never None.
        self._accept_task = self._sweep_task = self._sock = None

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(self._sock)
            except OSError as e:
                # EMFILE/ENFILE/ENOBUFS: the connection stays in the backlog; pause rather than
                # spin on a socket that is always readable (as asyncio's own servers do).
                self._log.debug("API TLS front: accept: %s", e)
                await asyncio.sleep(1.0)
                continue
            try:
                self._admit(loop, sock, addr)
            except Exception as e:        # never let one connection stop the accepting
                self._log.debug("API TLS front: accept %s: %s: %s", addr, type(e).__name__, e)
                sock.close()

    def _admit(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, addr) -> None:
        remote = _format_addr(addr)
        if len(self._conns) >= self.max_connections:
            self._log.debug("API TLS front: %d connections open, closing %s at once",
                            len(self._conns), remote)
            sock.close()
            return
        conn = _Conn(remote=remote, last_io=loop.time())
        self._conns.add(conn)
        conn.task = asyncio.create_task(self._serve(conn, sock), name=f"api-tls {remote}")

    async def _sweep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(0.05, min(self.idle_timeout / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in list(self._conns):
                if now - conn.last_io > self.idle_timeout and conn.task:
                    conn.task.cancel()
            for key, until in list(self._quarantined.items()):
                if now >= until:
                    del self._quarantined[key]
                    if self._ids.get(key, 0) is None:
                        del self._ids[key]

    async def _serve(self, conn: _Conn, sock: socket.socket) -> None:
        client_w = backend_w = None
        key = None
        clean = False
        try:
            client_r, client_w = await self._handshake(conn, sock)
            if client_w is None:
                return
            ident = self._identity_of(conn, client_w)
            dialled = await self._dial_backend(conn)
            if dialled is None:
                return
            backend_r, backend_w, key = dialled
            self._ids[key] = ident       # before the first byte reaches the backend
            await self._relay(conn, client_r, client_w, backend_r, backend_w)
            clean = True
        except asyncio.CancelledError:
            pass                          # idle, or stop(): just close
        except ConnectionError:
            pass                          # a reset or a broken pipe: how many clients leave
        except Exception as e:            # one connection's trouble never reaches the others
            self._log.debug("API TLS front: connection from %s: %s: %s", conn.remote,
                            type(e).__name__, e)
        finally:
            if key is not None:
                # Quarantine the port before closing, so a reused port never maps to this client.
                self._ids[key] = None
                self._quarantined[key] = asyncio.get_running_loop().time() + self.port_quarantine
            for w in (backend_w, client_w):
                if w is None:
                    continue
                if clean:
                    w.close()             # flush what is buffered (TLS: close_notify too)
                else:
                    w.transport.abort()   # idle, reset, stop(): nobody waits for the rest
            # A failed handshake has closed its socket (asyncio closes the transport it made).
            self._conns.discard(conn)

    async def _handshake(self, conn: _Conn, sock: socket.socket):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self._ctx,
                ssl_handshake_timeout=self.handshake_timeout)
        except (OSError, asyncio.TimeoutError, EOFError) as e:
            self._log.debug("API TLS front: TLS handshake with %s failed: %s", conn.remote,
                            _why(e))
            return None, None
        conn.last_io = loop.time()
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    def _identity_of(self, conn: _Conn, client_w: asyncio.StreamWriter) -> ClientIdentity:
        tls: ssl.SSLObject = client_w.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True)
        if not der:
            return ClientIdentity(remote=conn.remote)
        # With verify_mode CERT_OPTIONAL a certificate reaching here has chained to --client-ca
        # (the handshake fails otherwise), so OpenSSL decodes it for us.
        decoded = tls.getpeercert() or {}
        common_name, organizations = _subject(decoded)
        issuer_window = self._ca_windows.get(decoded.get("issuer"), (None, None))
        return ClientIdentity(
            remote=conn.remote, cert_der=der, cert_pem=ssl.DER_cert_to_PEM_cert(der),
            verified_chain=bool(decoded), common_name=common_name, organizations=organizations,
            not_before=_cert_time(decoded.get("notBefore")),
            not_after=_cert_time(decoded.get("notAfter")),
            issuer_not_before=issuer_window[0], issuer_not_after=issuer_window[1])

    async def _dial_backend(self, conn: _Conn):
        """A fresh TCP connection to the backend from a privileged source port (below 1024:
        only root can bind one, so no local user can dial the backend from a port the front
        might map; identity() ignores every other port) that no client (live or recently
        closed) is mapped to: (reader, writer, local key), or None after logging why."""
        for _ in range(_BACKEND_DIAL_ATTEMPTS):
            port = random.randrange(PRIVILEGED_PORTS[0], PRIVILEGED_PORTS[1])
            if (ipaddress.ip_address(self.backend_host), port) in self._ids:
                continue
            try:
                reader, writer = await within(
                    asyncio.open_connection(self.backend_host, self.backend_port, limit=CHUNK,
                                            local_addr=(self.backend_host, port)),
                    _BACKEND_CONNECT_TIMEOUT)
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    continue              # that source port is taken: another
                self._log.debug("API TLS front: connect to the API backend %s:%d for %s: %s",
                                self.backend_host, self.backend_port, conn.remote, _why(e))
                return None
            except asyncio.TimeoutError as e:
                self._log.debug("API TLS front: connect to the API backend %s:%d for %s: %s",
                                self.backend_host, self.backend_port, conn.remote, _why(e))
                return None
            local = writer.get_extra_info("sockname")
            key = (ipaddress.ip_address(local[0]), local[1])
            if key not in self._ids:
                return reader, writer, key
            writer.transport.abort()      # a quarantined port: dial again
        self._log.debug("API TLS front: no free local port to the API backend for %s",
                        conn.remote)
        return None

    async def _relay(self, conn: _Conn, client_r, client_w, backend_r, backend_w) -> None:
        up = asyncio.create_task(self._pump(conn, client_r, backend_w))
        down = asyncio.create_task(self._pump(conn, backend_r, client_w))
        try:
            done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if up in done and up.exception() is None and not down.done():
                # The client half-closed: pass the EOF on and let the backend finish its answer
                # (TLS cannot half-close, so the other way round ends the connection).
                try:
                    backend_w.write_eof()
                except OSError:
                    return                # the backend is gone too (ENOTCONN): close both
                await down
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    @staticmethod
    async def _pump(conn: _Conn, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            conn.last_io = loop.time()
            writer.write(data)
            await writer.drain()
