"""Keeping one attested link up: dial, hello, serve until it breaks, reconnect with exponential backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, Identity
from cocoon.wire.connection import Connection, InboundHandler, ProtocolError, dial_hello
from cocoon.wire.messages import Hello

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host, int(port)


class Dialer:
    def __init__(self, address: str, identity: Identity, verifier: CertVerifier, make_hello: Callable[[], Hello],
                 on_inbound: InboundHandler) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.identity = identity
        self.verifier = verifier
        self.make_hello = make_hello
        self.on_inbound = on_inbound
        self.conn: Connection | None = None
        self.last_error: str | None = "not connected yet"
        self.on_change: Callable[[bool], None] = lambda up: None
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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
        while True:
            try:
                stream = await tls.connect(self.host, self.port, self.identity, self.verifier)
                conn = await dial_hello(stream, self.make_hello())
            except (OSError, ProtocolError, TimeoutError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("cannot link", extra={"fields": {"peer": self.address, "reason": self.last_error,
                                                             "retry_in_s": backoff}})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_START_S
            self.conn, self.last_error = conn, None
            self._up.set()
            self.on_change(True)
            log.info("linked", extra={"fields": {"peer": self.address, "peer_name": conn.peer_name,
                                                 "image_hash": conn.peer.image_hash.hex()
                                                 if conn.peer.image_hash else None}})
            reason = await conn.run(self.on_inbound)
            self._up.clear()
            self.on_change(False)
            self.last_error = reason
            log.warning("link lost", extra={"fields": {"peer": self.address, "reason": reason}})
