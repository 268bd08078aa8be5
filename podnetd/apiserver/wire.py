"""The cluster API feature of podnetd (podnetd/features.py): its flags, the component, and
podnet.api.v1 on the local socket (root = cluster admin, `system:admin` in `system:masters`)."""
import os

from .. import config
from ..cluster.flags import cluster_enabled
from ..errors import StartupError
from ..wiring import DaemonContext, Feature
from . import authn, service
from .component import ApiServerComponent, ApiServerConfig


def add_flags(p) -> None:
    g = p.add_argument_group("cluster API")
    g.add_argument("--api-listen", help="HOST:PORT where the cluster API is served over TLS "
                                        "(--tls-cert/--tls-key); default: the local socket only")
    g.add_argument("--client-ca", help="CA whose client certificates authenticate users "
                                       "(CN = user, O = groups)")
    g.add_argument("--token-auth-file", help="bearer tokens, CSV: token,user,uid,\"group1,group2\"")
    g.add_argument("--audit-log", help="one JSON line per request that changes something or "
                                       "is denied")


def _file(path: str | None, flag: str) -> str | None:
    if path and not os.path.isfile(path):
        raise config.ConfigError(f"{flag} {path}: no such file")
    return path


def build_config(ns, daemon: config.DaemonConfig) -> ApiServerConfig | None:
    """The feature's config(): the cluster API's flags, with the cluster's --tls-cert/--tls-key
    (the TLS listener's certificate) and, with --store etcd, its etcd (None with --cleanup)."""
    if ns.cleanup:
        return None
    if ns.api_listen:
        host, sep, port = ns.api_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise config.ConfigError(f"--api-listen {ns.api_listen!r}: expected HOST:PORT")
        if not (ns.tls_cert and ns.tls_key):
            raise config.ConfigError("--api-listen serves TLS only: give --tls-cert and "
                                     "--tls-key")
        if not (ns.client_ca or ns.token_auth_file):
            raise config.ConfigError("--api-listen needs a way to authenticate users: "
                                     "--client-ca and/or --token-auth-file")
    if ns.audit_log and not os.path.isabs(ns.audit_log):
        raise config.ConfigError(f"--audit-log {ns.audit_log}: must be an absolute path")
    etcd = ()
    etcd_tls = None
    if cluster_enabled(ns) and ns.store == "etcd":
        etcd = tuple(u.strip() for u in ns.etcd_endpoints.split(",") if u.strip())
        if ns.etcd_cafile or ns.etcd_certfile:
            etcd_tls = (ns.etcd_cafile, ns.etcd_certfile, ns.etcd_keyfile)
    return ApiServerConfig(
        node_name=daemon.node_name, state_dir=daemon.state_dir, api_listen=ns.api_listen or None,
        tls_cert=ns.tls_cert, tls_key=ns.tls_key,
        client_ca=_file(ns.client_ca, "--client-ca"),
        token_auth_file=_file(ns.token_auth_file, "--token-auth-file"),
        audit_log=ns.audit_log, etcd_endpoints=etcd, etcd_tls=etcd_tls)


def make_component(ctx: DaemonContext, cfg: ApiServerConfig) -> ApiServerComponent:
    try:
        return ApiServerComponent(cfg)
    except (authn.TokenFileError, OSError, ValueError) as e:
        raise StartupError(f"cluster API: {e}") from None


def register_service(server, ctx: DaemonContext, component) -> list[str]:
    if component is None:
        return []
    return service.register(server, component.api, component.access.local)


FEATURE = Feature("apiserver", add_flags=add_flags, config=build_config,
                  component=make_component, services=register_service)
