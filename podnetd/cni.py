"""The CNI protocol, daemon side: validate an invocation relayed by the plugin, run it against
the endpoint manager and format the result or the spec's error for the requested version.

Everything the relay hands over is untrusted (the environment and stdin of a plugin that any
runtime, or anyone who can write a network config, starts): CniHandler.handle checks all of it,
so every relay gets the same checks, and answers bad input with the spec's error JSON and a
well-known code. 999 is left for genuine internal failures (the kernel or the store failing)."""
import dataclasses
import itertools
import json
import logging
import re

from .endpoints import (AttachError, CheckFailed, Endpoints, InterfaceExists, InvalidNetns,
                        UnknownContainer)
from .ipam import IpamError, PoolExhausted, Record
from .kernel.errors import KernelError

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# The spec's well-known error codes.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
UNDECODABLE = 6
INVALID_CONFIG = 7
TRY_AGAIN = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
INTERNAL = 999

# Limits on the network configuration. Real ones are a few KiB and a handful of levels deep
# (prevResult -> interfaces -> entry); the largest is a GC's list of valid attachments (~45
# bytes each, so 4 MiB is ~90,000 of them). The depth is checked before json.loads, whose
# recursion would otherwise end in a RecursionError.
MAX_CONFIG_BYTES = 4 << 20
MAX_JSON_DEPTH = 64

