"""podnetctl's client config, shaped as a kubeconfig: clusters, users, contexts, current-context.

    apiVersion: v1
    kind: Config
    clusters:
    - name: lab
      cluster:
        server: https://10.0.0.1:6443        # or servers: [https://..., https://...]
        certificate-authority: ca.crt         # or certificate-authority-data: BASE64
        tls-server-name: n1                   # optional: the name the server's cert carries
    users:
    - name: admin
      user:
        client-certificate: admin.crt         # or client-certificate-data: BASE64
        client-key: admin.key                 # or client-key-data: BASE64
        token: TOKEN                          # instead of a certificate
    contexts:
    - name: lab-admin
      context: {cluster: lab, user: admin, namespace: default}
    current-context: lab-admin

Where it is: --config, else $PODNET_CONFIG, else ~/.config/podnet/config.yaml. The file is
hostile input like any other: loaded with safe YAML (no aliases), every field's type checked,
errors name the field ("users[0].user.token: expected a string, got a list"). Relative paths are
relative to the file, as kubectl resolves them.
"""
import base64
import binascii
import copy
import dataclasses
import os
import stat
import tempfile

from . import safeyaml

ENV = "PODNET_CONFIG"
DEFAULT_PATH = os.path.join("~", ".config", "podnet", "config.yaml")
MAX_FILE_BYTES = 1 << 20          # a config or a certificate: far more than any real one


class ConfigError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Cluster:
    name: str
    servers: tuple[str, ...]
    ca_path: str = ""
    ca_data: bytes | None = None
    tls_server_name: str = ""


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    cert_path: str = ""
    cert_data: bytes | None = None
    key_path: str = ""
    key_data: bytes | None = None
    token: str = ""


@dataclasses.dataclass(frozen=True)
class Context:
    name: str
    cluster: str
    user: str = ""
    namespace: str = ""


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    path: str
    clusters: dict[str, Cluster]
    users: dict[str, User]
    contexts: dict[str, Context]
    current_context: str
    raw: dict                       # the document as read: config view and use-context keep it

    @classmethod
    def empty(cls, path: str = "") -> "ClientConfig":
        return cls(path, {}, {}, {}, "", {})


def config_path(flag: str | None, env: dict | None = None) -> tuple[str, bool]:
    """The file to read and whether the user named it (a named file must exist)."""
    env = os.environ if env is None else env
    if flag:
        return os.path.expanduser(flag), True
    if env.get(ENV):
        return os.path.expanduser(env[ENV]), True
    return os.path.expanduser(DEFAULT_PATH), False


def read_limited(path: str, what: str) -> bytes:
    try:
        mode = os.stat(path).st_mode
        # a FIFO would block the read; /dev/null (a character device) reads as empty
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            raise ConfigError(f"{what} {path}: not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{what} {path}: {e.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes")
    return data


def load(path: str, must_exist: bool = True) -> ClientConfig:
    if not must_exist and not os.path.exists(path):
        return ClientConfig.empty(path)
    data = read_limited(path, "config")
    try:
        doc = safeyaml.load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not UTF-8 text") from None
    except safeyaml.YamlError as e:
        raise ConfigError(f"config {path}: {e}") from None
    try:
        return parse(doc, path)
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e}") from None


def _type(value, want: type, where: str, optional: bool = True):
    if value is None and optional:
        return want()
    if not isinstance(value, want) or isinstance(value, bool) and want is not bool:
        got = _NAMES.get(type(value), type(value).__name__)
        raise ConfigError(f"{where}: expected {_NAMES[want]}, got {got}")
    return value


_NAMES = {str: "a string", list: "a list", dict: "a mapping", int: "a number", bool: "a boolean",
          float: "a number", type(None): "nothing"}


def _named(doc: dict, section: str, body: str) -> list[tuple[str, dict, str]]:
    """[(name, body mapping, where)] of one section, names unique and non-empty."""
    out, seen = [], set()
    for i, entry in enumerate(_type(doc.get(section), list, section)):
        where = f"{section}[{i}]"
        entry = _type(entry, dict, where, optional=False)
        name = _type(entry.get("name"), str, f"{where}.name", optional=False)
        if not name:
            raise ConfigError(f"{where}.name: must not be empty")
        if name in seen:
            raise ConfigError(f"{where}.name: {name!r} appears twice in {section}")
        seen.add(name)
        out.append((name, _type(entry.get(body), dict, f"{where}.{body}"), f"{where}.{body}"))
    return out


def _data(body: dict, key: str, where: str) -> bytes | None:
    text = _type(body.get(key), str, f"{where}.{key}")
    if not text:
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}.{key}: not valid base64") from None


