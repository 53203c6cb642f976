"""RA-TLS handshakes over real sockets on 127.0.0.1: who gets in, who is refused, and that refusals are clean."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from cocoon.attest.fake import FakeBackend, fake_image_hash
from cocoon.attest.none import NoneBackend
from cocoon.attest.policy import DEV_POLICY, PRODUCTION_POLICY, Policy, RolePolicy, with_image_hashes
from cocoon.attest.registry import RegistryImages
from cocoon.attest.trustconfig import trust_config
from cocoon.config import WorkerConfig
from cocoon.ledger.local import LocalLedger
from cocoon.ratls import tls
from cocoon.ratls.cert import OID_CLAIMS, OID_QUOTE, CertVerifier, Claims, Identity, make_identity
from cocoon.wire.connection import Connection, ProtocolError, accept_hello, dial_hello, hello
from cocoon.wire.messages import Hello, WorkerParams

WORKER_IMAGE = "worker-good"


class Server:
    """A proxy-like listener that records who got through and echoes one line."""

    def __init__(self, policy: Policy = DEV_POLICY, registry: RegistryImages | None = None,
                 verifier: type[CertVerifier] = CertVerifier) -> None:
        self.identity = make_identity("proxy", FakeBackend("proxy-img"))
        self.verifier = verifier(policy, {"worker", "client"}, registry=registry)
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


def server_refusals(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if "refused connection from" in r.getMessage())


def dialer_errors(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.getMessage().startswith("tls error from"))


async def refused(server: Server, identity: Identity, caplog: pytest.LogCaptureFixture | None = None,
                  reason: str = "") -> None:
    """The peer is refused: no application byte reaches the server, and the dialer sees the failure.

    With `caplog`, both sides' logs say so: the server the precise `reason`, the dialer the TLS refusal.
    """
    with pytest.raises((tls.HandshakeError, ConnectionError, asyncio.TimeoutError)):
        data = await roundtrip(server, identity)
        # TLS 1.3 lets the client finish before the server judged it: the refusal then shows at the read.
        if not data:
            raise ConnectionError("closed by the server")
    await asyncio.sleep(0.05)
    assert server.accepted == []
    assert server.received == []
    if caplog is not None:
        assert reason in server_refusals(caplog)
        assert "refused by the peer during the TLS handshake" in dialer_errors(caplog)


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ratls_extensions(claims_key: Ed25519PrivateKey, *, tamper_quote: bool = False) -> list[x509.Extension]:
    """The RA-TLS extensions an honest worker would put in a certificate for `claims_key`."""
    encoded = Claims(public_key=claims_key.public_key().public_bytes_raw(), role="worker", kind="fake",
                     issued_at=int(time.time())).encode()
    quote = bytearray(FakeBackend(WORKER_IMAGE).quote(hashlib.sha512(encoded).digest()))
    if tamper_quote:
        quote[30] ^= 0x01
    return [x509.Extension(OID_QUOTE, True, x509.UnrecognizedExtension(OID_QUOTE, bytes(quote))),
            x509.Extension(OID_CLAIMS, True, x509.UnrecognizedExtension(OID_CLAIMS, encoded))]


def forge(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey, extensions: list[x509.Extension], *,
          signer: Ed25519PrivateKey | ec.EllipticCurvePrivateKey | None = None, issuer: str = "cocoon-worker",
          subject: str = "cocoon-worker", ca: bool = False) -> x509.Certificate:
    """A certificate of `key` valid now, with arbitrary extensions, signed by `signer` (default: itself)."""
    signer = signer or key
    now = time.time()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - 60))
        .not_valid_after(_utc(now + 3600))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    for ext in extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(signer, None if isinstance(signer, Ed25519PrivateKey) else hashes.SHA256())


async def stdlib_dial(port: int, tmp_path: Path, chain: list[x509.Certificate],
                      key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """Dial with Python's ssl presenting `chain` (leaf first); returns how the server's refusal showed."""
    (tmp_path / "chain.pem").write_bytes(b"".join(_pem(c) for c in chain))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(b"hello")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(100), 5)
    except (ssl.SSLError, ConnectionError) as exc:
        return str(exc)
    finally:
        writer.close()
    assert data == b"", f"the server answered {data!r} to a refused peer"
    return "closed without an alert"


async def refused_stdlib(tmp_path: Path, caplog: pytest.LogCaptureFixture, chain: list[x509.Certificate],
                         key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey, reason: str) -> None:
    async with Server() as server:
        client_side = await stdlib_dial(server.port, tmp_path, chain, key)
        await asyncio.sleep(0.05)
        assert server.accepted == [] and server.received == []
    assert reason in server_refusals(caplog)
    assert "alert" in client_side


async def test_worker_with_disallowed_image_hash_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    policy = with_image_hashes(DEV_POLICY, "worker", [fake_image_hash(WORKER_IMAGE)])
    async with Server(policy) as server:
        await refused(server, make_identity("worker", FakeBackend("worker-evil")), caplog,
                      f"image hash {fake_image_hash('worker-evil').hex()} is not allowed for role 'worker'")
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
        await refused(server, Identity(private_key=thief_key, certificate=stolen, claims=honest.claims), caplog,
                      "RA-TLS claims are bound to another key")


async def test_expired_certificate_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    old = make_identity("worker", FakeBackend(WORKER_IMAGE), lifetime_s=3600, now=time.time() - 7200)
    async with Server() as server:
        await refused(server, old, caplog, "peer certificate expired at")


async def test_certificate_issued_in_the_future_beyond_the_skew_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    early = make_identity("worker", FakeBackend(WORKER_IMAGE), now=time.time() + 3600)
    async with Server() as server:
        await refused(server, early, caplog, "peer certificate is not valid before")
    # Within the policy's clock skew (300 s) the same kind of certificate is accepted.
    async with Server() as server:
        slightly_early = make_identity("worker", FakeBackend(WORKER_IMAGE), now=time.time() + 100)
        assert await roundtrip(server, slightly_early) == b"echo:hello"


async def test_fake_worker_refused_by_a_tdx_only_policy(caplog: pytest.LogCaptureFixture) -> None:
    rules = {role: r for role, r in DEV_POLICY.roles.items()}
    rules["worker"] = type(rules["worker"])(kinds=frozenset({"tdx"}))
    policy = type(DEV_POLICY)(name="tdx-workers", roles=rules, production_safe=False)
    async with Server(policy) as server:
        await refused(server, make_identity("worker", FakeBackend(WORKER_IMAGE)), caplog,
                      "attestation kind 'fake' is not allowed for role 'worker' by policy 'tdx-workers'")


async def test_fake_worker_refused_by_the_production_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    ledger.set_allowed_images("worker", [fake_image_hash(WORKER_IMAGE)])  # its image is even listed
    try:
        async with Server(PRODUCTION_POLICY, RegistryImages(ledger)) as server:
            await refused(server, make_identity("worker", FakeBackend(WORKER_IMAGE)), caplog,
                          "attestation kind 'fake' is not allowed for role 'worker' by policy 'production'")
    finally:
        ledger.close()


async def test_tampered_quote_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = Ed25519PrivateKey.generate()
    cert = forge(key, ratls_extensions(key, tamper_quote=True))
    await refused_stdlib(tmp_path, caplog, [cert], key, "fake quote signature does not verify")


async def test_unknown_critical_extension_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = Ed25519PrivateKey.generate()
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.58000.9.9")
    extra = x509.Extension(oid, True, x509.UnrecognizedExtension(oid, b"\x05\x00"))
    cert = forge(key, [*ratls_extensions(key), extra])
    await refused_stdlib(tmp_path, caplog, [cert], key, "unhandled critical extension 1.3.6.1.4.1.58000.9.9")


async def test_certificate_chain_instead_of_a_self_signed_leaf_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca_key, leaf_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ca = forge(ca_key, [], issuer="some-ca", subject="some-ca", ca=True)
    leaf = forge(leaf_key, ratls_extensions(leaf_key), signer=ca_key, issuer="some-ca")
    await refused_stdlib(tmp_path, caplog, [leaf, ca], leaf_key, "peer sent a certificate chain")


async def test_non_ed25519_key_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = forge(key, ratls_extensions(Ed25519PrivateKey.generate()))
    await refused_stdlib(tmp_path, caplog, [cert], key, "peer certificate key is ECDSA secp256r1, expected Ed25519")


async def test_peer_without_certificate_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    async with Server() as server:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        writer.write(b"hello")
        with pytest.raises((ssl.SSLError, ConnectionError)) as client_side:
            await writer.drain()
            data = await asyncio.wait_for(reader.read(100), 5)
            if not data:
                raise ConnectionError("closed by the server")
        writer.close()
        await asyncio.sleep(0.05)
        assert server.received == []
        assert "did not return a certificate" in server_refusals(caplog)
        assert "certificate required" in str(client_side.value)


async def test_tls12_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    async with Server() as server:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)) as client_side:
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port, ssl=ctx), 5)
        await asyncio.sleep(0.05)
        assert server.accepted == []
        assert "unsupported protocol" in server_refusals(caplog)
        assert "protocol version" in str(client_side.value).lower()


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


async def test_image_removed_from_the_registry_loses_new_and_live_links(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The owner removes the worker's image: the next handshake is refused at once, and the live link is
    closed within one re-check interval, with the reason on both sides."""
    interval = 0.2
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    ledger.set_allowed_images("worker", [fake_image_hash(WORKER_IMAGE)])
    policy = Policy(name="registry-workers", production_safe=False,
                    roles={"worker": RolePolicy(kinds=frozenset({"fake"}), image_hashes="registry")})
    proxy_identity = make_identity("proxy", FakeBackend("proxy-img"))
    proxy_verifier_ = CertVerifier(policy, {"worker"}, registry=RegistryImages(ledger))
    proxy_ends: list[str] = []
    linked = asyncio.Event()

    async def on_peer(stream: tls.TlsStream) -> None:
        conn, _ = await accept_hello(stream, name="proxy", allowed_roles={"worker"})
        linked.set()
        proxy_ends.append(await conn.run(lambda c, m: None, ping_interval=interval))

    server = await tls.serve(on_peer, "127.0.0.1", 0, proxy_identity, proxy_verifier_)
    port = server.sockets[0].getsockname()[1]

    async def dial() -> Connection:
        worker = make_identity("worker", FakeBackend(WORKER_IMAGE))
        stream = await tls.connect("127.0.0.1", port, worker, proxy_verifier(), timeout=5)
        return await dial_hello(stream, hello("worker", "w1"), timeout=5)

    owner = LocalLedger(tmp_path / "ledger.sqlite")  # the registry owner, as another process would be
    try:
        live = await dial()
        worker_end = asyncio.create_task(live.run(lambda c, m: None, ping_interval=60))
        await asyncio.wait_for(linked.wait(), 5)
        await asyncio.sleep(3 * interval)
        assert not live.closed and proxy_ends == []  # re-checks pass while the image is listed

        owner.set_allowed_images("worker", [])
        with pytest.raises(ProtocolError, match="refused our attestation"):
            await dial()
        assert "not in the root registry (version 3)" in server_refusals(caplog)

        reason = await asyncio.wait_for(worker_end, 10 * interval)
        assert reason.startswith("refused by peer: peer attestation no longer accepted: image hash ")
        assert "not in the root registry" in reason
        await asyncio.sleep(0.05)
        assert len(proxy_ends) == 1 and proxy_ends[0].startswith("peer attestation no longer accepted: image hash")
        assert any(r.levelno == logging.WARNING and "closing link to w1" in r.getMessage() for r in caplog.records)
    finally:
        server.close()
        await server.wait_closed()
        owner.close()
        ledger.close()


