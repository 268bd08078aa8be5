"""The cluster API's authentication, authorization and audit (podnetd/apiserver/authn.py,
rbac.py, node_authz.py, authz.py, audit.py): pure logic with real certificates (openssl and
cryptography), a real TLS gRPC server for the credentials, real files for tokens and audit."""
import asyncio
import datetime
import json
import os
import stat
import subprocess
import tempfile
import threading

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnetd.apiserver import aggregation, audit, authn, authz, node_authz, rbac
from podnetd.apiserver.authn import UserInfo
from podnetd.apiserver.rbac import Attributes
from podnetd.lab import pki

UTC = datetime.timezone.utc
NOW = datetime.datetime.now(UTC)


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="pt-authz-")
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", d], check=False)


# ---- certificates made by the cryptography package (periods and chains openssl's CLI does not
# make easily) -------------------------------------------------------------------------------------

def _name(cn: str | None, orgs=()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    if cn is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def make_cert(cn, orgs=(), *, issuer=None, ca=False, not_before=None, not_after=None,
              eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)):
    """(certificate, key); issuer: (certificate, key) or None for self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(cn, orgs)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer_cert.subject if issuer_cert else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before or NOW - datetime.timedelta(hours=1))
         .not_valid_after(not_after or NOW + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku and not ca:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return b.sign(issuer_key, hashes.SHA256()), key


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def ca():
    return make_cert("test CA", ca=True)


# ---- token file ---------------------------------------------------------------------------------

def test_token_file_parses_kube_apiserver_format(tmp):
    path = os.path.join(tmp, "tokens.csv")
    with open(path, "w") as f:
        f.write('s3cret-a,alice,1001,"dev,ops"\n'
                "\n"
                "s3cret-b, bob, 1002\n"
                's3cret-c,carol,1003,""\n'
                "s3cret-n,system:node:n1,n1,system:nodes\n")
    tokens = authn.TokenFile.load(path)
    assert len(tokens) == 4
    assert tokens.lookup("s3cret-a") == UserInfo("alice", "1001", ("dev", "ops"))
    assert tokens.lookup("s3cret-b") == UserInfo("bob", "1002", ())
    assert tokens.lookup("s3cret-c") == UserInfo("carol", "1003", ())
    assert authn.node_name(tokens.lookup("s3cret-n")) == "n1"
    for wrong in ("s3cret", "s3cret-a ", "S3CRET-A", "", "s3cret-ax", "x" * 5000):
        assert tokens.lookup(wrong) is None


@pytest.mark.parametrize("text, line, words", [
    ("good,alice,1\nonly,two\n", 2, "at least 3 columns"),
    ("t,alice,1,g1,g2\n", 1, "quote the groups"),
    (",alice,1\n", 1, "empty token"),
    ('"tok en",alice,1\n', 1, "printable ASCII"),
    ("t,,1\n", 1, "empty user name"),
    ("a,alice,1\nb,bob,2\na,mallory,3\n", 3, "duplicate token (first on line 1)"),
    ('t,alice,1,"dev\n', 1, "unexpected end of data"),
    ("t,ali\x01ce,1\n", 1, "control character"),
    ('a,alice,1\nt,"ali\nce",1\n', 2, "spans lines"),
    ('t,alice,1,"dev,,ops"\n', 1, "empty group name"),
    ("t,alice ,1\n", 1, "whitespace"),
])
def test_token_file_refuses_bad_lines_naming_the_line(text, line, words):
    with pytest.raises(authn.TokenFileError) as e:
        authn.TokenFile.parse(text, source="tokens.csv")
    assert f"tokens.csv line {line}: " in str(e.value)
    assert words in str(e.value)


def test_token_file_refuses_non_utf8_and_nul_with_the_line(tmp):
    with pytest.raises(authn.TokenFileError, match=r"line 2: not UTF-8"):
        authn.TokenFile.parse(b"a,alice,1\nb,\xff\xfe,2\n", source="f")
    with pytest.raises(authn.TokenFileError, match=r"line 2"):
        authn.TokenFile.parse(b"a,alice,1\nb,bo\x00b,2\n", source="f")
    with pytest.raises(authn.TokenFileError, match="No such file"):
        authn.TokenFile.load(os.path.join(tmp, "missing.csv"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_token_file_parser_fuzz_only_clear_errors(data):
    try:
        tokens = authn.TokenFile.parse(data, source="fuzz")
    except authn.TokenFileError as e:
        assert str(e).startswith("token file fuzz")
        return
    assert len(tokens) >= 0


_tok = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=40)
_name_st = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
                   min_size=1, max_size=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_tok, _name_st, _name_st,
                          st.lists(_name_st.filter(lambda g: "," not in g), max_size=3)),
                max_size=8, unique_by=lambda r: r[0]))
def test_token_file_round_trip_fuzz(records):
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for tok, user, uid, groups in records:
        w.writerow([tok, user, uid, ",".join(groups)])
    tokens = authn.TokenFile.parse(buf.getvalue().encode())
    for tok, user, uid, groups in records:
        assert tokens.lookup(tok) == UserInfo(user, uid, tuple(dict.fromkeys(groups)))


# ---- certificates -------------------------------------------------------------------------------

def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def openssl_client_cert(d: str, ca_cert: str, ca_key: str, subj: str, ext: str | None) -> bytes:
    key, csr, crt = (os.path.join(d, f) for f in ("c.key", "c.csr", "c.crt"))
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", subj)
    extra = []
    if ext:
        with open(os.path.join(d, "c.ext"), "w") as f:
            f.write(ext)
        extra = ["-extfile", os.path.join(d, "c.ext")]
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-out", crt, "-days", "2", *extra)
    with open(crt, "rb") as f:
        return f.read()


def test_openssl_certificate_cn_is_user_and_o_are_groups(tmp):
    ca_cert, ca_key = pki.make_ca(os.path.join(tmp, "ca"), "authz")
    # As the Kubernetes docs' recipe makes user certificates: no extensions at all (X.509 v1).
    crt = openssl_client_cert(tmp, ca_cert, ca_key, "/O=dev/O=ops/CN=alice", None)
    user = authn.authenticate(crt, None)
    assert user == UserInfo("alice", "", ("dev", "ops", "system:authenticated"))
    with open(ca_cert, "rb") as f:
        assert authn.verify_client_cert(crt, f.read()) == user
    der = x509.load_pem_x509_certificate(crt).public_bytes(serialization.Encoding.DER)
    assert authn.authenticate(der, None) == user
    node_crt = openssl_client_cert(tmp, ca_cert, ca_key, "/O=system:nodes/CN=system:node:n1",
                                   "extendedKeyUsage=clientAuth\n")
    node = authn.authenticate(node_crt, None)
    assert authn.node_name(node) == "n1"
    server_only = openssl_client_cert(tmp, ca_cert, ca_key, "/CN=web",
                                      "extendedKeyUsage=serverAuth\n")
    with pytest.raises(authn.Unauthenticated, match="incompatible key usage"):
        authn.authenticate(server_only, None)


def test_expired_and_not_yet_valid_certificates_are_refused(ca):
    expired, _ = make_cert("alice", ["dev"], issuer=ca, not_before=NOW - datetime.timedelta(2),
                           not_after=NOW - datetime.timedelta(seconds=5))
    with pytest.raises(authn.Unauthenticated, match="certificate has expired or is not yet "
                                                    "valid: current time .* is after"):
        authn.authenticate(pem(expired), None)
    with pytest.raises(authn.Unauthenticated, match="expired"):
        authn.verify_client_cert(pem(expired), pem(ca[0]))
    future, _ = make_cert("alice", issuer=ca, not_before=NOW + datetime.timedelta(hours=1))
    with pytest.raises(authn.Unauthenticated, match="is before"):
        authn.authenticate(pem(future), None)
    # valid at a given moment: the period, not the clock, decides
    assert authn.authenticate(pem(future), None, now=NOW + datetime.timedelta(hours=2)).name \
        == "alice"


def test_foreign_ca_and_chains(ca):
    foreign = make_cert("other CA", ca=True)
    leaf, _ = make_cert("mallory", ["system:masters"], issuer=foreign)
    with pytest.raises(authn.Unauthenticated, match="signed by unknown authority"):
        authn.verify_client_cert(pem(leaf), pem(ca[0]))
    # same subject as the trusted CA, other key: still foreign (signature, not names)
    impostor = make_cert("test CA", ca=True)
    forged, _ = make_cert("mallory", ["system:masters"], issuer=impostor)
    with pytest.raises(authn.Unauthenticated, match="unknown authority"):
        authn.verify_client_cert(pem(forged), pem(ca[0]))
    # an intermediate CA sent along with the client certificate
    inter = make_cert("intermediate", ca=True, issuer=ca)
    leaf2, _ = make_cert("bob", ["ops"], issuer=inter)
    assert authn.verify_client_cert(pem(leaf2) + pem(inter[0]), pem(ca[0])).name == "bob"
    with pytest.raises(authn.Unauthenticated, match="unknown authority"):
        authn.verify_client_cert(pem(leaf2), pem(ca[0]))
    # a leaf is no CA: it cannot vouch for another leaf
    child, _ = make_cert("eve", issuer=make_cert("bob", issuer=ca))
    with pytest.raises(authn.Unauthenticated, match="unknown authority"):
        authn.verify_client_cert(pem(child) + pem(make_cert("bob", issuer=ca)[0]), pem(ca[0]))
    # the CA bundle may hold several CAs
    assert authn.verify_client_cert(pem(leaf), pem(ca[0]) + pem(foreign[0])).name == "mallory"


def test_certificate_identity_must_be_clear(ca):
    no_cn, _ = make_cert(None, ["dev"], issuer=ca)
    with pytest.raises(authn.Unauthenticated, match="exactly one common name"):
        authn.authenticate(pem(no_cn), None)
    with pytest.raises(authn.Unauthenticated, match="does not parse"):
        authn.authenticate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                           None)
    with pytest.raises(authn.Unauthenticated, match="does not parse"):
        authn.authenticate(b"\x30\x03\x02\x01\x01", None)


def test_authenticate_union_of_certificate_and_token(ca):
    tokens = authn.TokenFile.parse("tok-1,bob,7,ops\n")
    good, _ = make_cert("alice", issuer=ca)
    expired, _ = make_cert("alice", issuer=ca, not_before=NOW - datetime.timedelta(2),
                           not_after=NOW - datetime.timedelta(1))
    assert authn.authenticate(pem(good), "tok-1", tokens=tokens).name == "alice"
    assert authn.authenticate(None, "tok-1", tokens=tokens) == \
        UserInfo("bob", "7", ("ops", "system:authenticated"))
    # as kube-apiserver's union: a failing certificate does not hide a good token
    assert authn.authenticate(pem(expired), "tok-1", tokens=tokens).name == "bob"
    with pytest.raises(authn.Unauthenticated, match="expired.*; invalid bearer token"):
        authn.authenticate(pem(expired), "tok-2", tokens=tokens)
    with pytest.raises(authn.Unauthenticated, match="invalid bearer token"):
        authn.authenticate(None, "tok-2", tokens=tokens)
    with pytest.raises(authn.Unauthenticated, match="invalid bearer token"):
        authn.authenticate(None, "tok-1", tokens=None)
    with pytest.raises(authn.Unauthenticated, match="no credentials"):
        authn.authenticate(None, None, tokens=tokens)


def test_credentials_from_metadata():
    c = authn.credentials_from_metadata([("authorization", "Bearer abc"),
                                         ("impersonate-user", "bob"),
                                         ("impersonate-group", "g1"), ("impersonate-group", "g2"),
                                         ("user-agent", "podnetctl")])
    assert (c.token, c.impersonate_user, c.impersonate_groups) == ("abc", "bob", ("g1", "g2"))
    assert c.impersonating
    assert authn.credentials_from_metadata([("authorization", "bearer abc")]).token == "abc"
    assert not authn.credentials_from_metadata([]).impersonating
    for bad in (["Basic YWxpY2U6cHc="], ["Bearer "], ["Bearer a b"], ["Bearer a", "Bearer b"]):
        with pytest.raises(authn.Unauthenticated):
            authn.credentials_from_metadata([("authorization", v) for v in bad])
    with pytest.raises(authn.Unauthenticated, match="more than one impersonate-user"):
        authn.credentials_from_metadata([("impersonate-user", "a"), ("impersonate-user", "b")])


def test_credentials_from_a_real_tls_grpc_server(tmp):
    """The TLS layer verifies the client certificate against the CA; credentials_from_grpc reads
    it from the auth context and the token and impersonation from the metadata."""
    ca_cert, ca_key = pki.make_ca(os.path.join(tmp, "ca"), "authz")
    srv_cert, srv_key = pki.make_node_cert(os.path.join(tmp, "srv"), ca_cert, ca_key,
                                           "localhost", "127.0.0.1")
    client = openssl_client_cert(tmp, ca_cert, ca_key, "/O=dev/CN=alice",
                                 "extendedKeyUsage=clientAuth\n")
    with open(os.path.join(tmp, "c.key"), "rb") as f:
        client_key = f.read()
    read = lambda p: open(p, "rb").read()  # noqa: E731
    tokens = authn.TokenFile.parse("tok-9,bob,9\n")

    async def handler(request: bytes, context) -> bytes:
        creds = authn.credentials_from_grpc(context)
        user = authn.authenticate(creds.peer_cert, creds.token, tokens=tokens)
        return json.dumps({"user": user.name, "groups": user.groups,
                           "as": creds.impersonate_user, "peer": creds.peer}).encode()

    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", {
            "Who": grpc.unary_unary_rpc_method_handler(handler)})])
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
            [(read(srv_key), read(srv_cert))], root_certificates=read(ca_cert),
            require_client_auth=True))
        await server.start()
        try:
            creds = grpc.ssl_channel_credentials(read(ca_cert), client_key, client)
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
                call = ch.unary_unary("/t.T/Who")
                out = json.loads(await call(b"", metadata=[("impersonate-user", "carol")],
                                            timeout=10))
            # a certificate of a foreign CA does not get through the TLS layer
            foreign = make_cert("mallory", issuer=make_cert("x", ca=True))
            bad = grpc.ssl_channel_credentials(read(ca_cert), foreign[1].private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), pem(foreign[0]))
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", bad) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await ch.unary_unary("/t.T/Who")(b"", timeout=10)
            return out, e.value.code()
        finally:
            await server.stop(None)

    out, refused = asyncio.run(main())
    assert out["user"] == "alice" and out["groups"] == ["dev", "system:authenticated"]
    assert out["as"] == "carol" and out["peer"].startswith("ipv4:127.0.0.1:")
    assert refused == grpc.StatusCode.UNAVAILABLE


# ---- RBAC ---------------------------------------------------------------------------------------

def role(name, ns, rules, kind="Role"):
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return {"apiVersion": rbac.API_VERSION, "kind": kind, "metadata": meta, "rules": rules}


def binding(name, ns, role_kind, role_name, subjects):
    kind = "RoleBinding" if ns else "ClusterRoleBinding"
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return rbac.default_binding({
        "apiVersion": rbac.API_VERSION, "kind": kind, "metadata": meta,
        "roleRef": {"apiGroup": rbac.GROUP, "kind": role_kind, "name": role_name},
        "subjects": subjects})


def user(name, groups=()):
    return UserInfo(name, "", tuple(groups) + ("system:authenticated",))


def rule(verbs, resources, groups=("",), names=None):
    r = {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}
    if names:
        r["resourceNames"] = names
    return r


POLICY = [
    role("pod-reader", "prod", [rule(["get", "list", "watch"], ["pods"])]),
    binding("alice-reads", "prod", "Role", "pod-reader", [{"kind": "User", "name": "alice"}]),
    role("log-reader", "", [rule(["get"], ["pods/log"])], kind="ClusterRole"),
    binding("alice-logs", "dev", "ClusterRole", "log-reader", [{"kind": "User", "name": "alice"}]),
    role("node-viewer", "", [rule(["get", "list"], ["nodes"])], kind="ClusterRole"),
    binding("ops-nodes", "", "ClusterRole", "node-viewer", [{"kind": "Group", "name": "ops"}]),
    role("only-web", "prod", [rule(["get", "update"], ["pods"], names=["web"])]),
    binding("carol-web", "prod", "Role", "only-web", [{"kind": "User", "name": "carol"}]),
    role("status-writer", "", [rule(["update"], ["*/status"])], kind="ClusterRole"),
    binding("dave-status", "", "ClusterRole", "status-writer", [{"kind": "User", "name": "dave"}]),
    role("read-all", "", [rule(["get"], ["*"], groups=["*"])], kind="ClusterRole"),
    binding("erin-all", "", "ClusterRole", "read-all", [{"kind": "User", "name": "erin"}]),
    role("all-verbs", "prod", [rule(["*"], ["leases"], groups=["coordination.k8s.io"])]),
    binding("builder", "prod", "Role", "all-verbs",
            [{"kind": "ServiceAccount", "name": "builder"},
             {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}]),
    binding("ghost", "prod", "Role", "no-such-role", [{"kind": "User", "name": "frank"}]),
    role("dev-pods", "dev", [rule(["create"], ["pods"])]),
    binding("cross", "prod", "Role", "dev-pods", [{"kind": "User", "name": "gina"}]),
]

A = lambda u, verb, res, ns="", name="", sub="", group="": Attributes(  # noqa: E731
    u, verb, res, sub, ns, name, group)

ALICE, CAROL, DAVE, ERIN = user("alice"), user("carol"), user("dave"), user("erin")
OPS = user("oscar", ["ops"])


@pytest.mark.parametrize("attrs, allowed", [
    (A(ALICE, "get", "pods", "prod", "web"), True),
    (A(ALICE, "list", "pods", "prod"), True),
    (A(ALICE, "delete", "pods", "prod", "web"), False),
    (A(ALICE, "get", "pods", "dev", "web"), False),              # Role only in its namespace
    (A(ALICE, "list", "pods"), False),                           # -A needs a cluster binding
    (A(ALICE, "get", "pods", "prod", "web", sub="log"), False),  # pods does not cover pods/log
    (A(ALICE, "get", "pods", "dev", "web", sub="log"), True),    # ClusterRole via RoleBinding
    (A(ALICE, "get", "pods", "prod", "web", sub="log"), False),  # ... only in dev
    (A(ALICE, "get", "pods", "dev", "web", group="apps"), False),
    (A(OPS, "list", "nodes"), True),                             # Group subject
    (A(OPS, "get", "nodes", name="n1"), True),
    (A(OPS, "delete", "nodes", name="n1"), False),
    (A(OPS, "get", "nodes", name="n1", sub="status"), False),
    (A(CAROL, "get", "pods", "prod", "web"), True),              # resourceNames
    (A(CAROL, "update", "pods", "prod", "web"), True),
    (A(CAROL, "get", "pods", "prod", "db"), False),
    (A(CAROL, "list", "pods", "prod"), False),                   # list has no name
    (A(DAVE, "update", "pods", "prod", "web", sub="status"), True),   # */status
    (A(DAVE, "update", "nodes", name="n1", sub="status"), True),
    (A(DAVE, "update", "pods", "prod", "web"), False),
    (A(DAVE, "update", "pods", "prod", "web", sub="log"), False),
    (A(ERIN, "get", "pods", "prod", "web", sub="exec"), True),   # "*" covers subresources
    (A(ERIN, "get", "deployments", "x", "y", group="apps"), True),
    (A(ERIN, "list", "pods", "prod"), False),
    (A(user("system:serviceaccount:prod:builder"), "update", "leases", "prod", "l",
       group="coordination.k8s.io"), True),                     # SA in the binding's namespace
    (A(user("system:serviceaccount:dev:builder"), "update", "leases", "prod", "l",
       group="coordination.k8s.io"), False),
    (A(user("system:serviceaccount:tools:ci"), "delete", "leases", "prod", "l",
       group="coordination.k8s.io"), True),
    (A(user("builder"), "get", "leases", "prod", "l", group="coordination.k8s.io"), False),
    (A(user("frank"), "get", "pods", "prod", "web"), False),      # role missing
    (A(user("gina"), "create", "pods", "prod"), False),          # Role of another namespace
    (A(user("gina"), "create", "pods", "dev"), False),
    (A(user("root", ["system:masters"]), "deletecollection", "anything", "x",
       group="weird.io"), True),
    (A(user("mallory"), "get", "pods", "prod", "web"), False),
])
def test_rbac_matrix(attrs, allowed):
    decision = rbac.RbacIndex(POLICY).authorize(attrs)
    assert decision.allowed is allowed, decision


def test_rbac_reasons_and_index_updates():
    index = rbac.RbacIndex(POLICY)
    d = index.authorize(A(ALICE, "get", "pods", "dev", "web", sub="log"))
    assert d.reason == ('RBAC: allowed by RoleBinding "alice-logs/dev" of ClusterRole '
                        '"log-reader" to User "alice"')
    d = index.authorize(A(user("frank"), "get", "pods", "prod", "web"))
    assert not d.allowed and d.reason == 'RBAC: role.rbac.authorization.k8s.io "no-such-role" ' \
                                         'not found'
    # the role appears later: the binding starts to work
    index.upsert(role("no-such-role", "prod", [rule(["get"], ["pods"])]))
    assert index.authorize(A(user("frank"), "get", "pods", "prod", "web")).allowed
    # the binding goes: so does the permission; a replaced role takes effect
    index.remove(POLICY[1])
    assert not index.authorize(A(ALICE, "get", "pods", "prod", "web")).allowed
    index.upsert(role("node-viewer", "", [rule(["get"], ["nodes"])], kind="ClusterRole"))
    assert not index.authorize(A(OPS, "list", "nodes")).allowed
    assert index.authorize(A(OPS, "get", "nodes", name="n1")).allowed
    assert rule(["get"], ["nodes"]) in index.rules_for(OPS, "")


def test_bootstrap_policy():
    objs = rbac.bootstrap_objects()
    for obj in objs:
        assert rbac.VALIDATORS[obj["kind"]](obj) == [], obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["kubernetes.io/bootstrapping"] == "rbac-defaults"
    named = {o["metadata"]["name"]: o for o in objs}
    # view, edit and admin are aggregated as Kubernetes ships them, their rules filled in
    for name, label in (("view", "view"), ("edit", "edit"), ("admin", "admin")):
        assert named[name]["aggregationRule"] == {"clusterRoleSelectors": [{"matchLabels": {
            f"rbac.authorization.k8s.io/aggregate-to-{label}": "true"}}]}
        assert named[name]["rules"] == aggregation.aggregated_rules(named[name], objs)
    assert named["view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"]
    assert named["edit"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"]
    index = rbac.RbacIndex(objs)
    # cluster-admin is bound to system:masters through RBAC too, as Kubernetes ships it
    d = index.authorize(A(user("x", ["system:masters"]), "delete", "nodes", name="n1"))
    assert d.allowed
    sched = user("system:kube-scheduler")
    assert index.authorize(A(sched, "create", "pods", "prod", "web", sub="binding")).allowed
    assert index.authorize(A(sched, "watch", "nodes")).allowed
    assert not index.authorize(A(sched, "delete", "nodes", name="n1")).allowed
    cm = user("system:kube-controller-manager")
    assert index.authorize(A(cm, "update", "nodes", name="n1", sub="status")).allowed
    assert index.authorize(A(cm, "delete", "pods", "prod", "web")).allowed
    assert not index.authorize(A(cm, "create", "roles", "prod", group=rbac.GROUP)).allowed
    # everyone authenticated may ask can-i, nobody else anything
    assert index.authorize(A(user("nobody"), "create", "selfsubjectaccessreviews",
                             group="authorization.k8s.io")).allowed
    assert not index.authorize(A(user("nobody"), "get", "pods", "prod", "web")).allowed
    # admin/edit/view bound in a namespace
    for r, verb, res, sub, group, ok in [
            ("view", "get", "pods", "log", "", True), ("view", "create", "pods", "", "", False),
            ("view", "get", "secrets", "", "", False),
            ("edit", "create", "pods", "exec", "", True), ("edit", "delete", "pods", "", "", True),
            ("edit", "create", "rolebindings", "", rbac.GROUP, False),
            ("admin", "create", "rolebindings", "", rbac.GROUP, True),
            ("admin", "delete", "namespaces", "", "", False)]:
        idx = rbac.RbacIndex(objs + [binding("b", "team", "ClusterRole", r,
                                              [{"kind": "User", "name": "u"}])])
        got = idx.authorize(A(user("u"), verb, res, "team", "x", sub=sub, group=group)).allowed
        assert got is ok, (r, verb, res, sub)
        assert not idx.authorize(A(user("u"), "get", "pods", "other", "x")).allowed


@pytest.mark.parametrize("attrs, message", [
    (A(ALICE, "create", "pods", "prod"),
     'pods is forbidden: User "alice" cannot create resource "pods" in API group "" in the '
     'namespace "prod"'),
    (A(ALICE, "get", "pods", "prod", "web"),
     'pods "web" is forbidden: User "alice" cannot get resource "pods" in API group "" in the '
     'namespace "prod"'),
    (A(ALICE, "get", "pods", "prod", "web", sub="log"),
     'pods "web" is forbidden: User "alice" cannot get resource "pods/log" in API group "" in '
     'the namespace "prod"'),
    (A(ALICE, "list", "nodes"),
     'nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the '
     'cluster scope'),
    (A(ALICE, "delete", "clusterroles", name="admin", group=rbac.GROUP),
     'clusterroles.rbac.authorization.k8s.io "admin" is forbidden: User "alice" cannot delete '
     'resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope'),
])
def test_forbidden_message_is_kube_apiservers(attrs, message):
    assert rbac.forbidden_message(attrs) == message
    verdict = authz.Authorizer(rbac.RbacIndex()).authorize(attrs)
    assert not verdict.allowed and verdict.message == message


@pytest.mark.parametrize("kind, obj, errors", [
    ("Role", role("r", "prod", [{"apiGroups": [""], "resources": ["pods"]}]),
     ["rules[0].verbs: Required value: verbs must contain at least one value"]),
    ("Role", role("r", "prod", [{"verbs": ["get"]}]),
     ["rules[0].apiGroups: Required value: resource rules must supply at least one api group",
      "rules[0].resources: Required value: resource rules must supply at least one resource"]),
    ("Role", role("r", "", [rule(["get"], ["pods"])]), ["metadata.namespace: Required value"]),
    ("Role", role("a/b", "prod", []), ["metadata.name: Invalid value: \"a/b\": may not contain "
                                       "'/'"]),
    ("Role", role("r", "prod", [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]),
     ["rules[0].nonResourceURLs: Invalid value: ['/healthz']: namespaced rules cannot apply to "
      "non-resource URLs"]),
    ("Role", role("r", "prod", [{**rule(["get"], ["pods"]), "verb": ["x"]}]),
     ['rules[0]: unknown field "verb"']),
    ("Role", role("r", "prod", [rule(["get", 3], ["pods"])]),
     ["rules[0].verbs[1]: Invalid value: 3: must be a non-empty string"]),
    ("ClusterRole", role("system:x", "prod", [], kind="ClusterRole"),
     ["metadata.namespace: Forbidden: not allowed on this type"]),
    ("ClusterRole", {**role("c", "", [], kind="ClusterRole"),
                     "aggregationRule": {"clusterRoleSelectors": [
                         {"matchExpressions": [{"key": "a", "operator": "Near"}]}],
                         "extra": 1}},
     ["aggregationRule.extra: Invalid value: unknown field",
      "aggregationRule.clusterRoleSelectors[0].matchExpressions[0].operator: Unsupported value: "
      "'Near': supported values: In, NotIn, Exists, DoesNotExist"]),
    ("ClusterRoleBinding", binding("b", "", "Role", "r", [{"kind": "User", "name": "a"}]),
     ['roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole"']),
    ("RoleBinding", binding("b", "prod", "Role", "", [{"kind": "Robot", "name": "a"}]),
     ["roleRef.name: Required value",
      'subjects[0].kind: Unsupported value: "Robot": supported values: "ServiceAccount", '
      '"User", "Group"']),
    ("ClusterRoleBinding", binding("b", "", "ClusterRole", "r",
                                   [{"kind": "ServiceAccount", "name": "Bad_Name"}]),
     ['subjects[0].name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist '
      "of lower case alphanumeric characters, '-' or '.', and must start and end with an "
      "alphanumeric character", "subjects[0].namespace: Required value"]),
    ("RoleBinding", {**binding("b", "prod", "Role", "r", [{"kind": "User", "name": ""}]),
                     "roleRef": {"kind": "Role", "name": "r", "apiGroup": "v1"}},
     ['roleRef.apiGroup: Unsupported value: "v1": supported values: "rbac.authorization.k8s.io"',
      "subjects[0].name: Required value"]),
])
def test_rbac_validation_field_paths(kind, obj, errors):
    assert rbac.VALIDATORS[kind](obj) == errors


def test_valid_rbac_objects_have_no_errors():
    for obj in POLICY:
        assert rbac.VALIDATORS[obj["kind"]](obj) == [], obj
    # defaulting fills User/Group subjects' apiGroup, as Kubernetes
    b = rbac.default_binding({"subjects": [{"kind": "User", "name": "a"},
                                           {"kind": "ServiceAccount", "name": "s"}]})
    assert b["subjects"] == [{"kind": "User", "name": "a", "apiGroup": rbac.GROUP},
                             {"kind": "ServiceAccount", "name": "s"}]


# ---- impersonation ------------------------------------------------------------------------------

def test_impersonation_needs_the_impersonate_verb():
    index = rbac.RbacIndex(POLICY + [
        role("imp", "", [rule(["impersonate"], ["users"], names=["bob"]),
                         rule(["impersonate"], ["groups"], names=["dev"])], kind="ClusterRole"),
        binding("alice-imp", "", "ClusterRole", "imp", [{"kind": "User", "name": "alice"}]),
        role("imp-sa", "prod", [rule(["impersonate"], ["serviceaccounts"])]),
        binding("dave-imp", "prod", "Role", "imp-sa", [{"kind": "User", "name": "dave"}])])
    authorizer = authz.Authorizer(index)
    bob = authn.impersonate(ALICE, "bob", ["dev"], authorizer)
    assert bob == UserInfo("bob", "", ("dev", "system:authenticated"))
    with pytest.raises(rbac.Forbidden) as e:
        authn.impersonate(ALICE, "carol", [], authorizer)
    assert str(e.value) == ('users "carol" is forbidden: User "alice" cannot impersonate '
                            'resource "users" in API group "" at the cluster scope')
    with pytest.raises(rbac.Forbidden, match='groups "system:masters" is forbidden'):
        authn.impersonate(ALICE, "bob", ["system:masters"], authorizer)
    with pytest.raises(authn.Unauthenticated, match="without impersonating a user"):
        authn.impersonate(ALICE, None, ["dev"], authorizer)
    sa = authn.impersonate(DAVE, "system:serviceaccount:prod:builder", [], authorizer)
    assert sa.groups == ("system:serviceaccounts", "system:serviceaccounts:prod",
                         "system:authenticated")
    with pytest.raises(rbac.Forbidden, match='serviceaccounts "builder" is forbidden.*'
                                             'in the namespace "dev"'):
        authn.impersonate(DAVE, "system:serviceaccount:dev:builder", [], authorizer)
    assert authn.impersonate(ALICE, None, [], authorizer) is ALICE
    # root on the unix socket may be anyone (system:masters)
    creds = authn.credentials_from_metadata([("impersonate-user", "carol")])
    eff, real = authn.identify(creds, local=True, tokens=None, authorizer=authorizer)
    assert (eff.name, real) == ("carol", authn.LOCAL_ADMIN)
    assert not authorizer.decide(A(eff, "get", "pods", "prod", "db")).allowed


# ---- the Node authorizer and NodeRestriction ----------------------------------------------------

N1 = UserInfo("system:node:n1", "", ("system:nodes", "system:authenticated"))
NOT_A_NODE = user("system:node:n1")   # the name without the group: an ordinary user


def pod(name, ns="prod", node="n1", **meta):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, **meta},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}}


@pytest.fixture
def node_authorizer():
    pods = node_authz.PodNodeIndex()
    for p in (pod("mine"), pod("theirs", node="n2"), pod("pending", node="")):
        pods.upsert(p)
    return authz.Authorizer(rbac.RbacIndex(rbac.bootstrap_objects()), pods)


def NA(verb, res, ns="", name="", sub="", group="", fs="", u=N1):  # noqa: N802
    return Attributes(u, verb, res, sub, ns, name, group, fs)


@pytest.mark.parametrize("attrs, allowed", [
    (NA("get", "pods", "prod", "mine"), True),
    (NA("get", "pods", "prod", "theirs"), False),
    (NA("get", "pods", "prod", "pending"), False),
    (NA("get", "pods", "prod", "unknown"), False),
    (NA("list", "pods", fs="spec.nodeName=n1"), True),
    (NA("watch", "pods", fs="status.phase!=Failed,spec.nodeName==n1"), True),
    (NA("list", "pods"), False),
    (NA("watch", "pods", fs="spec.nodeName=n2"), False),
    (NA("list", "pods", fs="spec.nodeName=n1,spec.nodeName=n2"), False),
    (NA("list", "pods", fs="spec.nodeName!=n1"), False),
    (NA("update", "pods", "prod", "mine", sub="status"), True),
    (NA("patch", "pods", "prod", "mine", sub="status"), True),
    (NA("update", "pods", "prod", "theirs", sub="status"), False),
    (NA("delete", "pods", "prod", "mine"), True),
    (NA("delete", "pods", "prod", "theirs"), False),
    (NA("create", "pods", "prod"), True),                     # admission narrows it
    (NA("get", "pods", "prod", "mine", sub="log"), False),
    (NA("create", "pods", "prod", "mine", sub="exec"), False),
    (NA("create", "pods", "prod", "mine", sub="binding"), False),
    (NA("get", "nodes", name="n2"), True),
    (NA("list", "nodes"), True),
    (NA("create", "nodes"), True),
    (NA("update", "nodes", name="n1"), True),
    (NA("patch", "nodes", name="n1", sub="status"), True),
    (NA("update", "nodes", name="n2"), False),
    (NA("patch", "nodes", name="n2", sub="status"), False),
    (NA("delete", "nodes", name="n1"), False),
    (NA("get", "leases", "kube-node-lease", "n1", group="coordination.k8s.io"), True),
    (NA("update", "leases", "kube-node-lease", "n1", group="coordination.k8s.io"), True),
    (NA("create", "leases", "kube-node-lease", group="coordination.k8s.io"), True),
    (NA("update", "leases", "kube-node-lease", "n2", group="coordination.k8s.io"), False),
    (NA("get", "leases", "kube-system", "n1", group="coordination.k8s.io"), False),
    (NA("create", "events", "prod"), True),
    (NA("create", "events", "prod", group="events.k8s.io"), True),
    (NA("delete", "events", "prod", "e"), False),
    (NA("get", "namespaces", "prod", "prod"), True),
    (NA("list", "namespaces"), False),
    (NA("get", "secrets", "prod", "s"), False),
    (NA("list", "roles", "prod", group=rbac.GROUP), False),
    (NA("get", "pods", "prod", "mine", u=NOT_A_NODE), False),
    (NA("list", "nodes", u=NOT_A_NODE), False),
])
def test_node_authorizer_matrix(node_authorizer, attrs, allowed):
    decision = node_authorizer.decide(attrs)
    assert decision.allowed is allowed, decision


def test_node_denials_carry_the_reason(node_authorizer):
    v = node_authorizer.authorize(NA("get", "pods", "prod", "theirs"))
    assert v.message == ('pods "theirs" is forbidden: User "system:node:n1" cannot get resource '
                         '"pods" in API group "" in the namespace "prod": no relationship found '
                         "between node 'n1' and this object")
    v = node_authorizer.authorize(NA("list", "pods"))
    assert v.message.endswith("at the cluster scope: can only list pods with spec.nodeName "
                              "field selector set to node 'n1'")


def test_node_restriction_admission(node_authorizer):
    auth = node_authorizer.authorize
    mirror = pod("static-web", node="n1",
                 annotations={node_authz.MIRROR_POD_ANNOTATION: "abc"},
                 ownerReferences=[{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u"}])
    assert auth(NA("create", "pods", "prod"), mirror).allowed
    v = auth(NA("create", "pods", "prod"), pod("plain"))
    assert not v.allowed and v.message == (
        'pods "plain" is forbidden: pod does not have "kubernetes.io/config.mirror" annotation, '
        'node "n1" can only create mirror pods')
    elsewhere = pod("m", node="n2", annotations={node_authz.MIRROR_POD_ANNOTATION: "x"})
    assert auth(NA("create", "pods", "prod"), elsewhere).reason == \
        'node "n1" can only create pods with spec.nodeName set to itself'
    owned = pod("m", annotations={node_authz.MIRROR_POD_ANNOTATION: "x"},
                ownerReferences=[{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r"}])
    assert "owner reference" in auth(NA("create", "pods", "prod"), owned).reason
    # status of its own pods; the stored object decides, not a stale cache
    assert auth(NA("update", "pods", "prod", "mine", sub="status"), pod("mine"),
                pod("mine")).allowed
    moved = pod("mine", node="n2")
    assert not auth(NA("update", "pods", "prod", "mine", sub="status"), moved, moved).allowed
    # the pod itself: only removing finalizers
    old = pod("mine", finalizers=["podnet.io/kubelet"], resourceVersion="5")
    done = pod("mine", resourceVersion="5")
    assert auth(NA("update", "pods", "prod", "mine"), done, old).allowed
    relabel = pod("mine", labels={"a": "b"})
    assert auth(NA("update", "pods", "prod", "mine"), relabel, old).reason == \
        'node "n1" can only remove finalizers from pods bound to it'
    added = pod("mine", finalizers=["podnet.io/kubelet", "x"])
    assert not auth(NA("patch", "pods", "prod", "mine"), added, old).allowed
    # its own Node, not another, and not its taints once registered
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {}},
            "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}}
    other = {**node, "metadata": {"name": "n2"}}
    assert auth(NA("create", "nodes"), node).allowed
    assert auth(NA("create", "nodes"), other).reason == 'node "n1" is not allowed to modify node ' \
                                                        '"n2"'
    assert auth(NA("update", "nodes", name="n1"), node, node).allowed
    untainted = {**node, "spec": {}}
    assert auth(NA("update", "nodes", name="n1"), untainted, node).reason == \
        'node "n1" is not allowed to modify taints'
    assert auth(NA("update", "nodes", name="n1", sub="status"), untainted, node).allowed
    restricted = {**node, "metadata": {"name": "n1", "labels": {
        "node-restriction.kubernetes.io/tier": "gold"}}}
    assert "not allowed to set the following labels: node-restriction.kubernetes.io/tier" in \
        auth(NA("create", "nodes"), restricted).reason
    assert "not allowed to modify labels" in auth(NA("update", "nodes", name="n1"), restricted,
                                                  node).reason
    lease = {"kind": "Lease", "metadata": {"name": "n2", "namespace": "kube-node-lease"}}
    assert not auth(NA("create", "leases", "kube-node-lease", group="coordination.k8s.io"),
                    lease).allowed
    lease["metadata"]["name"] = "n1"
    assert auth(NA("create", "leases", "kube-node-lease", group="coordination.k8s.io"),
                lease).allowed
    # other users are not narrowed by NodeRestriction
    admin = user("root", ["system:masters"])
    assert authz.Authorizer(rbac.RbacIndex()).authorize(
        Attributes(admin, "create", "pods", "", "prod"), pod("plain")).allowed


def test_pod_node_index_follows_the_watch():
    idx = node_authz.PodNodeIndex()
    idx.upsert(pod("a", node=""))
    assert idx("prod", "a") is None
    idx.upsert(pod("a", node="n3"))
    assert idx("prod", "a") == "n3"
    idx.remove(pod("a"))
    assert idx("prod", "a") is None


# ---- audit --------------------------------------------------------------------------------------

def test_audit_lines(tmp):
    path = os.path.join(tmp, "audit.log")
    log = audit.AuditLog(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert log.record(A(ALICE, "get", "pods", "prod", "web"), True, "OK") is None  # a read
        log.record(A(ALICE, "create", "pods", "prod", "web"), True, "OK",
                   reason="RBAC: allowed by x", now=0, source_ip="10.0.0.9")
        log.record(A(ALICE, "get", "pods", "prod", "db", sub="log"), False, "PERMISSION_DENIED")
        log.record(A(user("bob"), "delete", "roles", "prod", "r", group=rbac.GROUP), True,
                   "NOT_FOUND", requester=ALICE)
        log.record(A(UserInfo("x" * 10000, "", tuple(f"g{i}" for i in range(100))), "update",
                     "pods", "prod", "n" * 5000), False, "PERMISSION_DENIED")
    finally:
        log.close()
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 4
    first = lines[0]
    assert set(first) == {"time", "auditID", "stage", "user", "uid", "groups", "verb",
                          "resource", "namespace", "name", "decision", "reason", "code",
                          "sourceIP"}
    assert first["time"] == "1970-01-01T00:00:00Z" and first["stage"] == "ResponseComplete"
    assert (first["user"], first["groups"], first["verb"], first["resource"],
            first["namespace"], first["name"], first["decision"], first["code"]) == \
        ("alice", ["system:authenticated"], "create", "pods", "prod", "web", "allow", "OK")
    assert len(first["auditID"]) == 36 and first["auditID"] != lines[1]["auditID"]
    assert (lines[1]["resource"], lines[1]["decision"], lines[1]["code"]) == \
        ("pods/log", "forbid", "PERMISSION_DENIED")
    assert lines[2]["user"] == "alice" and lines[2]["impersonatedUser"] == \
        {"user": "bob", "groups": ["system:authenticated"]}
    assert lines[2]["apiGroup"] == rbac.GROUP
    assert len(lines[3]["user"]) <= audit.MAX_STRING + 1 and len(lines[3]["groups"]) == 33


def test_audit_concurrent_writers_never_interleave(tmp):
    path = os.path.join(tmp, "audit.log")
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    log = audit.AuditLog(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600   # tightened
    other = audit.AuditLog(path)   # a second writer on the same file (another process's view)

    def writer(lg, who):
        for i in range(200):
            lg.record(A(user(who), "patch", "pods", "prod", f"p{i}" * 20), True, "OK")
    threads = [threading.Thread(target=writer, args=(lg, f"u{n}"))
               for n, lg in enumerate([log, log, other, other])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    other.close()
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 800
    assert {line["user"] for line in lines} == {"u0", "u1", "u2", "u3"}


# ---- escalation prevention ----------------------------------------------------------------------

def test_nobody_grants_what_they_do_not_hold():
    objs = rbac.bootstrap_objects() + [
        binding("ann-admin", "team", "ClusterRole", "admin", [{"kind": "User", "name": "ann"}])]
    auth = authz.Authorizer(rbac.RbacIndex(objs)).authorize
    ann = user("ann")
    rb = lambda name, ref_kind, ref: binding(name, "team", ref_kind, ref,  # noqa: E731
                                             [{"kind": "User", "name": "bo"}])
    create_rb = A(ann, "create", "rolebindings", "team", group=rbac.GROUP)
    # a namespace admin may hand out view/edit/admin in the namespace: it holds all of it there
    assert auth(create_rb, rb("bo-edit", "ClusterRole", "edit")).allowed
    assert auth(create_rb, rb("bo-admin", "ClusterRole", "admin")).allowed
    # but not cluster-admin (which would let bo delete the namespace itself, or read nodes)
    v = auth(create_rb, rb("bo-root", "ClusterRole", "cluster-admin"))
    assert not v.allowed
    assert v.message.startswith(
        'rolebindings.rbac.authorization.k8s.io "bo-root" is forbidden: user "ann" '
        '(groups=["system:authenticated"]) is attempting to grant RBAC permissions not '
        'currently held:\n{APIGroups:["*"], Resources:["*"], Verbs:["*"]}')
    assert not auth(create_rb, rb("bo-x", "ClusterRole", "no-such")).allowed
    # nor write a role with more than it has
    create_role = A(ann, "create", "roles", "team", group=rbac.GROUP)
    ok = role("pods-rw", "team", [rule(["get"], ["pods", "pods/log"]), rule(["delete"], ["pods"])])
    assert auth(create_role, ok).allowed
    # admin may read logs, not delete them: such a rule is more than ann holds
    assert not auth(create_role, role("r", "team", [rule(["delete"], ["pods/log"])])).allowed
    too_much = role("sneaky", "team", [rule(["get"], ["pods"]), rule(["delete"], ["namespaces"])])
    v = auth(create_role, too_much)
    assert v.message.endswith('{APIGroups:[""], Resources:["namespaces"], Verbs:["delete"]}')
    # with the escalate / bind verbs it may
    idx = rbac.RbacIndex(objs + [
        role("esc", "team", [rule(["escalate", "bind"], ["roles", "clusterroles"],
                                  groups=[rbac.GROUP])]),
        binding("ann-esc", "team", "Role", "esc", [{"kind": "User", "name": "ann"}])])
    auth2 = authz.Authorizer(idx).authorize
    assert auth2(create_role, too_much).allowed
    assert auth2(create_rb, rb("bo-root", "ClusterRole", "cluster-admin")).allowed
    # system:masters needs nothing
    root = user("root", ["system:masters"])
    assert authz.Authorizer(rbac.RbacIndex()).authorize(
        A(root, "create", "clusterrolebindings", group=rbac.GROUP),
        binding("x", "", "ClusterRole", "cluster-admin", [{"kind": "User", "name": "z"}])).allowed


def test_ungranted_rule_coverage():
    owner = [rule(["get", "list"], ["pods", "*/status"]), rule(["*"], ["leases"], ["coord"]),
             rule(["get"], ["secrets"], names=["a", "b"]),
             {"nonResourceURLs": ["/healthz/*"], "verbs": ["get"]}]
    assert rbac.ungranted(owner, [rule(["get"], ["pods", "nodes/status"])]) == []
    assert rbac.ungranted(owner, [rule(["update", "get"], ["leases"], ["coord"])]) == []
    assert rbac.ungranted(owner, [rule(["get"], ["secrets"], names=["a"])]) == []
    assert rbac.ungranted(owner, [rule(["get"], ["secrets"])]) == [rule(["get"], ["secrets"])]
    assert rbac.ungranted(owner, [rule(["*"], ["pods"])]) == [rule(["*"], ["pods"])]
    assert rbac.ungranted(owner, [rule(["get"], ["pods/log"])]) == [rule(["get"], ["pods/log"])]
    assert rbac.ungranted(owner, [{"nonResourceURLs": ["/healthz/ready"], "verbs": ["get"]}]) == []
    assert rbac.ungranted(owner, [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]) != []


def test_can_i_resource_argument():
    assert rbac.parse_resource("pods/log") == ("pods", "log", "")
    assert rbac.parse_resource("deployments.apps") == ("deployments", "", "apps")
    assert rbac.parse_resource("leases") == ("leases", "", "coordination.k8s.io")
    assert rbac.parse_resource("Roles.rbac.authorization.k8s.io") == ("roles", "", rbac.GROUP)
    assert rbac.parse_resource("widgets", {"widgets": "example.com"}) == \
        ("widgets", "", "example.com")


def test_aggregated_rules_pick_by_label_in_name_order_each_rule_once():
    def cr(name, rules, labels=None, selectors=None):
        obj = {**role(name, "", rules, kind="ClusterRole")}
        obj["metadata"]["labels"] = labels or {}
        if selectors is not None:
            obj["aggregationRule"] = {"clusterRoleSelectors": selectors}
        return obj
    pick = [{"matchLabels": {"agg": "yes"}}]
    target = cr("target", [rule(["get"], ["stale"])], selectors=pick)
    roles = [target, cr("b", [rule(["get"], ["pods"]), rule(["list"], ["pods"])], {"agg": "yes"}),
             cr("a", [rule(["get"], ["pods"]), rule(["get"], ["nodes"])], {"agg": "yes"}),
             cr("c", [rule(["delete"], ["pods"])], {"agg": "no"}),
             cr("self", [rule(["get"], ["x"])], {"agg": "yes"}, selectors=pick)]
    assert aggregation.aggregated_rules(target, roles) == [
        rule(["get"], ["pods"]), rule(["get"], ["nodes"]), rule(["list"], ["pods"]),
        rule(["get"], ["x"])]
    # a role never picks itself; a role without aggregationRule is not aggregated
    assert rule(["get"], ["x"]) not in aggregation.aggregated_rules(roles[-1], roles)
    assert aggregation.aggregated_rules(roles[1], roles) is None
    assert aggregation.aggregated_rules(cr("none", [], selectors=[]), roles) == []
