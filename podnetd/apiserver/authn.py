"""Who is asking: authentication of cluster API requests, as kube-apiserver does it.

- x509 client certificates (CN = user name, O = groups), verified against --client-ca by the TLS
  layer; here the identity is read from the certificate and its validity period checked again, so
  an expired certificate is refused whatever the TLS layer let through. verify_client_cert() does
  the whole check (chain to the CA, period, key usage) where no TLS layer verified it.
- Bearer tokens from --token-auth-file (CSV: token,user,uid,"group1,group2").
- The local unix socket is root on the node: LOCAL_ADMIN, in group system:masters.
- Impersonation (kubectl --as / --as-group): allowed by the `impersonate` verb on users, groups,
  uids and serviceaccounts, as Kubernetes' impersonation filter.

Every authenticated user is also in group system:authenticated. Nodes are users system:node:NAME
in group system:nodes (NODE_GROUP), as the kubelet's client certificate says.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import hmac
import io
from typing import Callable, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podnetd.apiserver import rbac

AUTHENTICATED_GROUP = "system:authenticated"
MASTERS_GROUP = rbac.MASTERS_GROUP
NODE_GROUP = "system:nodes"
NODE_USER_PREFIX = "system:node:"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"

# Bounds on what a client or a token file may hand us (hostile input).
MAX_TOKEN_FILE_BYTES = 16 << 20
MAX_FIELD = 1024          # a user name, uid, group name or token
MAX_GROUPS = 256
MAX_CERT_BYTES = 64 << 10
MAX_CHAIN = 5


@dataclasses.dataclass(frozen=True)
class UserInfo:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()

    def in_group(self, group: str) -> bool:
        return group in self.groups


LOCAL_ADMIN = UserInfo("system:admin", "", (MASTERS_GROUP, AUTHENTICATED_GROUP))


class Unauthenticated(Exception):
    """No credentials, or credentials that prove nothing: the request is refused (UNAUTHENTICATED)
    and nothing is done. The message is safe to return to the client."""


class TokenFileError(Exception):
    """A --token-auth-file that cannot be used; the message names the file and the line."""


def node_name(user: UserInfo) -> str | None:
    """NAME when the user is a node (system:node:NAME in group system:nodes), as Kubernetes'
    NodeIdentifier: both the name and the group are required."""
    if not user.name.startswith(NODE_USER_PREFIX) or NODE_GROUP not in user.groups:
        return None
    return user.name[len(NODE_USER_PREFIX):] or None


def _with_authenticated(groups: Iterable[str]) -> tuple[str, ...]:
    out = list(dict.fromkeys(groups))
    if AUTHENTICATED_GROUP not in out:
        out.append(AUTHENTICATED_GROUP)
    return tuple(out)


def _check_name(value: str, what: str) -> str | None:
    """Why `value` is not a usable user/group/uid string, or None."""
    if len(value) > MAX_FIELD:
        return f"{what} is longer than {MAX_FIELD} characters"
    if value != value.strip():
        return f"{what} {value!r} has leading or trailing whitespace"
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in value):
        return f"{what} {value!r} contains a control character"
    return None


def _check_token(token: str) -> str | None:
    # Printable ASCII without spaces: what an `authorization: Bearer X` metadata value can carry.
    if not token:
        return "empty token"
    if len(token) > MAX_FIELD:
        return f"token is longer than {MAX_FIELD} characters"
    if any(not 0x21 <= ord(c) <= 0x7e for c in token):
        return "token contains a character other than printable ASCII (no spaces)"
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenFile:
    """kube-apiserver's --token-auth-file: one `token,user,uid[,"group1,group2"]` record a line.

    Stricter than kube-apiserver where it would silently do something surprising: a bad line is
    an error naming its line number rather than skipped, a duplicate token is refused rather than
    the later line winning, and a fifth column (unquoted groups: `t,u,1,g1,g2`) is refused rather
    than dropping g2."""

    def __init__(self, users: dict[bytes, tuple[str, UserInfo]], source: str):
        self._users = users    # sha256(token) -> (token, user)
        self.source = source

    def __len__(self) -> int:
        return len(self._users)

    @classmethod
    def load(cls, path: str) -> "TokenFile":
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as e:
            raise TokenFileError(f"token file {path}: {e.strerror or e}") from None
        if len(data) > MAX_TOKEN_FILE_BYTES:
            raise TokenFileError(f"token file {path}: larger than {MAX_TOKEN_FILE_BYTES} bytes")
        return cls.parse(data, source=path)

    @classmethod
    def parse(cls, data: bytes | str, source: str = "<token file>") -> "TokenFile":
        if isinstance(data, bytes):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                line = data.count(b"\n", 0, e.start) + 1
                raise TokenFileError(f"token file {source} line {line}: not UTF-8") from None
        else:
            text = data
        if text.startswith("\ufeff"):
            text = text[1:]
        users: dict[bytes, tuple[str, UserInfo]] = {}
        first_line: dict[bytes, int] = {}
        reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
        start = 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise TokenFileError(f"token file {source} line {reader.line_num}: {e}") from None
            line, start = start, reader.line_num + 1
            if not record:   # a blank line, as kube-apiserver's CSV reader skips them
                continue

            def bad(why: str) -> TokenFileError:
                return TokenFileError(f"token file {source} line {line}: {why}")

            if reader.line_num != line:
                raise bad("a quoted field spans lines")
            if len(record) < 3:
                raise bad(f"must have at least 3 columns (token, user name, user uid), "
                          f"found {len(record)}")
            if len(record) > 4:
                raise bad(f"has {len(record)} columns, at most 4 (token, user name, user uid, "
                          f'groups): quote the groups, as in tok,alice,1,"group1,group2"')
            token, name, uid = record[0], record[1], record[2]
            if why := _check_token(token):
                raise bad(why)
            if not name:
                raise bad("empty user name")
            for value, what in ((name, "user name"), (uid, "uid")):
                if why := _check_name(value, what):
                    raise bad(why)
            groups: list[str] = []
            if len(record) == 4 and record[3].strip():
                groups = [g.strip() for g in record[3].split(",")]
                if len(groups) > MAX_GROUPS:
                    raise bad(f"more than {MAX_GROUPS} groups")
                for g in groups:
                    if not g:
                        raise bad(f"empty group name in {record[3]!r}")
                    if why := _check_name(g, "group"):
                        raise bad(why)
            key = _digest(token)
            if key in users:
                raise bad(f"duplicate token (first on line {first_line[key]})")
            first_line[key] = line
            users[key] = (token, UserInfo(name, uid, tuple(dict.fromkeys(groups))))
        return cls(users, source)

    def lookup(self, token: str) -> UserInfo | None:
        """The token's user (groups as in the file, without system:authenticated), or None.
        The dict is keyed by the token's SHA-256, so the lookup's timing says nothing about how
        much of a guessed token was right; the final comparison is constant-time."""
        if _check_token(token):
            return None
        entry = self._users.get(_digest(token))
        if entry is None or not hmac.compare_digest(entry[0].encode(), token.encode()):
            return None
        return entry[1]


# ---- x509 ---------------------------------------------------------------------------------------

def _now(now: float | datetime.datetime | None) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if isinstance(now, datetime.datetime):
        return now if now.tzinfo else now.replace(tzinfo=datetime.timezone.utc)
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc)


def _stamp(t: datetime.datetime) -> str:
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_certs(data: bytes | str) -> list[x509.Certificate]:
    """Every certificate in PEM (one or more blocks) or one DER certificate; Unauthenticated when
    there is none or it does not parse."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if not data:
        raise Unauthenticated("empty client certificate")
    if len(data) > MAX_CERT_BYTES:
        raise Unauthenticated(f"client certificate larger than {MAX_CERT_BYTES} bytes")
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise Unauthenticated(f"client certificate does not parse: {e}") from None
    if not certs:
        raise Unauthenticated("no client certificate in the data")
    return certs


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:
        return "<unprintable subject>"


