"""The CNI relay, daemon side: the unix socket the podnet plugin hands each invocation to.

The protocol (docs/cni-relay.md) is one request and one answer per connection, length-prefixed:

    request  = MAGIC, u32 length, then 5 fields (u32 length + bytes each): CNI_COMMAND,
               CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, the network config (stdin)
    answer   = MAGIC (sent as soon as the request is read), u32 length, u8 exit code, stdout

All integers are big-endian. Every length is bounded before anything is read into memory. The
codec below is pure; `CniRelay` serves it with asyncio and runs each invocation off the event
loop, because the handler talks to the kernel and to SQLite.
"""
import asyncio
import contextlib
import logging
import os
import select
import socket
import struct

from . import socket_dir

log = logging.getLogger(__name__)

MAGIC = b"PNR1"               # podnet relay, protocol version 1
ENV_FIELDS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
MAX_ENV = 4096                # per CNI_* value (PATH_MAX)
MAX_CONFIG = 4 << 20          # the network config, as in both plugin builds
MAX_STDOUT = 1 << 20          # what the plugin prints
MAX_REQUEST = len(ENV_FIELDS) * (4 + MAX_ENV) + 4 + MAX_CONFIG
MAX_ANSWER = 1 + MAX_STDOUT

MAX_CONNECTIONS = 128         # beyond that a connection is closed at once (plugin: "try again later")
REQUEST_TIMEOUT = 10.0        # from accept to the whole request read: the plugin writes it at once
WRITE_TIMEOUT = 10.0


class ProtocolError(ValueError):
    """A request or answer that breaks the framing or a bound."""


# --- the codec (pure) ------------------------------------------------------------------------


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def encode_request(command: bytes, container_id: bytes, netns: bytes, ifname: bytes,
                   config: bytes) -> bytes:
    fields = (command, container_id, netns, ifname)
    for name, value in zip(ENV_FIELDS, fields):
        if len(value) > MAX_ENV:
            raise ProtocolError(f"{name} is longer than {MAX_ENV} bytes")
    if len(config) > MAX_CONFIG:
        raise ProtocolError(f"the network configuration is larger than {MAX_CONFIG} bytes")
    body = b"".join(_u32(len(v)) + v for v in (*fields, config))
    return MAGIC + _u32(len(body)) + body


def request_length(header: bytes) -> int:
    """The body length from the 8-byte request header, checked against MAX_REQUEST."""
    if len(header) != 8 or header[:4] != MAGIC:
        raise ProtocolError(f"not a podnet CNI relay request (header {header[:8]!r})")
    length = int.from_bytes(header[4:8], "big")
    if length > MAX_REQUEST:
        raise ProtocolError(f"request of {length} bytes is over the {MAX_REQUEST}-byte limit")
    return length


def decode_request_body(body: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """-> (command, container_id, netns, ifname, config), each field within its bound."""
    values, pos = [], 0
    for name, limit in (*((n, MAX_ENV) for n in ENV_FIELDS), ("config", MAX_CONFIG)):
        if pos + 4 > len(body):
            raise ProtocolError(f"request ends before {name}")
        size = int.from_bytes(body[pos:pos + 4], "big")
        pos += 4
        if size > limit:
            raise ProtocolError(f"{name} of {size} bytes is over its {limit}-byte limit")
        if pos + size > len(body):
            raise ProtocolError(f"request ends inside {name}")
        values.append(body[pos:pos + size])
        pos += size
    if pos != len(body):
        raise ProtocolError(f"{len(body) - pos} bytes after the last field")
    return tuple(values)


def encode_answer(exit_code: int, stdout: bytes) -> bytes:
    """The answer without its MAGIC (which goes out earlier, see CniRelay)."""
    if not 0 <= exit_code <= 255:
        raise ProtocolError(f"exit code {exit_code} is not 0-255")
    if len(stdout) > MAX_STDOUT:
        raise ProtocolError(f"stdout of {len(stdout)} bytes is over the {MAX_STDOUT}-byte limit")
    return _u32(1 + len(stdout)) + bytes((exit_code,)) + stdout


def decode_answer(data: bytes) -> tuple[int, bytes]:
    """A whole answer, MAGIC included -> (exit code, stdout). For tests and other clients."""
    if data[:4] != MAGIC:
        raise ProtocolError("not a podnet CNI relay answer")
    if len(data) < 9:
        raise ProtocolError("answer is truncated")
    length = int.from_bytes(data[4:8], "big")
    if not 1 <= length <= MAX_ANSWER:
        raise ProtocolError(f"answer length {length} is out of bounds")
    if len(data) != 8 + length:
        raise ProtocolError(f"answer of {len(data) - 8} bytes announced {length}")
    return data[8], data[9:]


# --- the server ------------------------------------------------------------------------------


class RelaySocketError(Exception):
    """The relay socket cannot be served (in use, not a socket, cannot bind)."""


def _internal_error(message: str) -> bytes:
    # the daemon could not produce an answer: the spec's error JSON, code 999
    import json
    return (json.dumps({"cniVersion": "1.1.0", "code": 999, "msg": message}) + "\n").encode()


def _peer(writer) -> str:
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
        return f"pid {pid} uid {uid}"
    except (OSError, AttributeError):
        return "unknown peer"


def _peer_gone(reader, writer) -> bool:
    """Whether the plugin has closed its end. It keeps the connection open until the answer, so
    an end-of-file before that means it gave up (its timeout: a wedged or stopped podnetd); the
    runtime has reported the failure and may already have sent DEL, so the command must not run
    behind its back."""
    if reader.at_eof():
        return True
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()  # does not consume: tells a queued end-of-file from more data
    poller.register(sock.fileno(), select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR)
               for _, events in poller.poll(0))


