"""Issue 15, item 15: a link re-verifies its peer's certificate at every ping (an image removed from the root
registry, or an expired certificate, ends the link). An exception other than AttestationError raised while
re-verifying (the root registry unreadable: a disk error in the local chain's file, a TON endpoint down) ended the
ping task silently: the link stayed up and was never re-checked again, so a peer revoked afterwards kept its link
for good (fail-open).

Here a real RA-TLS link runs over 127.0.0.1; after the handshake the listener's registry starts failing with an
OSError (standing in for the unreadable ledger). The listener must close the link, say why in its log, and tell
the peer only that it could not be re-verified (not the local error)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cocoon.attest.fake import FakeBackend
from cocoon.attest.none import NoneBackend
from cocoon.attest.policy import DEV_POLICY
from cocoon.config import Prices
from cocoon.ledger.base import RootParams
from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, make_identity
from cocoon.wire.connection import Connection, accept_hello, dial_hello, hello

PING_S = 0.05


class FailingRegistry:
    """The root registry as RegistryImages serves it, until `broken` is set: then reading it raises OSError."""

    def __init__(self) -> None:
        self.broken = False
        self.reads_while_broken = 0

    def current(self) -> RootParams:
        if self.broken:
            self.reads_while_broken += 1
            raise OSError(5, "Input/output error: /secret/path/ledger.sqlite")
        return RootParams(version=1, prices=Prices())


async def test_a_recheck_that_raises_closes_the_link(caplog: pytest.LogCaptureFixture) -> None:
    registry = FailingRegistry()
    verifier = CertVerifier(DEV_POLICY, {"client"}, registry=registry)  # type: ignore[arg-type]
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_peer(stream: tls.TlsStream) -> None:
        conn, _ = await accept_hello(stream, name="proxy", allowed_roles={"client"})
        reason = await conn.run(lambda c, m: None, ping_interval=PING_S)
        if not ended.done():
            ended.set_result(reason)

    server = await tls.serve(on_peer, "127.0.0.1", 0, make_identity("proxy", FakeBackend("p")), verifier)
    port = server.sockets[0].getsockname()[1]
    client: Connection | None = None
    try:
        stream = await tls.connect("127.0.0.1", port, make_identity("client", NoneBackend()),
                                   CertVerifier(DEV_POLICY, {"proxy"}), timeout=10)
        client = await dial_hello(stream, hello("client", "c"), timeout=10)
        client_run = asyncio.create_task(client.run(lambda c, m: None))
        with caplog.at_level(logging.WARNING, logger="cocoon.wire"):
            registry.broken = True
            # Bounded: the flaw left the link up for good; fixed, it closes at the first ping (50 ms).
            reason = await asyncio.wait_for(asyncio.shield(ended), 10)
        assert "could not be re-verified" in reason
        assert registry.reads_while_broken >= 1
        # the peer learns that it was cut off, but not the listener's local error
        peer_reason = await asyncio.wait_for(client_run, 10)
        assert "could not be re-verified" in peer_reason and "/secret/path" not in peer_reason
        logged = [r for r in caplog.records if r.name.startswith("cocoon.wire")]
        assert any("OSError" in r.fields["reason"] for r in logged)  # type: ignore[attr-defined]
    finally:
        if client is not None:
            await client.close()
        server.close()
        if not ended.done():
            ended.cancel()
