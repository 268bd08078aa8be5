"""podnet: the CNI plugin binary, a thin client of the local podnetd (portable build).

It parses the network config (for the two keys it needs itself: "socket" and "cniVersion", read at
the top level only), hands the invocation to podnetd's CNI relay socket and prints what the daemon
answers. The daemon validates and does the work. The relay protocol is in docs/cni-relay.md:
length-prefixed frames, one request and one answer per connection, every length bounded.

It runs once per pod operation and podman runs VERSION on every plugin for every command, so its
start-up cost is the plugin's latency: it runs under `python -I -S` and imports only built-in
modules, plus `_json`, the C scanner behind json.loads: importing `json` itself pulls in `re` and
costs ~6 ms here, the scanner ~0.4 ms. cni-plugin/podnet.c is the native build of the same relay.
"""
import _socket
import posix
import sys
import time

DEFAULT_SOCKET = "/run/podnet/cni.sock"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
MAGIC = b"PNR1"             # podnet relay protocol, version 1 (podnetd/cni_relay.py)
ENV_FIELDS = (b"CNI_COMMAND", b"CNI_CONTAINERID", b"CNI_NETNS", b"CNI_IFNAME")
MAX_ENV = 4096              # per CNI_* value
MAX_CONFIG = 4 << 20        # the network config on stdin
MAX_ANSWER = 1 + (1 << 20)  # exit code + stdout
MAX_DEPTH = 64              # levels of arrays and objects (the top-level object is 1)
MAX_SUN_PATH = 107          # sockaddr_un.sun_path, NUL excluded
CONNECT_TIMEOUT = 2.0       # connect, send, and the daemon's "accepted": down or wedged fails fast
CALL_TIMEOUT = 60.0         # the answer, once the relay has accepted the request

ERR_ENV = 4
ERR_DECODE = 6
ERR_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_UNAVAILABLE = 50        # STATUS: plugin not available


class PluginError(Exception):
    """An error the plugin reports itself: the spec's code, msg and details."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


class RelayUnavailable(Exception):
    """podnetd's relay could not be reached or gave no usable answer ("try again later")."""


# --- the network config -----------------------------------------------------------------------

def _unique_keys(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


class _Strict:
    """json.loads' settings for the scanner, minus what is not JSON (NaN/Infinity) or not JSON
    that every reader reads alike (duplicate keys: the last wins in Go and Python, the first
    in others), as podnetd refuses them (podnetd/cni.py)."""
    strict = True
    object_hook = None
    object_pairs_hook = _unique_keys
    parse_float, parse_int = float, int

    @staticmethod
    def parse_constant(name):
        raise ValueError(f"{name} is not JSON")


try:
    from _json import encode_basestring_ascii as _json_str, make_scanner as _make_scanner
    _scan = _make_scanner(_Strict)
except ImportError:  # an interpreter without the C accelerator: the json package, same settings
    import json
    _json_str = json.dumps
    _scan = json.JSONDecoder(parse_constant=_Strict.parse_constant,
                             object_pairs_hook=_unique_keys).raw_decode

_WHITESPACE = " \t\n\r"
_INT64 = (-1 << 63, (1 << 63) - 1)


def _scan_document(text: str):
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as e:
        raise ValueError(f"expecting a value at character {e.value}") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"extra data at character {end}")
    return value


class _TooDeep(Exception):
    pass