def _check_period(cert: x509.Certificate, now: datetime.datetime, what: str) -> None:
    # kube-apiserver's (Go's) wording: "x509: certificate has expired or is not yet valid: ..."
    if now > cert.not_valid_after_utc:
        raise Unauthenticated(
            f"{what} {_subject(cert)}: x509: certificate has expired or is not yet valid: "
            f"current time {_stamp(now)} is after {_stamp(cert.not_valid_after_utc)}")
    if now < cert.not_valid_before_utc:
        raise Unauthenticated(
            f"{what} {_subject(cert)}: x509: certificate has expired or is not yet valid: "
            f"current time {_stamp(now)} is before {_stamp(cert.not_valid_before_utc)}")


def _check_client_usage(cert: x509.Certificate) -> None:
    # Go's verifier (and so kube-apiserver) requires the clientAuth extended key usage when the
    # certificate names any; a server-only certificate is not a user's.
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    except ValueError as e:
        raise Unauthenticated(f"client certificate {_subject(cert)}: bad extension: {e}") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku and \
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        raise Unauthenticated(f"client certificate {_subject(cert)}: x509: certificate specifies "
                              "an incompatible key usage (no clientAuth)")


def user_from_cert(cert: x509.Certificate) -> UserInfo:
    """CN = user name, every O = a group (in the certificate's order), as kube-apiserver."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not isinstance(cns[0].value, str) or not cns[0].value:
        raise Unauthenticated(f"client certificate {_subject(cert)}: needs exactly one common "
                              "name (CN), the user name")
    name = cns[0].value
    groups = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if len(groups) > MAX_GROUPS:
        raise Unauthenticated(f"client certificate {_subject(cert)}: more than {MAX_GROUPS} "
                              "organizations (groups)")
    for value, what in [(name, "user name")] + [(g, "group") for g in groups]:
        why = _check_name(value, what) if isinstance(value, str) and value else f"empty {what}"
        if why:
            raise Unauthenticated(f"client certificate {_subject(cert)}: {why}")
    return UserInfo(name, "", _with_authenticated(groups))


def authenticate_cert(peer_cert: bytes | str, now: float | datetime.datetime | None = None
                      ) -> UserInfo:
    """The user of a client certificate the TLS layer verified against --client-ca: the first
    certificate of the data is the client's. Its validity period is checked again here."""
    cert = load_certs(peer_cert)[0]
    _check_period(cert, _now(now), "client certificate")
    _check_client_usage(cert)
    return user_from_cert(cert)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_client_cert(pem: bytes | str, ca_pem: bytes | str,
                       now: float | datetime.datetime | None = None) -> UserInfo:
    """The whole check the TLS layer does with --client-ca, for identities that did not come
    through it (forwarded, or read from a file): `pem` is the client's certificate, optionally
    followed by intermediates; `ca_pem` the trusted CA bundle. The chain must end at a CA of the
    bundle by signature, every certificate in it be within its validity period, intermediates be
    CAs, and the client certificate allow clientAuth. Returns the user; Unauthenticated if not."""
    chain = load_certs(pem)
    try:
        roots = x509.load_pem_x509_certificates(ca_pem.encode() if isinstance(ca_pem, str)
                                                else ca_pem)
    except ValueError as e:
        raise Unauthenticated(f"client CA bundle does not parse: {e}") from None
    when = _now(now)
    leaf, intermediates = chain[0], chain[1:MAX_CHAIN]
    _check_period(leaf, when, "client certificate")
    _check_client_usage(leaf)
    current = leaf
    for _ in range(MAX_CHAIN + 1):
        for root in roots:
            if current.issuer == root.subject and _issued_by(current, root):
                _check_period(root, when, "client CA")
                return user_from_cert(leaf)
        step = next((c for c in intermediates if current.issuer == c.subject and _is_ca(c)
                     and _issued_by(current, c)), None)
        if step is None:
            break
        _check_period(step, when, "intermediate certificate")
        intermediates = [c for c in intermediates if c is not step]
        current = step
    raise Unauthenticated(f"client certificate {_subject(leaf)}: x509: certificate signed by "
                          "unknown authority")


