"""podnet: the CNI plugin binary, a thin client of the local podnetd.

It relays the invocation (CNI_* environment and the network config on stdin) to podnetd's
podnet.v1.Cni/Invoke over the daemon's unix socket and prints what the daemon answers. The
daemon parses, validates and formats; this file only moves bytes.

It runs once per pod operation and podman runs VERSION on every plugin for every command, so
its start-up cost is the plugin's latency: it is installed with `python -I -S` and imports only
built-in modules (posix, sys, _socket). That rules out grpcio (~100 ms to import), protobuf and
even json (~17 ms): HTTP/2, HPACK and the two protobuf messages are spoken by hand below, just
the subset a single unary gRPC call needs.
"""
import _socket
import posix
import sys

DEFAULT_SOCKET = "/run/podnet/podnetd.sock"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
METHOD = b"/podnet.v1.Cni/Invoke"
CONNECT_TIMEOUT = 2.0   # daemon down or wedged: fail fast (the spec's "try again later")
CALL_TIMEOUT = 60.0     # the whole call; the daemon is told the same deadline
ERR_TRY_AGAIN = 11
ERR_UNAVAILABLE = 50    # STATUS: plugin not available
ERR_ENV = 4
ERR_DECODE = 6

# CniRequest field numbers (proto/podnet/v1/node.proto); tests check them against the stubs.
ENV_FIELDS = ((1, b"CNI_COMMAND"), (2, b"CNI_CONTAINERID"), (3, b"CNI_NETNS"),
              (4, b"CNI_IFNAME"), (5, b"CNI_ARGS"), (6, b"CNI_PATH"))
CONFIG_FIELD = 7

# --- protobuf, the two messages we need -------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_request(env: dict, config: bytes) -> bytes:
    out = bytearray()
    for field, key in ENV_FIELDS:
        value = env.get(key, b"")
        if value:
            out += _varint(field << 3 | 2) + _varint(len(value)) + value
    if config:
        out += _varint(CONFIG_FIELD << 3 | 2) + _varint(len(config)) + config
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def decode_response(buf: bytes) -> tuple[int, bytes]:
    """CniResponse -> (exit_code, stdout); unknown fields are skipped."""
    exit_code, stdout, pos = 0, b"", 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            if field == 1:
                exit_code = value - (1 << 64) if value >= 1 << 63 else value
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if field == 2:
                stdout = buf[pos:pos + size]
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError("bad wire type %d" % wire)
    return exit_code, stdout

# --- HTTP/2 + HPACK, one unary call on a fresh connection ----------------------------------


DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
MAX_FRAME = 16384
OUR_WINDOW = 1 << 20
END_STREAM, END_HEADERS, PADDED, PRIORITY, ACK = 0x1, 0x4, 0x8, 0x20, 0x1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags)) + stream.to_bytes(4, "big") + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    return bytes((first | limit,)) + _varint(value - limit)


def _hpack_str(s: bytes) -> bytes:
    return _hpack_int(len(s), 7, 0) + s


def request_headers(timeout_s: int) -> bytes:
    # Static table indices (RFC 7541 appendix A): 3 ":method POST", 6 ":scheme http",
    # 4 ":path", 1 ":authority", 31 "content-type". Literals are sent without indexing.
    return (b"\x83\x86" + _hpack_int(4, 4, 0) + _hpack_str(METHOD)
            + _hpack_int(1, 4, 0) + _hpack_str(b"localhost")
            + _hpack_int(31, 4, 0) + _hpack_str(b"application/grpc")
            + b"\x00" + _hpack_str(b"te") + _hpack_str(b"trailers")
            + b"\x00" + _hpack_str(b"grpc-timeout") + _hpack_str(b"%dS" % timeout_s))


