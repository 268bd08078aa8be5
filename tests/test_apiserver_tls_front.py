"""The cluster API's TLS front (podnetd/apiserver/tls_front.py), with real TLS and real gRPC: a
grpc.aio backend on 127.0.0.1 whose AccessService.WhoAmI answers from what the front says about
the caller, real certificates from the openssl CLI (a CA by podnetd.lab.pki, client certificates
by `openssl ca`, which can date a certificate in the past), and hostile raw-socket clients."""
import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import grpc
import pytest

from podnetd.api.podnet.api.v1 import api_pb2, api_pb2_grpc
from podnetd.apiserver import tls_front
from podnetd.apiserver.tls_front import ClientIdentity, PeerGone, TlsFront, TlsFrontError
from podnetd.lab import pki

# --- certificates ------------------------------------------------------------------------------

CA_CONF = """[ca]
default_ca = ca_default
[ca_default]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = policy_any
unique_subject = no
[policy_any]
commonName = supplied
organizationName = optional
"""


def openssl(*args: str, cwd: str | None = None) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


def client_cert(directory: str, ca: tuple[str, str], name: str, subject: str,
                start: str = "", end: str = "") -> tuple[str, str]:
    """A client certificate (clientAuth) signed by `ca` with `openssl ca`, whose -startdate and
    -enddate (YYYYMMDDHHMMSSZ) may lie in the past or the future. Returns (cert, key)."""
    ca_cert, ca_key = ca
    cadir = os.path.join(directory, f"ca-db-{name}")
    os.makedirs(cadir)
    open(os.path.join(cadir, "index.txt"), "w").close()
    with open(os.path.join(cadir, "serial"), "w") as f:
        f.write("1000\n")
    conf = os.path.join(cadir, "ca.cnf")
    with open(conf, "w") as f:
        f.write(CA_CONF.format(dir=cadir))
    ext = os.path.join(cadir, "ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=clientAuth\n")
    key, csr, crt = (os.path.join(directory, f"{name}.{x}") for x in ("key", "csr", "crt"))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", subject)
    dates = []
    if start:
        dates += ["-startdate", start]
    dates += ["-enddate", end] if end else ["-days", "2"]
    openssl("ca", "-batch", "-config", conf, "-cert", ca_cert, "-keyfile", ca_key, "-in", csr,
            "-out", crt, "-notext", "-extfile", ext, *dates)
    return crt, key


def stamp(offset_days: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() + offset_days * 86400))