# The spec's container id: alphanumeric first, then alphanumerics, '_', '.', '-'; bounded here.
MAX_CONTAINER_ID = 255
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# The spec's network name has the same shape.
MAX_NETWORK_NAME = 255
_NETWORK_NAME = _CONTAINER_ID
MAX_NETNS_PATH = 4095  # PATH_MAX less the terminating NUL
# The kernel's dev_valid_name(): 1..15 bytes (IFNAMSIZ 16 with the NUL), not "." or "..", no
# '/', ':' or isspace() byte. The kernel's isspace() is Latin-1's: it also takes 0xA0, which
# UTF-8 uses as a continuation byte (e.g. in "à"). '%' is refused too: the kernel treats a name
# with '%' as a template ("eth%d" becomes eth0), so the pod would get another name than asked;
# and so are NUL and control characters, which the kernel cannot or should not be given.
IFNAME_MAX_BYTES = 15
_IFNAME_BAD_BYTES = frozenset(b"/:% \t\n\v\f\r\xa0") | frozenset(range(0x20)) | {0x7F}


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def shown(value, limit: int = 64) -> str:
    """A value for an error message or a log line: repr'd (no raw newline or escape from
    input reaches a log) and cut to limit characters, saying how long it was."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[:limit]}... ({size} long)"


def version_tuple(version) -> tuple:
    """"1.0.0" -> (1, 0, 0) for ordering CNI versions; () for anything that is not one (it
    sorts below every version)."""
    try:
        return tuple(int(x) for x in version.split("."))
    except (ValueError, AttributeError):
        return ()


def error_output(err: CniError, version: str) -> bytes:
    body = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        body["details"] = err.details
    return (json.dumps(body) + "\n").encode()


# -- the network configuration (stdin) ----------------------------------------------------------

_JSON_STRING = re.compile(rb'"[^"]*"')
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the JSON text nests arrays/objects deeper than limit, brackets inside strings
    not counted; in C-speed passes, as json.loads only runs after it. Escapes go first (pairs
    of backslashes, then escaped quotes: in JSON every backslash starts an escape, so the pairs
    line up from the start of each run), then whole strings, then all but the brackets, which
    become +1/-1 steps whose running sum is the depth. Exact for JSON (and for the valid
    prefix of a broken text, as deep as json.loads could get into it); it validates nothing.
    In UTF-8 these bytes never occur inside a multi-byte character."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    steps = _JSON_STRING.sub(b"", unescaped).translate(_BRACKET_STEPS, _NOT_A_BRACKET)
    if len(steps) <= limit:
        return False
    if b"\x01" * (limit + 1) in steps:   # the plain attack, found without the running sum
        return True
    return max(itertools.accumulate(memoryview(steps).cast("b"))) > limit


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _object_without_duplicates(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {shown(key)}")
            seen.add(key)
    return obj


def parse_config(raw: bytes) -> dict:
    """The network configuration as a dict, or CniError 6 for anything that is not one JSON
    object in UTF-8 within MAX_CONFIG_BYTES and MAX_JSON_DEPTH (NaN/Infinity and duplicate
    keys are not JSON a relay and the daemon could be trusted to read alike)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise CniError(UNDECODABLE, "cannot decode the network configuration",
                       f"expected bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > MAX_CONFIG_BYTES:
        raise CniError(UNDECODABLE, "the network configuration is too large",
                       f"{len(raw)} bytes; podnet accepts at most {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CniError(UNDECODABLE, "cannot decode the network configuration",
                       f"not UTF-8: {e}") from None
    if json_depth_exceeds(raw, MAX_JSON_DEPTH):
        raise CniError(UNDECODABLE, "the network configuration is nested too deeply",
                       f"podnet accepts at most {MAX_JSON_DEPTH} levels of arrays and objects")
    try:
        config = json.loads(text, parse_constant=_reject_constant,
                            object_pairs_hook=_object_without_duplicates)
    except ValueError as e:  # JSONDecodeError, a duplicate key, an integer of > 4300 digits
        raise CniError(UNDECODABLE, "cannot decode the network configuration", str(e)) from None
    if not isinstance(config, dict):
        raise CniError(UNDECODABLE, "the network configuration must be a JSON object",
                       f"got a JSON {type(config).__name__}")
    return config


@dataclasses.dataclass(frozen=True)
class NetConf:
    """The top-level keys podnetd reads; every other key, and anything nested in one (e.g. a
    "socket" inside prevResult), is ignored."""
    version: str
    name: str
    type: str


def requested_version(config: dict) -> str:
    """The cniVersion to answer in (errors included): the config's when podnet supports it."""
    version = config.get("cniVersion")
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else LATEST


def validate_config(config: dict) -> NetConf:
    """Check the top-level keys we rely on (cniVersion, name, type, socket)."""
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "cniVersion is missing from the network configuration")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI version {shown(version)}",
                       f"podnet supports {', '.join(SUPPORTED_VERSIONS)}")
    for key in ("name", "type"):
        if not isinstance(config.get(key), str) or not config.get(key):
            raise CniError(INVALID_CONFIG, f"'{key}' is missing from the network configuration")
    name = config["name"]
    if len(name) > MAX_NETWORK_NAME or not _NETWORK_NAME.fullmatch(name):
        raise CniError(INVALID_CONFIG, f"invalid network name {shown(name)}",
                       f"letters, digits, '_', '.', '-', starting with a letter or digit, at "
                       f"most {MAX_NETWORK_NAME} characters")
    if "socket" in config and not isinstance(config["socket"], str):
        raise CniError(INVALID_CONFIG, "'socket' must be a string path")
    return NetConf(version=version, name=name, type=config["type"])


def valid_attachments(config: dict) -> set[tuple[str, str]]:
    entries = config.get("cni.dev/valid-attachments", [])
    if not isinstance(entries, list):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    valid = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("containerID"), str) \
                or not isinstance(entry.get("ifname"), str):
            raise CniError(INVALID_CONFIG, f"cni.dev/valid-attachments[{i}] needs string "
                                           f"containerID and ifname")
        valid.add((entry["containerID"], entry["ifname"]))
    return valid


def prev_result_addresses(config: dict) -> list[str] | None:
    """The addresses of a CHECK's prevResult (None when there is none); CniError 7 when it is
    not shaped as a result."""
    if "prevResult" not in config or config["prevResult"] is None:
        return None
    prev = config["prevResult"]
    if not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult must be an object")
    ips = prev.get("ips", [])
    if not isinstance(ips, list):
        raise CniError(INVALID_CONFIG, "prevResult.ips must be a list")
    addresses = []
    for i, ip in enumerate(ips):
        if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
            raise CniError(INVALID_CONFIG, f"prevResult.ips[{i}] needs a string address")
        addresses.append(ip["address"])
    return addresses


