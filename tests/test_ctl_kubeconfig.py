"""podnetctl's client config (kubeconfig-shaped): loading, hostile files, redaction, contexts,
and which server and identity the global flags resolve to. Pure: files in a temp dir."""
import base64
import os
import stat

import grpc
import pytest
import yaml

from podnetd.ctl import kubeconfig
from podnetd.ctl.apiclient import ApiClient, message
from podnetd.ctl.kubeconfig import ConfigError
from podnetd.ctl.main import main, parse
from podnetd.ctl.session import overrides
from podnetd.ctl.target import Overrides, grpc_target, resolve

CA = b"-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def config_doc(**over) -> dict:
    doc = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {
            "servers": ["https://10.0.0.1:6443", "https://10.0.0.2:6443"],
            "certificate-authority-data": b64(CA)}},
            {"name": "other", "cluster": {"server": "https://[fd00::1]:7443",
                                          "certificate-authority": "ca.crt"}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": b64(b"CERT"),
                                             "client-key-data": b64(b"KEY")}},
                  {"name": "alice", "user": {"token": "s3cret"}}],
        "contexts": [{"name": "lab-admin", "context": {"cluster": "lab", "user": "admin"}},
                     {"name": "other-alice", "context": {"cluster": "other", "user": "alice",
                                                         "namespace": "prod"}}],
        "current-context": "lab-admin",
    }
    doc.update(over)
    return doc


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_doc()))
    (tmp_path / "ca.crt").write_bytes(CA)
    return str(path)


def env(path: str) -> dict:
    return {"PODNET_CONFIG": path}


def test_a_config_resolves_to_its_current_context(cfg):
    t = resolve(Overrides(), env(cfg))
    assert t.servers == ("10.0.0.1:6443", "10.0.0.2:6443") and t.tls
    assert (t.ca, t.cert, t.key) == (CA, b"CERT", b"KEY")
    assert t.namespace == "default" and t.context == "lab-admin" and not t.local


def test_context_flag_picks_another_context_with_its_namespace_and_files_relative_to_config(cfg):
    t = resolve(Overrides(context="other-alice"), env(cfg))
    assert t.servers == ("[fd00::1]:7443",)
    assert t.ca == CA                              # ca.crt next to the config file
    assert t.token == "s3cret" and t.cert is None and t.namespace == "prod"


def test_flags_override_the_config(cfg):
    t = resolve(Overrides(context="other-alice", namespace="dev", token="tok2",
                          server="https://10.9.9.9:1234", as_user="bob",
                          as_groups=("g1", "g2")), env(cfg))
    assert t.servers == ("10.9.9.9:1234",) and t.namespace == "dev" and t.token == "tok2"
    md = ApiClient(t).metadata()
    assert ("authorization", "Bearer tok2") in md
    assert ("impersonate-user", "bob") in md
    assert [v for k, v in md if k == "impersonate-group"] == ["g1", "g2"]


def test_no_config_means_the_local_podnetds_socket(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))      # no ~/.config/podnet/config.yaml there
    t = resolve(Overrides(), {})
    assert t.servers == ("unix:/run/podnet/podnetd.sock",) and t.local and not t.tls
    assert t.namespace == "default" and t.token == ""
    t = resolve(Overrides(socket="/tmp/x.sock", namespace="prod"), {})
    assert t.servers == ("unix:/tmp/x.sock",) and t.local and t.namespace == "prod"


def test_an_explicit_socket_wins_over_the_configs_context(cfg):
    t = resolve(Overrides(socket="/s.sock"), env(cfg))
    assert t.servers == ("unix:/s.sock",) and t.local


def test_a_named_config_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        resolve(Overrides(config=str(tmp_path / "nope.yaml")), {})


def test_an_unknown_context_is_refused_in_kubectls_words(cfg):
    with pytest.raises(ConfigError, match="context was not found for specified context: x"):
        resolve(Overrides(context="x"), env(cfg))


@pytest.mark.parametrize("server, want", [
    ("https://10.0.0.1:6443", ("10.0.0.1:6443", True)),
    ("10.0.0.1:6443", ("10.0.0.1:6443", True)),
    ("https://api.example", ("api.example:443", True)),
    ("https://[fd00::2]:8443", ("[fd00::2]:8443", True)),
    ("unix:///run/podnet/podnetd.sock", ("unix:/run/podnet/podnetd.sock", False)),
])
def test_server_urls(server, want):
    assert grpc_target(server) == want


@pytest.mark.parametrize("server", ["http://10.0.0.1:80", "https://10.0.0.1:99999",
                                    "https://u@h:1", "https://h:1/path", "unix:", "https://:1"])
def test_bad_server_urls_are_refused(server):
    with pytest.raises(ConfigError, match="server"):
        grpc_target(server)