@pytest.fixture(scope="module")
def certs():
    d = tempfile.mkdtemp(prefix="pt-tlsfront-")
    try:
        ca = pki.make_ca(os.path.join(d, "ca"), "tlsfront")
        server = pki.make_node_cert(os.path.join(d, "server"), *ca, "apiserver", "127.0.0.1")
        evil_ca = pki.make_ca(os.path.join(d, "evil"), "evil")
        yield {
            "ca": ca[0], "server": server,
            "alice": client_cert(d, ca, "alice", "/CN=alice/O=dev/O=ops"),
            "bob": client_cert(d, ca, "bob", "/CN=bob/O=qa"),
            "expired": client_cert(d, ca, "carol", "/CN=carol", stamp(-30), stamp(-1)),
            "future": client_cert(d, ca, "dave", "/CN=dave", stamp(5), stamp(30)),
            "foreign": client_cert(d, evil_ca, "mallory", "/CN=mallory/O=system:masters"),
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def der_of(cert_path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(read(cert_path).decode())


# --- a backend that answers with what the front says --------------------------------------------


class WhoAmI(api_pb2_grpc.AccessServiceServicer):
    """username: the certificate's CN, "system:anonymous" for a call that did not come through
    the front, "" for a TLS client without a certificate (uid "token: ..." then says whether it
    sent a bearer token); an expired certificate: UNAUTHENTICATED, as the authn layer will."""

    def __init__(self):
        self.front: TlsFront | None = None
        self.seen: list[ClientIdentity | None] = []
        self.peers: list[str] = []

    async def WhoAmI(self, request, context):
        self.peers.append(context.peer())
        try:
            ident = self.front.identity(context.peer())
        except PeerGone as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        self.seen.append(ident)
        if ident is None:
            return api_pb2.WhoAmIResponse(username="system:anonymous", uid="direct")
        if ident.cert_der is None:
            token = dict(context.invocation_metadata()).get("authorization", "")
            return api_pb2.WhoAmIResponse(username="", uid=f"token: {token}")
        error = ident.validity_error()
        if error:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, error)
        # A little work across an await, so that concurrent calls interleave on the backend.
        await asyncio.sleep(0.001)
        return api_pb2.WhoAmIResponse(username=ident.common_name, groups=ident.organizations,
                                      uid=f"verified={ident.verified_chain}")


class Harness:
    def __init__(self, front: TlsFront, port: int, backend_port: int, servicer: WhoAmI,
                 certs: dict):
        self.front, self.port, self.backend_port = front, port, backend_port
        self.servicer, self.certs = servicer, certs

    def channel(self, who: str | None) -> grpc.aio.Channel:
        """A TLS channel to the front presenting `who`'s certificate (None: CA only)."""
        key = cert = None
        if who is not None:
            cert_path, key_path = self.certs[who]
            cert, key = read(cert_path), read(key_path)
        creds = grpc.ssl_channel_credentials(root_certificates=read(self.certs["ca"]),
                                             private_key=key, certificate_chain=cert)
        return grpc.aio.secure_channel(f"127.0.0.1:{self.port}", creds)

    async def whoami(self, channel, metadata=None, timeout: float = 10):
        return await api_pb2_grpc.AccessServiceStub(channel).WhoAmI(
            api_pb2.WhoAmIRequest(), metadata=metadata, timeout=timeout)


@contextlib.asynccontextmanager
async def harness(certs: dict, *, client_ca: bool = True, **limits):
    servicer = WhoAmI()
    server = grpc.aio.server()
    api_pb2_grpc.add_AccessServiceServicer_to_server(servicer, server)
    backend_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    cert, key = certs["server"]
    front = TlsFront("127.0.0.1:0", cert, key, certs["ca"] if client_ca else None,
                     f"127.0.0.1:{backend_port}", **limits)
    servicer.front = front
    try:
        port = await front.start()
        yield Harness(front, port, backend_port, servicer, certs)
    finally:
        await front.stop()
        await server.stop(None)


async def eventually(condition, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def raw_connect(port: int):
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 15) -> bool:
    """True when the server closes the connection (EOF or reset) within `timeout`."""
    try:
        while await asyncio.wait_for(reader.read(4096), timeout):
            pass
        return True
    except (ConnectionError, OSError):
        return True
    except asyncio.TimeoutError:
        return False


# --- who the caller is ---------------------------------------------------------------------------


def test_client_certificate_is_reported_verified_with_its_subject(certs):
    async def main():
        async with harness(certs) as h:
            async with h.channel("alice") as ch:
                answer = await h.whoami(ch)
            assert (answer.username, list(answer.groups)) == ("alice", ["dev", "ops"])
            assert answer.uid == "verified=True"
            ident = h.servicer.seen[-1]
            assert ident.cert_der == der_of(certs["alice"][0])
            assert ssl.PEM_cert_to_DER_cert(ident.cert_pem) == ident.cert_der
            assert ident.not_before < time.time() < ident.not_after
            assert ident.issuer_not_after > time.time()
            assert ident.validity_error() is None
            host, _, port = ident.remote.rpartition(":")
            assert host == "127.0.0.1" and 0 < int(port) < 65536
    asyncio.run(main())


def test_client_without_certificate_gets_through_for_the_token_path(certs):
    async def main():
        async with harness(certs) as h:
            async with h.channel(None) as ch:
                answer = await h.whoami(ch, metadata=[("authorization", "Bearer s3cret")])
            assert answer.username == "" and answer.uid == "token: Bearer s3cret"
            ident = h.servicer.seen[-1]
            assert ident is not None
            assert (ident.cert_der, ident.cert_pem, ident.verified_chain) == (None, None, False)
            assert ident.validity_error() is None
    asyncio.run(main())


def test_without_client_ca_no_certificate_is_asked_for(certs):
    """No --client-ca: everyone is a token user; a certificate a client holds is not used."""
    async def main():
        async with harness(certs, client_ca=False) as h:
            async with h.channel("alice") as ch:
                answer = await h.whoami(ch)
            assert answer.uid.startswith("token: ")
            assert h.servicer.seen[-1].cert_der is None
    asyncio.run(main())


@pytest.mark.parametrize("who,cn,words", [("expired", "carol", "is after"),
                                          ("future", "dave", "is before")])
def test_certificate_out_of_its_validity_reaches_authentication(certs, who, cn, words):
    """The handshake does not check times: the authn layer sees the certificate and refuses it
    with UNAUTHENTICATED (kube-apiserver's 401), not a TLS failure."""
    async def main():
        async with harness(certs) as h:
            async with h.channel(who) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await h.whoami(ch)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "x509: certificate has expired or is not yet valid" in err.value.details()
            assert words in err.value.details()
            ident = h.servicer.seen[-1]
            assert ident.common_name == cn and ident.verified_chain
            assert ident.cert_der == der_of(certs[who][0])
    asyncio.run(main())


def test_foreign_ca_certificate_fails_the_handshake_and_never_reaches_the_backend(certs):
    async def main():
        async with harness(certs) as h:
            async with h.channel("foreign") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await h.whoami(ch, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert h.servicer.peers == []
            await eventually(lambda: h.front.connections == 0, what="the refused connection")
            # ... and a good client is served right after
            async with h.channel("bob") as ch:
                assert (await h.whoami(ch)).username == "bob"
    asyncio.run(main())


def test_direct_backend_connection_is_anonymous(certs):
    async def main():
        async with harness(certs) as h:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{h.backend_port}") as ch:
                answer = await h.whoami(ch)
            assert (answer.username, answer.uid) == ("system:anonymous", "direct")
            assert h.servicer.seen == [None]
    asyncio.run(main())


def test_concurrent_calls_on_several_channels_each_get_their_own_identity(certs):
    async def main():
        async with harness(certs) as h:
            channels = {who: h.channel(who) for who in ("alice", "bob", None)}
            channels["direct"] = grpc.aio.insecure_channel(f"127.0.0.1:{h.backend_port}")
            expected = {"alice": "alice", "bob": "bob", None: "", "direct": "system:anonymous"}
            # a second channel per client with its own connection (a distinct channel arg
            # keeps grpc from sharing one subchannel)
            extra = {who: grpc.aio.secure_channel(
                f"127.0.0.1:{h.port}",
                grpc.ssl_channel_credentials(read(certs["ca"]), read(certs[who][1]),
                                             read(certs[who][0])),
                options=[("grpc.channel_id", i)]) for i, who in enumerate(("alice", "bob"))}
            try:
                calls, wanted = [], []
                for _ in range(60):
                    for who, ch in channels.items():
                        calls.append(h.whoami(ch))
                        wanted.append(expected[who])
                    for who, ch in extra.items():
                        calls.append(h.whoami(ch))
                        wanted.append(expected[who])
                answers = await asyncio.gather(*calls)
                assert [a.username for a in answers] == wanted
                # one relayed connection per TLS channel (the direct one is not relayed)
                assert h.front.connections == 5
            finally:
                for ch in (*channels.values(), *extra.values()):
                    await ch.close()
            await eventually(lambda: h.front.connections == 0, what="all connections closed")
    asyncio.run(main())


# --- hostile and idle clients ------------------------------------------------------------------


def test_client_that_sends_nothing_is_dropped_after_the_handshake_timeout(certs):
    async def main():
        async with harness(certs, handshake_timeout=0.5) as h:
            reader, writer = await raw_connect(h.port)
            try:
                await eventually(lambda: h.front.connections == 1, what="the silent client")
                assert await closed_by_peer(reader)
                await eventually(lambda: h.front.connections == 0, what="the slot freed")
            finally:
                writer.close()
            assert h.servicer.peers == []
    asyncio.run(main())


def test_garbage_client_does_not_disturb_others(certs):
    async def main():
        async with harness(certs) as h:
            async with h.channel("alice") as ch:
                assert (await h.whoami(ch)).username == "alice"
                garbage = []
                for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096),
                                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
                    reader, writer = await raw_connect(h.port)
                    writer.write(payload)
                    garbage.append((reader, writer))
                assert (await h.whoami(ch)).username == "alice"
                for reader, writer in garbage:
                    assert await closed_by_peer(reader)
                    writer.close()
                # the established channel still works after the garbage went away
                assert (await h.whoami(ch)).username == "alice"
            assert [i.common_name for i in h.servicer.seen] == ["alice"] * 3
    asyncio.run(main())


def test_connections_beyond_the_limit_are_closed_at_once(certs):
    async def main():
        async with harness(certs, max_connections=2) as h:
            held = [await raw_connect(h.port) for _ in range(2)]
            await eventually(lambda: h.front.connections == 2, what="two held slots")
            reader, writer = await raw_connect(h.port)
            assert await closed_by_peer(reader, timeout=5)
            writer.close()
            assert h.front.connections == 2
            for _, w in held:
                w.close()
            await eventually(lambda: h.front.connections == 0, what="the slots freed")
            async with h.channel("bob") as ch:
                assert (await h.whoami(ch)).username == "bob"
    asyncio.run(main())


def test_idle_connection_is_closed_and_the_client_reconnects(certs):
    async def main():
        async with harness(certs, idle_timeout=0.5) as h:
            async with h.channel("alice") as ch:
                assert (await h.whoami(ch)).username == "alice"
                await eventually(lambda: h.front.connections == 0, what="the idle close")
                assert (await h.whoami(ch)).username == "alice"
            assert h.servicer.peers[0] != h.servicer.peers[1]
    asyncio.run(main())


def test_a_closed_connection_port_never_answers_with_its_old_identity(certs):
    async def main():
        async with harness(certs) as h:
            async with h.channel("alice") as ch:
                await h.whoami(ch)
            peer = h.servicer.peers[-1]
            assert h.front.identity(peer).common_name == "alice"
            await eventually(lambda: h.front.connections == 0, what="the channel's close")
            with pytest.raises(PeerGone):
                h.front.identity(peer)
    asyncio.run(main())


def test_backend_going_away_closes_the_client_connections(certs):
    async def main():
        servicer = WhoAmI()
        server = grpc.aio.server()
        api_pb2_grpc.add_AccessServiceServicer_to_server(servicer, server)
        backend_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        front = TlsFront("127.0.0.1:0", *certs["server"], certs["ca"], f"127.0.0.1:{backend_port}")
        servicer.front = front
        try:
            port = await front.start()
            h = Harness(front, port, backend_port, servicer, certs)
            async with h.channel("alice") as ch:
                assert (await h.whoami(ch)).username == "alice"
                await server.stop(None)
                await eventually(lambda: front.connections == 0, what="the relay's end")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await h.whoami(ch, timeout=5)
                assert err.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                            grpc.StatusCode.DEADLINE_EXCEEDED)
            await eventually(lambda: front.connections == 0, what="the refused reconnects")
        finally:
            await front.stop()
            await server.stop(None)
    asyncio.run(main())


