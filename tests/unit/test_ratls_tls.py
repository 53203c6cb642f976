"""RA-TLS handshakes over real sockets on 127.0.0.1: who gets in, who is refused, and that refusals are clean."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.fake import FakeBackend, fake_image_hash
from cocoon.attest.none import NoneBackend
from cocoon.attest.policy import DEV_POLICY, with_image_hashes
from cocoon.ratls import tls
from cocoon.ratls.cert import OID_CLAIMS, OID_QUOTE, CertVerifier, Identity, make_identity

WORKER_IMAGE = "worker-good"


class Server:
    """A proxy-like listener that records who got through and echoes one line."""

    def __init__(self, policy=DEV_POLICY) -> None:
        self.identity = make_identity("proxy", FakeBackend("proxy-img"))
        self.verifier = CertVerifier(policy, {"worker", "client"})
        self.accepted: list[str] = []
        self.received: list[bytes] = []

    async def __aenter__(self) -> Server:
        async def handler(stream: tls.TlsStream) -> None:
            self.accepted.append(stream.peer.role)
            data = await stream.read()
            self.received.append(data)
            stream.write(b"echo:" + data)
            await stream.drain()

        self.server = await tls.serve(handler, "127.0.0.1", 0, self.identity, self.verifier)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


def proxy_verifier() -> CertVerifier:
    return CertVerifier(DEV_POLICY, {"proxy"})


async def roundtrip(server: Server, identity: Identity) -> bytes:
    stream = await tls.connect("127.0.0.1", server.port, identity, proxy_verifier(), timeout=5)
    try:
        stream.write(b"hello")
        await stream.drain()
        return await asyncio.wait_for(stream.read(), 5)
    finally:
        await stream.close()


async def test_attested_worker_and_none_client_get_through() -> None:
    async with Server() as server:
        assert await roundtrip(server, make_identity("worker", FakeBackend(WORKER_IMAGE))) == b"echo:hello"
        assert await roundtrip(server, make_identity("client", NoneBackend())) == b"echo:hello"
        assert server.accepted == ["worker", "client"]


async def test_client_learns_the_proxy_identity() -> None:
    async with Server() as server:
        stream = await tls.connect("127.0.0.1", server.port, make_identity("worker", FakeBackend(WORKER_IMAGE)),
                                   proxy_verifier(), timeout=5)
        assert stream.peer.role == "proxy"
        assert stream.peer.image_hash == fake_image_hash("proxy-img")
        assert stream.peer.public_key == server.identity.public_key
        await stream.close()


async def refused(server: Server, identity: Identity) -> None:
    """The peer is refused: no application byte reaches the server, and the dialer sees the failure."""
    with pytest.raises((tls.HandshakeError, ConnectionError, asyncio.TimeoutError)):
        data = await roundtrip(server, identity)
        # TLS 1.3 lets the client finish before the server judged it: the refusal then shows at the read.
        if not data:
            raise ConnectionError("closed by the server")
    await asyncio.sleep(0.05)
    assert server.accepted == []
    assert server.received == []


async def test_worker_with_disallowed_image_hash_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    policy = with_image_hashes(DEV_POLICY, "worker", [fake_image_hash(WORKER_IMAGE)])
    async with Server(policy) as server:
        await refused(server, make_identity("worker", FakeBackend("worker-evil")))
        assert "image hash" in caplog.text
        assert await roundtrip(server, make_identity("worker", FakeBackend(WORKER_IMAGE))) == b"echo:hello"


async def test_certificate_whose_quote_was_made_for_another_key_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    honest = make_identity("worker", FakeBackend(WORKER_IMAGE))
    thief_key = Ed25519PrivateKey.generate()
    quote = honest.certificate.extensions.get_extension_for_oid(OID_QUOTE).value
    claims = honest.certificate.extensions.get_extension_for_oid(OID_CLAIMS).value
    now = datetime.datetime.now(datetime.UTC)
    stolen = (
        x509.CertificateBuilder()
        .subject_name(honest.certificate.subject)
        .issuer_name(honest.certificate.issuer)
        .public_key(thief_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(quote, critical=True)
        .add_extension(claims, critical=True)
        .sign(thief_key, None)
    )
    async with Server() as server:
        await refused(server, Identity(private_key=thief_key, certificate=stolen, claims=honest.claims))
        assert "another key" in caplog.text


async def test_expired_certificate_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    old = make_identity("worker", FakeBackend(WORKER_IMAGE), lifetime_s=3600, now=time.time() - 7200)
    async with Server() as server:
        await refused(server, old)
        assert "expired" in caplog.text or "not valid" in caplog.text


async def test_fake_worker_refused_by_a_tdx_only_policy(caplog: pytest.LogCaptureFixture) -> None:
    rules = {role: r for role, r in DEV_POLICY.roles.items()}
    rules["worker"] = type(rules["worker"])(kinds=frozenset({"tdx"}))
    policy = type(DEV_POLICY)(name="tdx-workers", roles=rules, production_safe=False)
    async with Server(policy) as server:
        await refused(server, make_identity("worker", FakeBackend(WORKER_IMAGE)))
        assert "fake" in caplog.text


async def test_peer_without_certificate_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    async with Server() as server:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        writer.write(b"hello")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await writer.drain()
            data = await asyncio.wait_for(reader.read(100), 5)
            if not data:
                raise ConnectionError("closed by the server")
        writer.close()
        await asyncio.sleep(0.05)
        assert server.received == []
        assert "did not return a certificate" in caplog.text


async def test_tls12_is_refused() -> None:
    async with Server() as server:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port, ssl=ctx), 5)
        assert server.accepted == []


async def test_client_refuses_a_proxy_that_is_not_attested() -> None:
    # a "proxy" presenting a kind-none certificate: the dialer must refuse it before sending anything
    rogue = Server()
    rogue.identity = make_identity("proxy", NoneBackend())
    async with rogue:
        with pytest.raises(tls.HandshakeError, match="none"):
            await tls.connect("127.0.0.1", rogue.port, make_identity("client", NoneBackend()), proxy_verifier(),
                              timeout=5)
        await asyncio.sleep(0.05)
        assert rogue.received == []