HOSTILE = [
    ("[1, 2]", "expected a mapping"),
    ("clusters: {a: 1}", "clusters: expected a list"),
    ("clusters: [{name: 5}]", r"clusters\[0\].name: expected a string"),
    ("clusters: [{name: ''}]", "must not be empty"),
    ("clusters: [{name: a, cluster: {server: [1]}}]", "server: expected a string"),
    ("clusters: [{name: a, cluster: {}}]", "no server"),
    ("clusters: [{name: a, cluster: {server: 'https://h:1'}}, {name: a, cluster: {server: "
     "'https://h:1'}}]", "appears twice"),
    ("users: [{name: u, user: {token: true}}]", "token: expected a string, got a boolean"),
    ("users: [{name: u, user: {client-key-data: '!!notbase64'}}]", "not valid base64"),
    ("contexts: [{name: c, context: {user: u}}]", "cluster: expected a string, got nothing"),
    ("current-context: {a: b}", "current-context: expected a string"),
    ("kind: Pod", "expected Config"),
    ("a: &x [1]\nb: *x", "aliases"),
    ("clusters: [\n", "expected"),
    ("users: [{name: u, user: {client-key: \"a\\0b\"}}]", "NUL"),
]


@pytest.mark.parametrize("text, error", HOSTILE)
def test_hostile_configs_get_a_clear_error_naming_the_field(tmp_path, text, error):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error) as e:
        kubeconfig.load(str(path))
    assert str(path) in str(e.value)


def test_a_huge_or_binary_config_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (kubeconfig.MAX_FILE_BYTES + 10))
    with pytest.raises(ConfigError, match="larger than"):
        kubeconfig.load(str(big))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="UTF-8"):
        kubeconfig.load(str(binary))
    with pytest.raises(ConfigError, match="not a regular file"):
        kubeconfig.load(str(tmp_path))


def test_an_empty_config_is_an_empty_config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert kubeconfig.load(str(path)).contexts == {}
    assert kubeconfig.load("/dev/null").current_context == ""


def test_a_context_naming_a_missing_user_is_refused(tmp_path):
    doc = config_doc()
    doc["contexts"][0]["context"]["user"] = "ghost"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match='user "ghost" does not exist'):
        resolve(Overrides(), env(str(path)))


def test_a_certificate_without_its_key_is_refused(tmp_path):
    doc = config_doc()
    del doc["users"][0]["user"]["client-key-data"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="needs its key"):
        resolve(Overrides(), env(str(path)))


def test_non_ascii_identity_cannot_go_into_grpc_metadata(cfg):
    with pytest.raises(ConfigError, match="--as: only printable ASCII"):
        resolve(Overrides(as_user="bób"), env(cfg))
    with pytest.raises(ConfigError, match="token"):
        resolve(Overrides(token="a\nb"), env(cfg))


def test_view_redacts_secrets_as_kubectl_does(cfg, capsys):
    assert main(["config", "view", "--config", cfg]) == 0
    out = capsys.readouterr().out
    doc = yaml.safe_load(out)
    assert doc["clusters"][0]["cluster"]["certificate-authority-data"] == "DATA+OMITTED"
    assert doc["users"][0]["user"]["client-key-data"] == "DATA+OMITTED"
    assert doc["users"][0]["user"]["client-certificate-data"] == "DATA+OMITTED"
    assert doc["users"][1]["user"]["token"] == "REDACTED"
    assert "s3cret" not in out and b64(b"KEY") not in out
    assert doc["clusters"][1]["cluster"]["certificate-authority"] == "ca.crt"   # a path stays
    assert main(["config", "view", "--raw", "--config", cfg]) == 0
    assert "s3cret" in capsys.readouterr().out