def _hpack_read_int(buf: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    limit = (1 << prefix_bits) - 1
    value = buf[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    extra, pos = _read_varint(buf, pos)
    return value + extra, pos


def _hpack_read_str(buf: bytes, pos: int) -> tuple[bytes, int]:
    huffman = buf[pos] & 0x80
    size, pos = _hpack_read_int(buf, pos, 7)
    raw = buf[pos:pos + size]
    return (b"?" if huffman else raw), pos + size


def decode_headers(block: bytes, table: list) -> dict:
    """A small HPACK decoder: enough to find grpc-status and grpc-message. Huffman-coded strings
    are not decoded (they read as '?'); names we need are never in the static table, so static
    references only need a placeholder."""
    out, pos = {}, 0
    while pos < len(block):
        b = block[pos]
        if b & 0x80:                      # indexed field
            index, pos = _hpack_read_int(block, pos, 7)
            if index > 61 and index - 62 < len(table):
                name, value = table[index - 62]
                out[name] = value
            continue
        if b & 0xE0 == 0x20:              # dynamic table size update
            _, pos = _hpack_read_int(block, pos, 5)
            continue
        incremental = b & 0xC0 == 0x40
        index, pos = _hpack_read_int(block, pos, 6 if incremental else 4)
        if index == 0:
            name, pos = _hpack_read_str(block, pos)
        elif index > 61 and index - 62 < len(table):
            name = table[index - 62][0]
        else:
            name = b":static"
        value, pos = _hpack_read_str(block, pos)
        if incremental:
            table.insert(0, (name, value))
        out[name] = value
    return out


class CallError(Exception):
    def __init__(self, message: str, reachable: bool):
        super().__init__(message)
        self.reachable = reachable


def _recv_exact(sock, n: int, buf: bytearray) -> bytes:
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise CallError("podnetd closed the connection", True)
        buf += chunk
    data = bytes(buf[:n])
    del buf[:n]
    return data


def invoke(socket_path: str, request: bytes, timeout: float = CALL_TIMEOUT) -> bytes:
    """One unary gRPC call to podnet.v1.Cni/Invoke; returns the CniResponse bytes."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(socket_path)
        except OSError as e:
            raise CallError("cannot reach podnetd at %s: %s" % (socket_path, e.strerror or e), False)
        call = _Call(sock, b"\x00" + len(request).to_bytes(4, "big") + request, timeout)
        # our SETTINGS raise the stream window and a WINDOW_UPDATE the connection's, so the
        # reply never waits on us
        call.out += (PREFACE + _frame(SETTINGS, 0, 0, (4).to_bytes(2, "big") + OUR_WINDOW.to_bytes(4, "big"))
                     + _frame(WINDOW_UPDATE, 0, 0, (OUR_WINDOW - 65535).to_bytes(4, "big"))
                     + _frame(HEADERS, END_HEADERS, 1, request_headers(max(1, int(timeout)))))
        return call.run()
    except _socket.timeout:
        raise CallError("podnetd at %s did not answer in time" % socket_path, False)
    except OSError as e:
        raise CallError("talking to podnetd at %s: %s" % (socket_path, e.strerror or e), False)
    finally:
        sock.close()


class _Call:
    """The request body goes out as flow control allows (frames of at most 16 KiB within the
    peer's windows); the reply is read frame by frame until the stream ends."""

    def __init__(self, sock, message: bytes, timeout: float):
        self.sock, self.message, self.timeout = sock, message, timeout
        self.out = bytearray()
        self.sent = 0
        self.conn_window = self.stream_window = 65535
        self.buf, self.body, self.trailers, self.table = bytearray(), bytearray(), {}, []
        self.block = bytearray()

    def _queue_data(self) -> None:
        while self.sent < len(self.message) and self.conn_window > 0 and self.stream_window > 0:
            n = min(len(self.message) - self.sent, MAX_FRAME, self.conn_window, self.stream_window)
            last = self.sent + n == len(self.message)
            self.out += _frame(DATA, END_STREAM if last else 0, 1, self.message[self.sent:self.sent + n])
            self.sent += n
            self.conn_window -= n
            self.stream_window -= n

    def run(self) -> bytes:
        greeted = ended = False
        while True:
            self._queue_data()
            if self.out:
                self.sock.sendall(bytes(self.out))
                self.out.clear()
            if ended:
                break
            head = _recv_exact(self.sock, 9, self.buf)
            size = (head[0] << 16) | (head[1] << 8) | head[2]
            kind, flags = head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = _recv_exact(self.sock, size, self.buf)
            if not greeted:
                greeted = True            # the daemon is alive: allow the call its full time
                self.sock.settimeout(self.timeout)
            self._handle(kind, flags, stream, payload)
            ended = stream == 1 and kind in (DATA, HEADERS) and bool(flags & END_STREAM)
        status = self.trailers.get(b"grpc-status", b"0")
        if status != b"0" or len(self.body) < 5:
            message = self.trailers.get(b"grpc-message", b"").decode("utf-8", "replace")
            raise CallError("podnetd refused the call: grpc-status %s %s"
                            % (status.decode("ascii", "replace"), message), True)
        length = int.from_bytes(self.body[1:5], "big")
        return bytes(self.body[5:5 + length])

    def _handle(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                if int.from_bytes(payload[i:i + 2], "big") == 4:   # INITIAL_WINDOW_SIZE
                    self.stream_window += int.from_bytes(payload[i + 2:i + 6], "big") - 65535
            self.out += _frame(SETTINGS, ACK, 0, b"")
        elif kind == PING and not flags & ACK:
            self.out += _frame(PING, ACK, 0, payload)
        elif kind == WINDOW_UPDATE and len(payload) == 4:
            increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if stream == 0:
                self.conn_window += increment
            elif stream == 1:
                self.stream_window += increment
        elif kind == GOAWAY and stream == 0 and not self.body:
            code = int.from_bytes(payload[4:8], "big")
            raise CallError("podnetd closed the connection (GOAWAY %d)" % code, True)
        elif stream != 1:
            return
        elif kind == RST_STREAM:
            raise CallError("podnetd reset the call (code %d)" % int.from_bytes(payload, "big"), True)
        elif kind == DATA:
            self.body += _strip_padding(payload, flags)
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                payload = _strip_padding(payload, flags)
                if flags & PRIORITY:
                    payload = payload[5:]
            self.block += payload
            if flags & END_HEADERS:
                self.trailers.update(decode_headers(bytes(self.block), self.table))
                self.block.clear()


def _strip_padding(payload: bytes, flags: int) -> bytes:
    if flags & PADDED:
        pad = payload[0]
        return payload[1:len(payload) - pad]
    return payload

# --- the plugin -------------------------------------------------------------------------


def socket_from_config(config: bytes) -> str:
    """The optional "socket" key of the network config, found without a JSON parser (which
    would cost more than the whole call). Escaped strings fall back to the parser."""
    key = config.find(b'"socket"')
    if key < 0:
        return DEFAULT_SOCKET
    pos = key + 8
    while pos < len(config) and config[pos] in b" \t\r\n:":
        pos += 1
    if pos >= len(config) or config[pos] != 0x22:
        return DEFAULT_SOCKET  # not a string: the daemon at the default socket will say so
    end = config.find(b'"', pos + 1)
    value = config[pos + 1:end]
    if end < 0 or b"\\" in value:
        import json
        try:
            return str(json.loads(config).get("socket") or DEFAULT_SOCKET)
        except ValueError:
            return DEFAULT_SOCKET
    return value.decode("utf-8", "replace")


def _json_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " ":
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def error_json(code: int, msg: str, details: str = "", version: str = LATEST) -> bytes:
    body = '{"cniVersion": %s, "code": %d, "msg": %s' % (_json_str(version), code, _json_str(msg))
    if details:
        body += ', "details": %s' % _json_str(details)
    return (body + "}\n").encode()


def version_json() -> bytes:
    versions = ", ".join('"%s"' % v for v in SUPPORTED_VERSIONS)
    return ('{"cniVersion": "%s", "supportedVersions": [%s]}\n' % (LATEST, versions)).encode()


def _requested_version(config: bytes) -> str:
    key = config.find(b'"cniVersion"')
    if key >= 0:
        start = config.find(b'"', config.find(b":", key) + 1)
        end = config.find(b'"', start + 1)
        if 0 <= start < end:
            version = config[start + 1:end].decode("ascii", "replace")
            if version in SUPPORTED_VERSIONS:
                return version
    return LATEST


def _undecodable(config: bytes) -> str:
    import json  # error path only
    try:
        json.loads(config)
        return ""
    except ValueError as e:
        return str(e)


def run(env: dict, config: bytes) -> tuple[int, bytes]:
    """Handle one invocation; returns (exit code, stdout)."""
    command = env.get(b"CNI_COMMAND", b"")
    if command == b"VERSION":
        return 0, version_json()
    if not command:
        return 1, error_json(ERR_ENV, "CNI_COMMAND is not set", version=_requested_version(config))
    socket_path = socket_from_config(config)
    try:
        exit_code, stdout = decode_response(invoke(socket_path, encode_request(env, config)))
    except (CallError, ValueError, IndexError) as e:
        undecodable = _undecodable(config)  # the daemon would have said so; say it here
        if undecodable:
            return 1, error_json(ERR_DECODE, "cannot decode the network configuration", undecodable)
        code = ERR_UNAVAILABLE if command == b"STATUS" else ERR_TRY_AGAIN
        sys.stderr.write("podnet: %s\n" % e)
        return 1, error_json(code, "podnetd is not available", str(e), _requested_version(config))
    return exit_code, stdout


def main() -> int:
    env = posix.environ
    config = b"" if env.get(b"CNI_COMMAND") == b"VERSION" else sys.stdin.buffer.read()
    exit_code, stdout = run(env, config)
    if stdout:
        sys.stdout.buffer.write(stdout)
        sys.stdout.buffer.flush()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