# ---- requests -----------------------------------------------------------------------------------

def authenticate(peer_cert: bytes | str | None, bearer_token: str | None, *,
                 tokens: TokenFile | None = None,
                 now: float | datetime.datetime | None = None) -> UserInfo:
    """The request's user from its client certificate (already verified by the TLS layer) or its
    bearer token. As kube-apiserver's union of authenticators, the first that succeeds wins, the
    certificate first; when none does the errors of all are in the message."""
    errors: list[str] = []
    if peer_cert:
        try:
            return authenticate_cert(peer_cert, now)
        except Unauthenticated as e:
            errors.append(str(e))
    if bearer_token is not None:
        user = tokens.lookup(bearer_token) if tokens is not None else None
        if user is not None:
            return dataclasses.replace(user, groups=_with_authenticated(user.groups))
        errors.append("invalid bearer token")
    if not errors:
        raise Unauthenticated("no credentials: a client certificate signed by the cluster's "
                              "client CA or a bearer token is needed")
    raise Unauthenticated("; ".join(errors))


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a request carries: the verified peer certificate (PEM) from the TLS layer, a bearer
    token, and what it asks to impersonate."""
    peer_cert: bytes | None = None
    token: str | None = None
    impersonate_user: str | None = None
    impersonate_groups: tuple[str, ...] = ()
    impersonate_uid: str | None = None
    peer: str = ""     # grpc's peer address: "ipv4:10.0.0.1:5555", "unix:..."

    @property
    def impersonating(self) -> bool:
        return bool(self.impersonate_user or self.impersonate_groups or self.impersonate_uid)


# gRPC metadata keys (lower case: HTTP/2 header names), the HTTP headers kubectl sends.
AUTHORIZATION_KEY = "authorization"
IMPERSONATE_USER_KEY = "impersonate-user"
IMPERSONATE_GROUP_KEY = "impersonate-group"
IMPERSONATE_UID_KEY = "impersonate-uid"


def _metadata_str(value) -> str:
    if isinstance(value, bytes):   # only keys ending in -bin are bytes; refuse, never guess
        raise Unauthenticated("binary credential metadata")
    return str(value)


def credentials_from_metadata(metadata: Iterable[tuple[str, str | bytes]], peer_cert: bytes | None
                              = None, peer: str = "") -> Credentials:
    token: str | None = None
    user: str | None = None
    uid: str | None = None
    groups: list[str] = []
    seen_auth = 0
    for key, value in metadata or ():
        key = key.lower()
        if key == AUTHORIZATION_KEY:
            seen_auth += 1
            parts = _metadata_str(value).split(" ")
            # kube-apiserver: "Bearer" in any case, one space, then the token
            if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1]:
                raise Unauthenticated("invalid bearer token: authorization must be "
                                      "'Bearer TOKEN'")
            token = parts[1]
        elif key == IMPERSONATE_USER_KEY:
            if user is not None:
                raise Unauthenticated("more than one impersonate-user")
            user = _metadata_str(value)
        elif key == IMPERSONATE_UID_KEY:
            if uid is not None:
                raise Unauthenticated("more than one impersonate-uid")
            uid = _metadata_str(value)
        elif key == IMPERSONATE_GROUP_KEY:
            groups.append(_metadata_str(value))
    if seen_auth > 1:
        raise Unauthenticated("more than one authorization value")
    if len(groups) > MAX_GROUPS:
        raise Unauthenticated(f"more than {MAX_GROUPS} impersonate-group values")
    return Credentials(peer_cert, token, user, tuple(groups), uid, peer)


def credentials_from_grpc(context) -> Credentials:
    """The credentials of a grpc.aio (or sync) ServicerContext: the client certificate the TLS
    layer verified (auth_context's 'x509_pem_cert') and the authorization/impersonate-* metadata."""
    auth = context.auth_context() or {}
    certs = auth.get("x509_pem_cert") or []
    peer_cert = certs[0] if certs else None
    if isinstance(peer_cert, str):
        peer_cert = peer_cert.encode()
    return credentials_from_metadata(context.invocation_metadata() or (), peer_cert,
                                     context.peer() or "")


def impersonate(requester: UserInfo, user: str | None, groups: Iterable[str] = (),
                authorizer: Callable[[rbac.Attributes], rbac.Decision] | None = None,
                uid: str | None = None) -> UserInfo:
    """The user `requester` acts as (kubectl --as/--as-group/--as-uid), after checking the
    `impersonate` verb on every part as Kubernetes' impersonation filter: users (or
    serviceaccounts for system:serviceaccount:NS:NAME), groups, uids. Raises rbac.Forbidden with
    kube-apiserver's message, or Unauthenticated for a malformed request (groups without a user).
    Returns requester unchanged when nothing is asked."""
    groups = tuple(groups)
    if not user and not groups and not uid:
        return requester
    if not user:
        raise Unauthenticated("requested impersonation of groups or uid without impersonating "
                              "a user")
    for value, what in [(user, "impersonated user")] + [(g, "impersonated group") for g in groups] \
            + ([(uid, "impersonated uid")] if uid else []):
        if not value or (why := _check_name(value, what)):
            raise Unauthenticated(why or f"empty {what}")
    if authorizer is None:
        raise rbac.Forbidden("impersonation is not enabled")
    checks: list[rbac.Attributes] = []
    if user.startswith(SERVICE_ACCOUNT_PREFIX) and user.count(":") == 3:
        _, _, ns, name = user.split(":")
        checks.append(rbac.Attributes(requester, "impersonate", "serviceaccounts", "", ns, name))
    else:
        checks.append(rbac.Attributes(requester, "impersonate", "users", "", "", user))
    checks += [rbac.Attributes(requester, "impersonate", "groups", "", "", g) for g in groups]
    if uid:
        checks.append(rbac.Attributes(requester, "impersonate", "uids", "", "", uid,
                                      api_group="authentication.k8s.io"))
    for attrs in checks:
        decision = authorizer(attrs)
        if not decision.allowed:
            raise rbac.Forbidden(rbac.forbidden_message(attrs, decision.reason), attrs)
    out = list(groups)
    if user.startswith(SERVICE_ACCOUNT_PREFIX) and user.count(":") == 3 and not groups:
        # as Kubernetes: a service account without explicit groups gets its two implicit ones
        out = [SERVICE_ACCOUNTS_GROUP, SERVICE_ACCOUNTS_GROUP + ":" + user.split(":")[2]]
    return UserInfo(user, uid or "", _with_authenticated(out))


def identify(creds: Credentials, *, local: bool, tokens: TokenFile | None,
             authorizer: Callable[[rbac.Attributes], rbac.Decision] | None,
             now: float | datetime.datetime | None = None) -> tuple[UserInfo, UserInfo | None]:
    """A request's effective user: LOCAL_ADMIN on the node's unix socket (local=True), else the
    certificate's or token's user; then the impersonation asked for. Returns (effective user,
    the authenticated requester when impersonating, for the audit log; else None)."""
    requester = LOCAL_ADMIN if local else authenticate(creds.peer_cert, creds.token,
                                                       tokens=tokens, now=now)
    if not creds.impersonating:
        return requester, None
    return impersonate(requester, creds.impersonate_user, creds.impersonate_groups, authorizer,
                       creds.impersonate_uid), requester
