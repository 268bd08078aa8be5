"""The CNI protocol, daemon side: validate an invocation relayed by the plugin, run it against
the endpoint manager and format the result or the spec's error for the requested version."""
import json
import logging
import re

from .endpoints import AttachError, CheckFailed, Endpoints, UnknownContainer
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

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_BAD_IFNAME = re.compile(r"[/:\s]")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _version_tuple(v: str) -> tuple:
    return tuple(int(x) for x in v.split("."))


def error_output(err: CniError, version: str) -> bytes:
    body = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        body["details"] = err.details
    return (json.dumps(body) + "\n").encode()


def parse_config(raw: bytes) -> dict:
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(UNDECODABLE, "cannot decode the network configuration", str(e)) from None
    if not isinstance(config, dict):
        raise CniError(UNDECODABLE, "the network configuration must be a JSON object")
    return config


def validate_config(config: dict) -> str:
    """Check the keys we rely on; returns the requested cniVersion."""
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "cniVersion is missing from the network configuration")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI version {version}",
                       f"podnet supports {', '.join(SUPPORTED_VERSIONS)}")
    for key in ("name", "type"):
        if not isinstance(config.get(key), str) or not config.get(key):
            raise CniError(INVALID_CONFIG, f"'{key}' is missing from the network configuration")
    if "socket" in config and not isinstance(config["socket"], str):
        raise CniError(INVALID_CONFIG, "'socket' must be a string path")
    return version


def validate_env(command: str, container_id: str, netns: str, ifname: str) -> None:
    needs = {"ADD": ("id", "netns", "ifname"), "CHECK": ("id", "netns", "ifname"),
             "DEL": ("id", "ifname")}.get(command, ())
    values = {"id": container_id, "netns": netns, "ifname": ifname}
    env_names = {"id": "CNI_CONTAINERID", "netns": "CNI_NETNS", "ifname": "CNI_IFNAME"}
    for need in needs:
        if not values[need]:
            raise CniError(INVALID_ENV, f"{env_names[need]} is required for {command}")
    if container_id and not _CONTAINER_ID.match(container_id):
        raise CniError(INVALID_ENV, f"invalid CNI_CONTAINERID {container_id!r}",
                       "letters, digits, '_', '.', '-', starting with a letter or digit")
    if ifname and (len(ifname) > 15 or ifname in (".", "..") or _BAD_IFNAME.search(ifname)):
        raise CniError(INVALID_ENV, f"invalid CNI_IFNAME {ifname!r}",
                       "at most 15 characters, no '/', ':' or white space")


def format_result(record: Record, version: str, bridge: dict, gateway: str) -> dict:
    """The ADD result in the shape of the requested version (0.3.x/0.4.0 or 1.x)."""
    ip_entry = {"address": record.address, "gateway": gateway, "interface": 2}
    if _version_tuple(version) < (1, 0, 0):
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


class CniHandler:
    """Runs one CNI invocation synchronously (called off the event loop)."""

    def __init__(self, endpoints: Endpoints, bridge_facts, status):
        self.endpoints = endpoints
        self.bridge_facts = bridge_facts   # () -> {"name", "mac"}
        self.status = status               # () -> (ready: bool, message: str)

    def handle(self, command: str, container_id: str, netns: str, ifname: str,
               raw_config: bytes) -> tuple[int, bytes]:
        version = LATEST
        try:
            if command not in COMMANDS:
                raise CniError(INVALID_ENV, f"unknown CNI_COMMAND {command!r}",
                               f"expected one of {', '.join(COMMANDS)}")
            if command == "VERSION":
                return 0, (json.dumps({"cniVersion": LATEST,
                                       "supportedVersions": list(SUPPORTED_VERSIONS)}) + "\n").encode()
            config = parse_config(raw_config)
            if isinstance(config.get("cniVersion"), str) and config["cniVersion"] in SUPPORTED_VERSIONS:
                version = config["cniVersion"]
            version = validate_config(config)
            validate_env(command, container_id, netns, ifname)
            return 0, self._dispatch(command, version, config, container_id, netns, ifname)
        except CniError as e:
            log.info("CNI %s %s/%s: error %d: %s %s", command, container_id[:12], ifname,
                     e.code, e.msg, e.details)
            return 1, error_output(e, version)

    def _dispatch(self, command, version, config, container_id, netns, ifname) -> bytes:
        network = config["name"]
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
                if _version_tuple(version) < (0, 4, 0):
                    raise CniError(INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {version}")
                record = self.endpoints.check(container_id, ifname, netns)
                self._check_prev_result(config, record)
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
        except CheckFailed as e:
            raise CniError(INTERNAL, "check failed", str(e)) from None
        except PoolExhausted as e:
            raise CniError(TRY_AGAIN, "no free pod address", str(e)) from None
        except (AttachError, IpamError, KernelError) as e:
            raise CniError(INTERNAL, f"{command.lower()} failed", str(e)) from None
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND {command!r}")

    @staticmethod
    def _check_prev_result(config: dict, record: Record) -> None:
        prev = config.get("prevResult")
        if not isinstance(prev, dict):
            return
        addresses = [ip.get("address") for ip in prev.get("ips", []) if isinstance(ip, dict)]
        if addresses and record.address not in addresses:
            raise CniError(INTERNAL, "check failed",
                           f"prevResult has {addresses}, podnetd has {record.address}")