# -- the environment (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME) ----------------------

def _utf8(name: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8 to begin with
        raise CniError(INVALID_ENV, f"invalid {name} {shown(value)}", "not valid UTF-8") from None


def ifname_problem(raw: bytes) -> str | None:
    """Why the kernel (or podnet) refuses this interface name, or None when it is fine."""
    if not 1 <= len(raw) <= IFNAME_MAX_BYTES:
        return f"{len(raw)} bytes; an interface name has 1 to {IFNAME_MAX_BYTES} bytes"
    if raw in (b".", b".."):
        return "'.' and '..' are not interface names"
    bad = sorted(set(raw) & _IFNAME_BAD_BYTES)
    if bad:
        return (f"byte(s) {', '.join(f'0x{b:02x}' for b in bad)} not allowed: no '/', ':', '%', "
                f"white space (0xa0 included) or control characters")
    return None


def validate_command(command) -> str:
    if not isinstance(command, str) or command not in COMMANDS:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND {shown(command)}",
                       f"expected one of {', '.join(COMMANDS)}")
    return command


def validate_env(command: str, container_id: str, netns: str, ifname: str) -> None:
    """CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME as the command needs them. Only their form is
    checked here; that CNI_NETNS is a pod's network namespace is checked when it is opened."""
    needs = {"ADD": ("id", "netns", "ifname"), "CHECK": ("id", "netns", "ifname"),
             "DEL": ("id", "ifname")}.get(command, ())
    values = {"id": container_id, "netns": netns, "ifname": ifname}
    env_names = {"id": "CNI_CONTAINERID", "netns": "CNI_NETNS", "ifname": "CNI_IFNAME"}
    for key, value in values.items():
        if not isinstance(value, str):
            raise CniError(INVALID_ENV, f"invalid {env_names[key]}: not a string",
                           f"got {type(value).__name__}")
    for need in needs:
        if not values[need]:
            raise CniError(INVALID_ENV, f"{env_names[need]} is required for {command}")
    if container_id and (len(container_id) > MAX_CONTAINER_ID
                         or not _CONTAINER_ID.fullmatch(container_id)):
        raise CniError(INVALID_ENV, f"invalid CNI_CONTAINERID {shown(container_id)}",
                       f"letters, digits, '_', '.', '-', starting with a letter or digit, at "
                       f"most {MAX_CONTAINER_ID} characters")
    if netns:
        raw = _utf8("CNI_NETNS", netns)
        if len(raw) > MAX_NETNS_PATH or not netns.startswith("/") or "\0" in netns:
            raise CniError(INVALID_ENV, f"invalid CNI_NETNS {shown(netns)}",
                           f"an absolute path of at most {MAX_NETNS_PATH} bytes")
    if ifname:
        problem = ifname_problem(_utf8("CNI_IFNAME", ifname))
        if problem:
            raise CniError(INVALID_ENV, f"invalid CNI_IFNAME {shown(ifname)}", problem)


# -- results ------------------------------------------------------------------------------------

def format_result(record: Record, version: str, bridge: dict, gateway: str) -> dict:
    """The ADD result in the shape of the requested version (0.3.x/0.4.0 or 1.x)."""
    ip_entry = {"address": record.address, "gateway": gateway, "interface": 2}
    if version_tuple(version) < (1, 0, 0):
        ip_entry = {"version": "4", **ip_entry}
    return {
        "cniVersion": version,
        "interfaces": [
            {"name": bridge["name"], "mac": bridge["mac"]},
            {"name": record.host_ifname, "mac": record.host_mac},
            {"name": record.ifname, "mac": record.mac, "sandbox": record.netns},
        ],
        "ips": [ip_entry],
        "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
        "dns": {},
    }


