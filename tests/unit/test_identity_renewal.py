"""Certificates age: nodes reissue them, and links re-dial with the fresh one before the old one expires."""

from __future__ import annotations

import asyncio

from cocoon.attest.fake import FakeBackend
from cocoon.attest.none import NoneBackend
from cocoon.attest.policy import DEV_POLICY
from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, IdentityIssuer
from cocoon.wire.connection import Connection, accept_hello, hello
from cocoon.wire.dialer import RENEWAL_REASON, Dialer


def test_issuer_keeps_its_key_and_reissues_as_the_certificate_ages() -> None:
    now = [1_000_000.0]
    issuer = IdentityIssuer("worker", FakeBackend("w"), lifetime_s=2400, clock=lambda: now[0])
    first = issuer.current()
    now[0] += 99  # reissue after 1/24 of the lifetime: 100 s
    assert issuer.current() is first
    now[0] += 1
    second = issuer.current()
    assert second is not first
    assert second.public_key == first.public_key == issuer.public_key
    assert second.claims.issued_at == int(now[0])
    assert second.certificate.serial_number != first.certificate.serial_number


async def test_dialer_renews_an_idle_link_before_its_certificate_expires() -> None:
    certs: list[bytes] = []
    server_identity = IdentityIssuer("proxy", FakeBackend("p"), lifetime_s=3600)

    async def handler(stream: tls.TlsStream) -> None:
        conn, _ = await accept_hello(stream, name="proxy", allowed_roles={"client"})
        certs.append(stream.peer.cert_sha256)
        await conn.run(lambda c, m: None)

    server = await tls.serve(handler, "127.0.0.1", 0, server_identity, CertVerifier(DEV_POLICY, {"client"}))
    port = server.sockets[0].getsockname()[1]
    # a 4 s certificate: the link is renewed after 2 s, with a certificate reissued in the meantime
    client = IdentityIssuer("client", NoneBackend(), lifetime_s=4)
    dialer = Dialer(lambda: [f"127.0.0.1:{port}"], client, CertVerifier(DEV_POLICY, {"proxy"}),
                    lambda: hello("client", "c"), lambda c, m: None)
    dialer.start()
    try:
        first: Connection | None = await dialer.wait_connected(5)
        assert first is not None
        for _ in range(160):  # at most 8 s
            if len(certs) >= 2 and dialer.connected:
                break
            await asyncio.sleep(0.05)
        assert first.closed and dialer.conn is not first
        assert first.close_reason == RENEWAL_REASON
        assert certs[0] != certs[1]  # the new link presented the reissued certificate
        assert dialer.conn is not None and dialer.conn.peer.role == "proxy"
    finally:
        await dialer.stop("test over")
        server.close()