async def test_a_remote_engine_the_registry_stops_listing_loses_its_hello_and_its_live_link(tmp_path: Path) -> None:
    """Remote engines are judged per announced model at the hello, and again at every re-check: the owner
    unlisting the engine for a model closes the live link within one re-check interval."""
    interval, origin = 0.2, "https://operator-host:443"
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    ledger.allow_engine("m1", origin)
    policy = Policy(name="registry-engines", production_safe=False,
                    roles={"worker": RolePolicy(kinds=frozenset({"fake"}), remote_engines="registry")})
    verifier = CertVerifier(policy, {"worker"}, registry=RegistryImages(ledger))
    proxy_ends: list[str] = []
    linked = asyncio.Event()

    async def on_peer(stream: tls.TlsStream) -> None:
        def admit(h: Hello) -> None:
            verifier.check_engine_models(stream.peer, h.worker.models if h.worker else [])

        try:
            conn, _ = await accept_hello(stream, name="proxy", allowed_roles={"worker"}, admit=admit)
        except ProtocolError:
            return
        conn.peer_check = lambda peer: verifier.check_engine_models(peer, ["m1"])
        linked.set()
        proxy_ends.append(await conn.run(lambda c, m: None, ping_interval=interval))

    server = await tls.serve(on_peer, "127.0.0.1", 0, make_identity("proxy", FakeBackend("proxy-img")), verifier)
    port = server.sockets[0].getsockname()[1]
    config = trust_config("worker", WorkerConfig(name="w", engine="openai:https://operator-host/v1"), DEV_POLICY)

    async def dial(models: list[str]) -> Connection:
        worker = make_identity("worker", FakeBackend(WORKER_IMAGE), config=config)
        stream = await tls.connect("127.0.0.1", port, worker, proxy_verifier(), timeout=5)
        params = WorkerParams(models=models, coefficient=1000, max_active_requests=1)
        return await dial_hello(stream, hello("worker", "w1", worker=params), timeout=5)

    owner = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        with pytest.raises(ProtocolError, match=rf"refused by peer: engine at {origin} runs outside the measured "
                                                r"image, and the root registry \(version 2\) does not list it for "
                                                r"model\(s\) \['m2'\]"):
            await dial(["m1", "m2"])
        live = await dial(["m1"])
        worker_end = asyncio.create_task(live.run(lambda c, m: None, ping_interval=60))
        await asyncio.wait_for(linked.wait(), 5)
        await asyncio.sleep(3 * interval)
        assert not live.closed and proxy_ends == []  # re-checks pass while the engine is listed

        owner.allow_engine("m1", origin, allowed=False)
        reason = await asyncio.wait_for(worker_end, 10 * interval)
        assert reason.startswith(f"refused by peer: peer attestation no longer accepted: engine at {origin}")
    finally:
        server.close()
        await server.wait_closed()
        owner.close()
        ledger.close()


async def test_a_verifier_failing_unexpectedly_refuses_the_peer(caplog: pytest.LogCaptureFixture) -> None:
    """Fail closed: an exception other than AttestationError inside the handshake's verification (msgspec's
    UnicodeDecodeError on claims that are not UTF-8 was one, found by tests/fuzz) refuses the peer like any other
    reason, instead of escaping the handshake past its refusal."""

    class Broken(CertVerifier):
        def verify(self, der: bytes, now: float | None = None):  # type: ignore[override]
            raise RuntimeError("verifier bug")

    async with Server(verifier=Broken) as server:
        await refused(server, make_identity("client", NoneBackend()), caplog,
                      "peer certificate could not be verified: RuntimeError: verifier bug")