class CniHandler:
    """Runs one CNI invocation synchronously (called off the event loop)."""

    def __init__(self, endpoints: Endpoints, bridge_facts, status):
        self.endpoints = endpoints
        self.bridge_facts = bridge_facts   # () -> {"name", "mac"}
        self.status = status               # () -> (ready: bool, message: str)

    def handle(self, command: str, container_id: str, netns: str, ifname: str,
               raw_config: bytes) -> tuple[int, bytes]:
        """(exit code, stdout) for one invocation. Never raises: bad input is the spec's error
        JSON with its well-known code; an unexpected failure is logged and answered with 999."""
        version = LATEST
        try:
            validate_command(command)
            if command == "VERSION":
                return 0, (json.dumps({"cniVersion": LATEST,
                                       "supportedVersions": list(SUPPORTED_VERSIONS)}) + "\n").encode()
            config = parse_config(raw_config)
            version = requested_version(config)
            conf = validate_config(config)
            validate_env(command, container_id, netns, ifname)
            return 0, self._dispatch(command, conf, config, container_id, netns, ifname)
        except CniError as e:
            log.info("CNI %s %s/%s: error %d: %s %s", shown(command, 12), shown(container_id, 16),
                     shown(ifname, 20), e.code, e.msg, shown(e.details, 200))
            return 1, error_output(e, version)
        except Exception as e:  # noqa: BLE001 - a bug or a failure nobody foresaw: still an answer
            log.exception("CNI %s %s/%s: internal error", shown(command, 12),
                          shown(container_id, 16), shown(ifname, 20))
            return 1, error_output(CniError(INTERNAL, "podnetd internal error",
                                            f"{type(e).__name__}: {e}"), version)

    def _dispatch(self, command: str, conf: NetConf, config: dict, container_id: str, netns: str,
                  ifname: str) -> bytes:
        version, network = conf.version, conf.name
        try:
            if command == "ADD":
                record = self.endpoints.attach(container_id, ifname, netns, network)
                result = format_result(record, version, self.bridge_facts(),
                                       self.endpoints.node.gateway)
                return (json.dumps(result) + "\n").encode()
            if command == "DEL":
                self.endpoints.detach(container_id, ifname, netns)
                return b""
            if command == "CHECK":
                if version_tuple(version) < (0, 4, 0):
                    raise CniError(INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {version}")
                expected = prev_result_addresses(config)
                record = self.endpoints.check(container_id, ifname, netns)
                if expected and record.address not in expected:
                    raise CniError(INTERNAL, "check failed",
                                   f"prevResult has {expected}, podnetd has {record.address}")
                return b""
            if command == "STATUS":
                ready, message = self.status()
                if not ready:
                    raise CniError(NOT_AVAILABLE, "podnet is not ready", message)
                return b""
            if command == "GC":
                released = self.endpoints.gc(valid_attachments(config), network)
                log.info("GC of network %s released %d attachment(s)", network, len(released))
                return b""
        except UnknownContainer as e:
            raise CniError(UNKNOWN_CONTAINER, str(e)) from None
        except InvalidNetns as e:
            raise CniError(INVALID_ENV, f"invalid CNI_NETNS {shown(netns)}", str(e)) from None
        except InterfaceExists as e:
            raise CniError(INVALID_ENV, f"invalid CNI_IFNAME {shown(ifname)}: the container "
                                        f"already has an interface by that name", str(e)) from None
        except CheckFailed as e:  # the check's verdict, coded as the reference plugins code it
            raise CniError(INTERNAL, "check failed", str(e)) from None
        except PoolExhausted as e:
            raise CniError(TRY_AGAIN, "no free pod address", str(e)) from None
        except (AttachError, IpamError, KernelError) as e:
            raise CniError(INTERNAL, f"{command.lower()} failed", str(e)) from None
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND {shown(command)}")