# --- pure logic ---------------------------------------------------------------------------------


def test_parse_peer():
    assert tls_front.parse_peer("ipv4:127.0.0.1:54321") == (ipaddress.ip_address("127.0.0.1"),
                                                            54321)
    assert tls_front.parse_peer("ipv6:[::1]:80") == (ipaddress.ip_address("::1"), 80)
    assert tls_front.parse_peer("ipv6:%5B::1%5D:80") == (ipaddress.ip_address("::1"), 80)
    for bad in ("unix:/run/x.sock", "ipv4:127.0.0.1", "ipv4:nohost:1", "", "ipv4::", "x"):
        assert tls_front.parse_peer(bad) is None


def test_identity_of_unknown_or_malformed_peer_is_none():
    front = TlsFront("127.0.0.1:0", "c", "k", None, "127.0.0.1:1")
    assert front.identity("ipv4:127.0.0.1:40000") is None
    assert front.identity("unix:/x") is None
    assert front.identity("garbage") is None


@pytest.mark.parametrize("value,message", [
    ("6443", "want HOST:PORT"), (":6443", "want HOST:PORT"), ("::1:6443", "in brackets"),
    ("h:99999", "0-65535"), ("h:x", "0-65535")])
def test_bad_listen_addresses_are_refused_clearly(value, message):
    with pytest.raises(TlsFrontError, match=message) as err:
        TlsFront(value, "c", "k", None, "127.0.0.1:1")
    assert "--api-listen" in str(err.value)