def test_view_minify_keeps_only_the_current_contexts_parts(cfg, capsys):
    assert main(["config", "view", "--minify", "--context", "other-alice", "--config", cfg]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert [c["name"] for c in doc["clusters"]] == ["other"]
    assert [u["name"] for u in doc["users"]] == ["alice"]


def test_use_context_switches_and_keeps_the_rest_of_the_file(cfg, capsys):
    before = yaml.safe_load(open(cfg))
    before["extra"] = {"kept": True}               # a field podnetctl does not know
    with open(cfg, "w") as f:
        yaml.safe_dump(before, f)
    assert main(["config", "use-context", "other-alice", "--config", cfg]) == 0
    assert capsys.readouterr().out == 'Switched to context "other-alice".\n'
    after = yaml.safe_load(open(cfg))
    assert after["current-context"] == "other-alice" and after["extra"] == {"kept": True}
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o600
    assert main(["config", "current-context", "--config", cfg]) == 0
    assert capsys.readouterr().out == "other-alice\n"
    assert main(["config", "get-contexts", "--config", cfg]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CURRENT", "NAME", "CLUSTER", "AUTHINFO", "NAMESPACE"]
    assert lines[2].split() == ["*", "other-alice", "other", "alice", "prod"]
    assert lines[1].split() == ["lab-admin", "lab", "admin"]


def test_use_context_of_an_unknown_context_changes_nothing(cfg, capsys):
    before = open(cfg).read()
    assert main(["config", "use-context", "nope", "--config", cfg]) == 1
    assert capsys.readouterr().err == 'error: no context exists with the name: "nope"\n'
    assert open(cfg).read() == before


def test_current_context_unset(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("kind: Config\n")
    assert main(["config", "current-context", "--config", str(path)]) == 1
    assert capsys.readouterr().err == "error: current-context is not set\n"


@pytest.mark.parametrize("argv", [
    ["--context", "c", "-n", "prod", "--as", "bob", "get", "pods"],
    ["get", "pods", "--context", "c", "-n", "prod", "--as", "bob"],
    ["get", "--context=c", "-nprod", "pods", "--as=bob"],
    ["-n", "prod", "get", "--as", "bob", "pods", "--context", "c"],
])
def test_global_flags_anywhere_before_the_separator(argv):
    args = parse(argv)
    o = overrides(args)
    assert (o.context, o.namespace, o.as_user, args.resources) == ("c", "prod", "bob", ["pods"])


def test_words_after_an_option_stay_arguments_of_the_verb():
    args = parse(["label", "pods", "web", "a=b", "--overwrite", "c-"])
    assert args.args == ["pods", "web", "a=b", "c-"] and args.overwrite
    with pytest.raises(SystemExit):
        parse(["label", "pods", "web", "--nonsense"])


def test_all_namespaces_is_global_too():
    assert parse(["-A", "get", "pods"]).all_namespaces
    assert parse(["get", "pods", "-A"]).all_namespaces


def test_the_node_commands_keep_their_flags():
    args = parse(["pod", "exec", "web", "-n", "prod", "--socket", "/s", "--", "ls", "-n"])
    assert (args.namespace, args.socket, args.cmd) == ("prod", "/s", ["ls", "-n"])
    assert parse(["get", "events", "--for", "pod/web", "-w"]).for_ == "pod/web"


ERRORS = [
    (grpc.StatusCode.NOT_FOUND, 'pods "x" not found',
     'Error from server (NotFound): pods "x" not found'),
    (grpc.StatusCode.ALREADY_EXISTS, 'pods "x" already exists',
     'Error from server (AlreadyExists): pods "x" already exists'),
    (grpc.StatusCode.ABORTED, "the object has been modified; please apply your changes to the "
     "latest version and try again", "Error from server (Conflict): the object has been "
     "modified; please apply your changes to the latest version and try again"),
    (grpc.StatusCode.INVALID_ARGUMENT, 'Pod "x" is invalid: spec.containers: Required value',
     'Error from server (Invalid): Pod "x" is invalid: spec.containers: Required value'),
    (grpc.StatusCode.INVALID_ARGUMENT, "bad selector",
     "Error from server (BadRequest): bad selector"),
    (grpc.StatusCode.PERMISSION_DENIED, 'pods is forbidden: User "alice" cannot create resource '
     '"pods" in API group "" in the namespace "prod"', 'Error from server (Forbidden): pods is '
     'forbidden: User "alice" cannot create resource "pods" in API group "" in the namespace '
     '"prod"'),
    (grpc.StatusCode.UNAUTHENTICATED, "",
     "error: You must be logged in to the server (Unauthorized)"),
    (grpc.StatusCode.UNAUTHENTICATED, "Unauthorized",
     "error: You must be logged in to the server (Unauthorized)"),
    (grpc.StatusCode.OUT_OF_RANGE, "too old resource version: 5 (90)",
     "Error from server (Expired): too old resource version: 5 (90)"),
]


@pytest.mark.parametrize("code, details, line", ERRORS)
def test_grpc_errors_read_as_kubectls(code, details, line):
    assert message(code, details) == line


def test_unreachable_names_the_server():
    line = message(grpc.StatusCode.UNAVAILABLE, "connection refused", "10.0.0.1:6443")
    assert line == "Unable to connect to the server 10.0.0.1:6443: connection refused"


def test_a_written_client_config_reads_back(tmp_path):
    path = str(tmp_path / "sub" / "config.yaml")
    kubeconfig.save(path, kubeconfig.client_config(
        "lab", ["https://10.0.0.1:6443", "https://10.0.0.2:6443"], "/pki/ca.crt",
        cert_path="/pki/admin.crt", key_path="/pki/admin.key"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    config = kubeconfig.load(path)
    assert config.current_context == "admin@lab"
    assert config.clusters["lab"].servers == ("https://10.0.0.1:6443", "https://10.0.0.2:6443")
    assert config.users["admin"].cert_path == "/pki/admin.crt"
