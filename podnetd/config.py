"""podnetd's command line and config file. Config file keys mirror the long flags
("pod-cidr" or "pod_cidr"); flags on the command line win over the file.

argparse parses; what the code reads are frozen dataclasses: the core's DaemonConfig (here) and
each feature's own (podnetd/features.py), gathered in Settings."""
import argparse
import ipaddress
import json
import os
import sys
import types
from dataclasses import dataclass
from typing import Any, Mapping

DEFAULT_SOCKET = "/run/podnet/podnetd.sock"
CNI_SOCKET_NAME = "cni.sock"  # the CNI relay's socket, next to --socket unless --cni-socket says
DEFAULT_STATE_DIR = "/var/lib/podnet"
DEFAULT_BRIDGE = "podnet0"
DEFAULT_RECONCILE_INTERVAL = 5.0


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class DaemonConfig:
    """The core's configuration (IPAM, bridge, endpoints, sockets, metrics, logging)."""
    node_name: str
    pod_cidr: str | None  # normalised; None only when a feature may lease one (--store etcd)
    socket: str
    cni_socket: str
    state_dir: str
    bridge: str
    mtu: int | None       # None: the uplink's (or what the cluster decides)
    metrics_listen: str   # "" turns the metrics endpoint off
    log_level: str
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL  # kernel drift repairs (firewall, routes)


@dataclass(frozen=True)
class Settings:
    """What `podnetd` was asked to do: the core's config and each feature's (None: off)."""
    daemon: DaemonConfig
    features: Mapping[str, Any]

    def feature(self, name: str):
        return self.features[name]


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(text)
    return value


positive_float.__name__ = "positive number"  # argparse says "invalid positive number value"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2
        sys.stderr.write(f"podnetd: error: {message}\n")
        sys.exit(2)


def build_parser(features=()) -> argparse.ArgumentParser:
    p = _Parser(prog="podnetd", description="podnet node daemon")
    p.add_argument("--config", help="config file (YAML or JSON) whose keys mirror these flags")
    p.add_argument("--node-name", help="this node's name (default: the hostname)")
    p.add_argument("--pod-cidr", help="this node's pod CIDR, e.g. 10.244.1.0/24")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="unix socket of the API (mode 0600)")
    p.add_argument("--cni-socket", help="unix socket of the CNI plugin relay (mode 0600; "
                   f"default: {CNI_SOCKET_NAME} next to --socket)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="where IPAM and pod state live")
    p.add_argument("--bridge", default=DEFAULT_BRIDGE, help="the pod bridge's name")
    p.add_argument("--mtu", type=int, help="pod MTU (default: the uplink's MTU)")
    p.add_argument("--metrics-listen", default="127.0.0.1:9633",
                   help="HOST:PORT of the Prometheus metrics endpoint ('' turns it off)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--reconcile-interval", type=positive_float, default=DEFAULT_RECONCILE_INTERVAL,
                   help="seconds between kernel drift repairs (default 5)")
    # A feature that can lease the pod CIDR (the cluster's etcd store) sets this to True.
    p.set_defaults(allow_leased_cidr=False)
    for feature in features:
        if feature.add_flags:
            feature.add_flags(p)
    return p


def _load_file(path: str, parser: argparse.ArgumentParser) -> dict:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is one clear line
        raise ConfigError(f"config file {path}: cannot parse: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of flag names to values")
    known = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in known:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        action = known[dest]
        if action.type and value is not None and not isinstance(value, bool):
            try:
                value = action.type(value)
            except (TypeError, ValueError):
                raise ConfigError(f"config file {path}: {key}: invalid value {value!r}") from None
        if action.choices and value not in action.choices:
            raise ConfigError(f"config file {path}: {key}: {value!r} is not one of {list(action.choices)}")
        values[dest] = value
    return values


def cni_socket_for(api_socket: str) -> str:
    """The CNI relay socket of a podnetd started with --socket api_socket and no --cni-socket."""
    return os.path.join(os.path.dirname(api_socket), CNI_SOCKET_NAME)


def daemon_config(ns: argparse.Namespace) -> DaemonConfig:
    """The core's checks of the parsed flags."""
    if not ns.pod_cidr and not ns.allow_leased_cidr:
        raise ConfigError("--pod-cidr is required")
    pod_cidr = None
    if ns.pod_cidr:
        try:
            net = ipaddress.ip_network(ns.pod_cidr, strict=True)
        except ValueError as e:
            raise ConfigError(f"--pod-cidr {ns.pod_cidr}: {e}") from None
        if net.version != 4 or net.prefixlen > 30:
            raise ConfigError(f"--pod-cidr {ns.pod_cidr}: need an IPv4 network of /30 or larger")
        pod_cidr = str(net)
    if ns.mtu is not None and not 576 <= ns.mtu <= 65535:
        raise ConfigError(f"--mtu {ns.mtu}: must be between 576 and 65535")
    if not ns.bridge or len(ns.bridge) > 15 or "/" in ns.bridge or " " in ns.bridge:
        raise ConfigError(f"--bridge {ns.bridge!r}: not a valid interface name")
    if ns.metrics_listen:
        from .metrics import split_listen
        try:
            split_listen(ns.metrics_listen)
        except ValueError as e:
            raise ConfigError(f"--metrics-listen {e}") from None
    if not os.path.isabs(ns.socket):
        raise ConfigError(f"--socket {ns.socket}: must be an absolute path")
    cni_socket = ns.cni_socket or cni_socket_for(ns.socket)
    if not os.path.isabs(cni_socket) or cni_socket == ns.socket:
        raise ConfigError(f"--cni-socket {cni_socket}: must be an absolute path other than --socket")
    return DaemonConfig(
        node_name=ns.node_name or os.uname().nodename, pod_cidr=pod_cidr, socket=ns.socket,
        cni_socket=cni_socket, state_dir=ns.state_dir, bridge=ns.bridge, mtu=ns.mtu,
        metrics_listen=ns.metrics_listen or "", log_level=ns.log_level,
        reconcile_interval=ns.reconcile_interval)


def settings(ns: argparse.Namespace, features) -> Settings:
    """The core's config, then every feature's (in order; each raises ConfigError)."""
    daemon = daemon_config(ns)
    configs = {}
    for feature in features:
        configs[feature.name] = feature.config(ns, daemon) if feature.config else None
    return Settings(daemon, types.MappingProxyType(configs))


def parse(argv: list[str] | None, features) -> Settings:
    """The command line (and --config file) checked by the core and by every feature
    (podnetd.features.FEATURES). A bad flag is one line on stderr and exit status 2."""
    parser = build_parser(features)
    first = parser.parse_args(argv)
    try:
        if first.config:
            parser.set_defaults(**_load_file(first.config, parser))
            first = parser.parse_args(argv)
        return settings(first, features)
    except ConfigError as e:
        parser.error(str(e))