def test_bad_files_are_refused_with_their_names(certs, tmp_path):
    missing = str(tmp_path / "nope.crt")
    cert, key = certs["server"]

    async def start(*args):
        front = TlsFront("127.0.0.1:0", *args, "127.0.0.1:1")
        try:
            await front.start()
        finally:
            await front.stop()

    with pytest.raises(TlsFrontError, match="nope.crt"):
        asyncio.run(start(missing, key, None))
    not_a_ca = tmp_path / "empty.pem"
    not_a_ca.write_text("not a certificate\n")
    with pytest.raises(TlsFrontError, match="--client-ca .*empty.pem"):
        asyncio.run(start(cert, key, str(not_a_ca)))


def test_listen_port_in_use_is_a_clear_error(certs):
    async def main():
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            front = TlsFront(f"127.0.0.1:{port}", *certs["server"], None, "127.0.0.1:1")
            with pytest.raises(TlsFrontError, match=f"listen on 127.0.0.1:{port}"):
                await front.start()
            await front.stop()
    asyncio.run(main())


def test_validity_error_checks_leaf_and_issuer():
    now = 1_700_000_000.0
    ok = ClientIdentity(remote="1.2.3.4:5", cert_der=b"x", not_before=now - 10,
                        not_after=now + 10, issuer_not_before=now - 100, issuer_not_after=now + 100)
    assert ok.validity_error(now) is None
    assert "certificate has expired" in ok.validity_error(now + 11)
    assert "is before" in ok.validity_error(now - 11)
    ca_gone = dataclasses.replace(ok, issuer_not_after=now - 1)
    assert "issuing CA certificate has expired" in ca_gone.validity_error(now)
    assert ClientIdentity(remote="1.2.3.4:5").validity_error(now) is None


def test_failure_log_is_bounded(caplog):
    now = [1000.0]
    limiter = tls_front._LogLimiter(burst=3, period=60, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="podnetd.apiserver.tls_front"):
        for i in range(50):
            limiter.debug("failure %d", i)
        assert [r.getMessage() for r in caplog.records] == ["failure 0", "failure 1",
                                                            "failure 2"]
        now[0] += 61
        limiter.debug("failure %d", 99)
    assert [r.getMessage() for r in caplog.records][3:] == [
        "API TLS front: 47 more failures not logged in the last 60 s", "failure 99"]
