"""Keeping one attested link up: dial, hello, serve until it breaks, reconnect with exponential backoff.

The peer is the first reachable of several addresses (a client's proxies, in order of preference): when a
link breaks, the next round of dialing starts with the next address, so a client fails over to another
proxy at once; the backoff applies only after every address failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, IdentitySource
from cocoon.wire.connection import Connection, InboundHandler, ProtocolError, dial_hello
from cocoon.wire.messages import Hello

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0
RENEWAL_POLL_S = 1.0
RENEWAL_REASON = "renewing the link's certificate"

# Where the peer may be, most preferred first; asked again before every round of dialing, so that a source
# that changes (the root registry's proxy list, later) is followed without restarting the dialer.
AddressSource = Callable[[], Sequence[str]]
# Checks an attested peer at the address it was dialed at, before the hello (run in a thread: it may read the
# chain); AttestationError refuses it.
PeerCheck = Callable[[str, PeerIdentity], None]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host, int(port)


class Dialer:
    def __init__(self, addresses: AddressSource, identity: IdentitySource, verifier: CertVerifier,
                 make_hello: Callable[[], Hello], on_inbound: InboundHandler, *,
                 connect_timeout_s: float = 10.0, check_peer: PeerCheck | None = None) -> None:
        for address in addresses():
            split_address(address)  # a malformed address is a configuration error: say so at start
        self.addresses = addresses
        self.address = next(iter(addresses()), "")  # the one linked, or last tried ("": none known yet)
        self.identity = identity
        self.verifier = verifier
        self.make_hello = make_hello
        self.on_inbound = on_inbound
        self.connect_timeout_s = connect_timeout_s
        self.check_peer = check_peer
        self.conn: Connection | None = None
        self.last_error: str | None = "not connected yet"
        self.last_dial_timed_out = False
        self.on_change: Callable[[bool], None] = lambda up: None
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._renew_at = 0.0

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self, reason: str) -> None:
        if self._task:
            self._task.cancel()
        if self.conn:
            await self.conn.close(reason)

    async def wait_connected(self, timeout: float) -> Connection | None:
        if not self.connected:
            try:
                await asyncio.wait_for(self._up.wait(), timeout)
            except TimeoutError:
                return None
        return self.conn if self.connected else None

    async def _run(self) -> None:
        backoff = BACKOFF_START_S
        first = 0
        while True:
            addresses = list(self.addresses())
            if not addresses:
                self.last_error = "no proxy address known yet"
            for i in range(len(addresses)):
                position = (first + i) % len(addresses)
                conn = await self._dial(addresses[position])
                if conn is None:
                    continue
                backoff = BACKOFF_START_S
                renewed = await self._serve(conn)
                # a link closed to renew its certificate goes back to the same peer; a lost one fails over
                first = position if renewed else (position + 1) % len(addresses)
                break
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _dial(self, address: str) -> Connection | None:
        self.address = address
        host, port = split_address(address)
        stream: tls.TlsStream | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                identity = self.identity.current()
                stream = await tls.connect(host, port, identity, self.verifier)
                if self.check_peer is not None:
                    await asyncio.to_thread(self.check_peer, address, stream.peer)
                conn = await dial_hello(stream, self.make_hello())
                self._renew_at = identity.claims.issued_at + identity.lifetime_s / 2
                return conn
        except TimeoutError:
            self.last_error = f"no link to {address} within the {self.connect_timeout_s:.1f}s connect timeout"
            self.last_dial_timed_out = True
        except (OSError, ProtocolError, AttestationError) as exc:
            self.last_error = f"cannot link to {address}: {str(exc) or type(exc).__name__}"
            self.last_dial_timed_out = False
        if stream is not None:
            await stream.close()
        log.warning("cannot link", extra={"fields": {"peer": address, "reason": self.last_error}})
        return None

    async def _serve(self, conn: Connection) -> bool:
        """Serve one link until it ends; True when it ended only to renew its certificate."""
        self.conn, self.last_error, self.last_dial_timed_out = conn, None, False
        renewal = asyncio.create_task(self._renew_when_due(conn, self._renew_at))
        self._up.set()
        self.on_change(True)
        log.info("linked", extra={"fields": {"peer": self.address, "peer_name": conn.peer_name,
                                             "image_hash": conn.peer.image_hash.hex()
                                             if conn.peer.image_hash else None}})
        try:
            reason = await conn.run(self.on_inbound)
        finally:
            renewal.cancel()
        self._up.clear()
        self.on_change(False)
        self.last_error = f"link to {self.address} lost: {reason}"
        renewed = reason == RENEWAL_REASON
        (log.info if renewed else log.warning)("link closed" if renewed else "link lost",
                                               extra={"fields": {"peer": self.address, "reason": reason}})
        return renewed

    async def _renew_when_due(self, conn: Connection, due: float) -> None:
        """Close the link, once idle, after half the lifetime of the certificate it was opened with.

        The peer re-verifies that certificate at every ping and would cut the link when it expires, failing
        whatever is in flight; re-dialing earlier, between requests, presents the renewed one instead.
        """
        await asyncio.sleep(max(due - time.time(), 0))
        while not conn.closed:
            if conn.idle:
                await conn.close(RENEWAL_REASON)
                return
            await asyncio.sleep(RENEWAL_POLL_S)