def bind_socket(path: str) -> socket.socket:
    """A listening unix socket at path, mode 0600 from birth, in a root-only 0700 directory
    (socket_dir). A leftover socket of a dead daemon is replaced; a live one, or anything that
    is not a socket, is refused."""
    try:
        socket_dir.prepare(path, "CNI relay socket")
    except (socket_dir.InsecureSocketDir, socket_dir.SocketPathTaken) as e:
        raise RelaySocketError(str(e)) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_dir.private_umask():  # born 0600: no moment where others may connect
            sock.bind(path)
    except OSError as e:
        sock.close()
        raise RelaySocketError(f"CNI relay socket {path}: {e.strerror or e}") from None
    os.chmod(path, 0o600)
    sock.listen(MAX_CONNECTIONS)
    sock.setblocking(False)
    return sock


class CniRelay:
    """Serves the relay protocol on `path`; handle(command, container_id, netns, ifname, config)
    -> (exit code, stdout) runs in the default executor."""

    def __init__(self, path: str, handle, *, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT, write_timeout: float = WRITE_TIMEOUT):
        self.path, self.handle = path, handle
        self.max_connections = max_connections
        self.request_timeout, self.write_timeout = request_timeout, write_timeout
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        sock = bind_socket(self.path)
        self._server = await asyncio.start_unix_server(self._accept, sock=sock)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, give running invocations `grace` seconds, then drop the rest."""
        if self._server is None:
            return
        self._server.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.max_connections:
            log.warning("CNI relay: %d invocations running, refusing %s", len(self._tasks),
                        _peer(writer))
            writer.close()
            return
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:  # stop() after its grace period; the handler's thread goes on
            log.warning("CNI relay: stopping, an invocation from %s gets no answer", _peer(writer))
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader, writer) -> None:
        try:
            async with asyncio.timeout(self.request_timeout):
                length = request_length(await reader.readexactly(8))
                fields = decode_request_body(await reader.readexactly(length))
        except ProtocolError as e:
            log.warning("CNI relay: bad request from %s: %s", _peer(writer), e)
            return
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as e:
            log.warning("CNI relay: incomplete request from %s: %s", _peer(writer),
                        "timed out" if isinstance(e, TimeoutError) else "connection closed")
            return
        command, container_id, netns, ifname, config = fields
        env = [v.decode("utf-8", "surrogateescape") for v in (command, container_id, netns, ifname)]
        if _peer_gone(reader, writer):
            log.warning("CNI relay: %r %r/%r from %s: the plugin gave up before it was read; "
                        "not run", env[0], env[1][:12], env[3], _peer(writer))
            return
        writer.write(MAGIC)  # accepted: the plugin now waits for the command, not for us
        try:
            exit_code, stdout = await asyncio.get_running_loop().run_in_executor(
                None, self.handle, *env, config)
            answer = encode_answer(exit_code, stdout)
        except Exception as e:  # noqa: BLE001 - a bug in a handler still gets an answer
            log.exception("CNI relay: %r %r/%r failed", env[0], env[1][:12], env[3])
            answer = encode_answer(1, _internal_error(f"podnetd failed: {type(e).__name__}: {e}"
                                                      [:MAX_STDOUT // 2]))
        try:
            writer.write(answer)
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            log.warning("CNI relay: %r %r/%r: the plugin left before its answer", env[0],
                        env[1][:12], env[3])