def _check_tree(config) -> None:
    """What jansson (the native build) refuses and Python's scanner takes, refused here too, so
    both builds accept the same configs: nesting over MAX_DEPTH, integers outside int64,
    numbers that overflow a double, U+0000 and unpaired surrogates in strings. Iterative: the
    depth is what is being checked."""
    stack = [(config, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise _TooDeep
            if isinstance(value, dict):
                for key in value:
                    _check_str(key)
                value = value.values()
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_str(value)
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                raise ValueError(f"integer {value} is outside the 64-bit range")
        elif isinstance(value, float) and abs(value) == float("inf"):
            raise ValueError("a number overflows a double")


def _check_str(s: str) -> None:
    if "\0" in s:
        raise ValueError("a string holds U+0000")
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds an unpaired surrogate (\\ud800-\\udfff)") from None


def _text_too_deep(raw: bytes) -> bool:
    """podnetd's depth check of the text (podnetd/cni.py json_depth_exceeds), for a text the
    scanner refused: a broken document is "too deep" when its brackets are, as in podnetd.
    Error path only, so `re` may be imported."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    import itertools
    import re
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    steps = re.sub(rb'"[^"]*"', b"", unescaped).translate(
        bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff"), bytes(set(range(256)) - set(b"[]{}")))
    return len(steps) > MAX_DEPTH and max(itertools.accumulate(memoryview(steps).cast("b"))) > MAX_DEPTH


def parse_config(raw: bytes) -> dict:
    """The network config as a dict, or PluginError code 6 (too large, not UTF-8, not JSON, not an
    object, too deep). Never recurses beyond the scanner's own bounded recursion."""
    if len(raw) > MAX_CONFIG:
        raise PluginError(ERR_DECODE, "the network configuration is too large",
                          f"more than {MAX_CONFIG} bytes; podnet accepts at most {MAX_CONFIG} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PluginError(ERR_DECODE, "cannot decode the network configuration",
                          f"not UTF-8: {e}") from None
    try:
        try:
            config = _scan_document(text)
        except SystemError:
            # Python 3.11's C scanner raises its JSONDecodeError through json.decoder and finds
            # nothing to raise when that module is not loaded (we skip it for speed): load it
            # and scan again for the real error
            import json.decoder  # noqa: F401
            config = _scan_document(text)
        _check_tree(config)
    except (RecursionError, _TooDeep):  # the scanner's recursion stops at ~1000 levels
        raise PluginError(ERR_DECODE, "the network configuration is nested too deeply",
                          f"podnet accepts at most {MAX_DEPTH} levels of arrays and objects") from None
    except ValueError as e:  # JSONDecodeError, a duplicate key, an integer of > 4300 digits
        if _text_too_deep(raw):
            raise PluginError(ERR_DECODE, "the network configuration is nested too deeply",
                              f"podnet accepts at most {MAX_DEPTH} levels of arrays and objects") from None
        raise PluginError(ERR_DECODE, "cannot decode the network configuration", str(e)) from None
    if not isinstance(config, dict):
        raise PluginError(ERR_DECODE, "the network configuration must be a JSON object",
                          f"got a JSON {type(config).__name__}")
    return config


def requested_version(config: dict) -> str:
    """The top-level cniVersion when we support it (errors are written in it), else the latest."""
    version = config.get("cniVersion")
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else LATEST


def relay_socket(config: dict) -> bytes:
    """The top-level "socket" (podnetd's CNI relay), or the default. Nested keys (prevResult,
    runtimeConfig, ...) are never looked at."""
    path = config.get("socket")
    if path is None or path == "":
        return DEFAULT_SOCKET.encode()
    if not isinstance(path, str):
        raise PluginError(ERR_CONFIG, "'socket' must be a string path")
    raw = path.encode("utf-8")
    if not path.startswith("/") or len(raw) > MAX_SUN_PATH:
        shown = path if len(raw) <= 200 else f"({len(raw)} bytes)"
        raise PluginError(ERR_CONFIG, "'socket' is not a usable socket path",
                          f"{shown}: an absolute path of at most {MAX_SUN_PATH} bytes")
    return raw

# --- the relay protocol ------------------------------------------------------------------------


def encode_request(env, config: bytes) -> bytes:
    body = bytearray()
    for key in ENV_FIELDS:
        value = env.get(key, b"")
        if len(value) > MAX_ENV:
            raise PluginError(ERR_ENV, f"{key.decode()} is longer than {MAX_ENV} bytes")
        body += len(value).to_bytes(4, "big") + value
    body += len(config).to_bytes(4, "big") + config
    return MAGIC + len(body).to_bytes(4, "big") + body


def decode_answer_length(header: bytes) -> int:
    length = int.from_bytes(header, "big")
    if not 1 <= length <= MAX_ANSWER:
        raise RelayUnavailable(f"malformed answer: length {length} is not 1-{MAX_ANSWER}")
    return length


def _recv_exact(sock, n: int, deadline: float, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise _socket.timeout
            sock.settimeout(left)
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except _socket.timeout:
            raise _socket.timeout(f"waiting for {what}") from None
        if not chunk:
            raise RelayUnavailable(f"podnetd closed the connection before {what}"
                                   f" ({len(buf)} of {n} bytes)")
        buf += chunk
    return bytes(buf)


def call(path: bytes, request: bytes) -> tuple[int, bytes]:
    """One invocation on podnetd's CNI relay -> (exit code, stdout)."""
    shown = path.decode("utf-8", "replace")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(path)
        sock.sendall(request)
        magic = _recv_exact(sock, 4, deadline, "the relay's greeting")
        if magic != MAGIC:
            answered = "".join("\\x%02x" % b for b in magic)
            raise PluginError(ERR_CONFIG, f"'socket' {shown} is not podnetd's CNI relay",
                              f"it answered {answered}; the relay listens on podnetd's --cni-socket "
                              f"(default {DEFAULT_SOCKET}), not on its gRPC --socket")
        deadline = time.monotonic() + CALL_TIMEOUT
        length = decode_answer_length(_recv_exact(sock, 4, deadline, "the answer"))
        answer = _recv_exact(sock, length, deadline, "the whole answer")
        return answer[0], answer[1:]
    except _socket.timeout as e:
        waiting_for = e.args[0] if e.args and e.args[0] != "timed out" else "sending the request"
        raise RelayUnavailable(f"podnetd's CNI relay at {shown} did not answer in time "
                               f"({waiting_for})") from None
    except OSError as e:
        raise RelayUnavailable(f"podnetd's CNI relay at {shown}: {e.strerror or e}") from None
    finally:
        sock.close()

# --- the plugin --------------------------------------------------------------------------------


def error_json(code: int, msg: str, details: str = "", version: str = LATEST) -> bytes:
    body = '{"cniVersion": %s, "code": %d, "msg": %s' % (_json_str(version), code, _json_str(msg))
    if details:
        body += ', "details": %s' % _json_str(details)
    return (body + "}\n").encode()


def version_json() -> bytes:
    versions = ", ".join('"%s"' % v for v in SUPPORTED_VERSIONS)
    return ('{"cniVersion": "%s", "supportedVersions": [%s]}\n' % (LATEST, versions)).encode()


def run(env, config: bytes) -> tuple[int, bytes]:
    """Handle one invocation: env maps bytes to bytes (posix.environ), config is stdin (read up
    to MAX_CONFIG + 1 bytes). Returns (exit code, stdout)."""
    command = env.get(b"CNI_COMMAND", b"")
    if command == b"VERSION":
        return 0, version_json()
    version = LATEST
    try:
        parsed = parse_config(config)
        version = requested_version(parsed)
        if not command:
            raise PluginError(ERR_ENV, "CNI_COMMAND is not set")
        path = relay_socket(parsed)
        request = encode_request(env, config)
        try:
            return call(path, request)
        except RelayUnavailable as e:
            code = ERR_UNAVAILABLE if command == b"STATUS" else ERR_TRY_AGAIN
            raise PluginError(code, "podnetd is not available", str(e)) from None
    except PluginError as e:
        if e.details:
            sys.stderr.write("podnet: %s: %s\n" % (e.msg, e.details))
        return 1, error_json(e.code, e.msg, e.details, version)


def read_stdin() -> bytes:
    """Up to MAX_CONFIG + 1 bytes (one more tells "too large" from "exactly the limit"), read
    from fd 0 itself: sys.stdin is None when the runtime closed it."""
    chunks, size = [], 0
    while size <= MAX_CONFIG:
        chunk = posix.read(0, MAX_CONFIG + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def main() -> int:
    env = posix.environ
    try:
        config = b"" if env.get(b"CNI_COMMAND") == b"VERSION" else read_stdin()
        exit_code, stdout = run(env, config)
    except OSError as e:
        sys.stderr.write("podnet: cannot read the network configuration: stdin: %s\n" % e.strerror)
        exit_code, stdout = 1, error_json(ERR_DECODE, "cannot read the network configuration",
                                          "stdin: %s" % e.strerror)
    if stdout and sys.stdout is not None:
        sys.stdout.buffer.write(stdout)
        sys.stdout.buffer.flush()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