def _path(body: dict, key: str, where: str, base: str) -> str:
    text = _type(body.get(key), str, f"{where}.{key}")
    if text and "\0" in text:
        raise ConfigError(f"{where}.{key}: contains a NUL byte")
    return os.path.join(base, os.path.expanduser(text)) if text else ""


def _servers(body: dict, where: str) -> tuple[str, ...]:
    servers = []
    one = _type(body.get("server"), str, f"{where}.server")
    if one:
        servers.append(one)
    for i, s in enumerate(_type(body.get("servers"), list, f"{where}.servers")):
        servers.append(_type(s, str, f"{where}.servers[{i}]", optional=False))
    if not servers:
        raise ConfigError(f"{where}: no server (give server: https://HOST:PORT)")
    return tuple(servers)


def parse(doc, path: str = "") -> ClientConfig:
    if doc is None:
        return ClientConfig.empty(path)
    doc = _type(doc, dict, "the document", optional=False)
    kind = _type(doc.get("kind"), str, "kind")
    if kind not in ("", "Config"):
        raise ConfigError(f"kind: expected Config, got {kind!r}")
    base = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    clusters, users, contexts = {}, {}, {}
    for name, body, where in _named(doc, "clusters", "cluster"):
        clusters[name] = Cluster(
            name, _servers(body, where),
            ca_path=_path(body, "certificate-authority", where, base),
            ca_data=_data(body, "certificate-authority-data", where),
            tls_server_name=_type(body.get("tls-server-name"), str, f"{where}.tls-server-name"))
    for name, body, where in _named(doc, "users", "user"):
        users[name] = User(
            name, cert_path=_path(body, "client-certificate", where, base),
            cert_data=_data(body, "client-certificate-data", where),
            key_path=_path(body, "client-key", where, base),
            key_data=_data(body, "client-key-data", where),
            token=_type(body.get("token"), str, f"{where}.token"))
    for name, body, where in _named(doc, "contexts", "context"):
        cluster = _type(body.get("cluster"), str, f"{where}.cluster", optional=False)
        contexts[name] = Context(name, cluster, _type(body.get("user"), str, f"{where}.user"),
                                 _type(body.get("namespace"), str, f"{where}.namespace"))
    current = _type(doc.get("current-context"), str, "current-context")
    return ClientConfig(path, clusters, users, contexts, current, doc)


# config view hides what authenticates, as kubectl does: file contents and tokens.
_OMITTED = {"certificate-authority-data", "client-certificate-data", "client-key-data"}
_REDACTED = {"token", "password"}


def redacted(raw: dict) -> dict:
    doc = copy.deepcopy(raw)
    for section, body in (("clusters", "cluster"), ("users", "user")):
        for entry in doc.get(section) or []:
            fields = entry.get(body) if isinstance(entry, dict) else None
            if not isinstance(fields, dict):
                continue
            for key in fields:
                if key in _OMITTED and fields[key]:
                    fields[key] = "DATA+OMITTED"
                elif key in _REDACTED and fields[key]:
                    fields[key] = "REDACTED"
    return doc


def minified(config: ClientConfig, context: str) -> dict:
    """The document with only `context`, its cluster and its user (config view --minify)."""
    ctx = config.contexts.get(context)
    if ctx is None:
        raise ConfigError(f'context "{context}" does not exist' if context
                          else "current-context is not set")
    doc = copy.deepcopy(config.raw)
    doc["contexts"] = [c for c in doc.get("contexts") or [] if c.get("name") == context]
    doc["clusters"] = [c for c in doc.get("clusters") or [] if c.get("name") == ctx.cluster]
    doc["users"] = [u for u in doc.get("users") or [] if u.get("name") == ctx.user]
    doc["current-context"] = context
    return doc


def save(path: str, doc: dict) -> None:
    """Write the document in place of the old one, atomically, readable by its owner only."""
    import yaml
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".config-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False, default_flow_style=False)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def client_config(name: str, servers: list[str], ca_path: str, *, user: str = "admin",
                  cert_path: str = "", key_path: str = "", token: str = "",
                  namespace: str = "") -> dict:
    """A config with one cluster, one user and their context, current (what `lab up` writes
    for its admin); save() writes it."""
    creds = {"token": token} if token else {"client-certificate": cert_path,
                                            "client-key": key_path}
    context = {"cluster": name, "user": user} | ({"namespace": namespace} if namespace else {})
    return {"apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": name, "cluster": {"servers": list(servers),
                                                    "certificate-authority": ca_path}}],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": f"{user}@{name}", "context": context}],
            "current-context": f"{user}@{name}"}


def use_context(config: ClientConfig, name: str) -> None:
    if name not in config.contexts:
        raise ConfigError(f"no context exists with the name: \"{name}\"")
    doc = copy.deepcopy(config.raw)
    doc["current-context"] = name
    save(config.path, doc)
