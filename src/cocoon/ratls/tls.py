"""Mutual RA-TLS 1.3 streams on asyncio.

OpenSSL is driven through memory BIOs (pyOpenSSL) because Python's `ssl` has no verify callback: here the
peer's attestation is checked *inside* the handshake, so a refused peer gets a TLS alert and no application
byte ever passes in either direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.config import AdmissionConfig
from cocoon.core.errors import CocoonError
from cocoon.ratls.admission import Admission, source_key
from cocoon.ratls.cert import CertVerifier, Identity, IdentitySource

log = logging.getLogger(__name__)

_CIPHERSUITES = b"TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"
_READ_SIZE = 256 * 1024
_COALESCE_LIMIT = 64 * 1024  # a TLS record holds 16 KiB; beyond a few, waiting for the turn's end gains nothing


class HandshakeError(ConnectionError, CocoonError):
    """The RA-TLS handshake failed; `reason` says why (attestation refusal or TLS failure)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SilentPeer(HandshakeError):
    """The peer closed the connection before sending anything: a reachability probe (discovery.py), or a port
    scan; nothing to warn about."""


class _Verdict:
    """What the verify callback concluded about the peer, kept per connection."""

    __slots__ = ("der", "peer", "reason")

    def __init__(self) -> None:
        self.peer: PeerIdentity | None = None
        self.der = b""  # the peer's certificate, kept to re-verify it while the link lives
        self.reason: str | None = None


def make_context(identity: Identity, verifier: CertVerifier, *, server: bool) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_tls13_ciphersuites(_CIPHERSUITES)
    # Tickets would let a later connection resume without presenting (and re-proving) an attested key.
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate(identity.certificate)
    ctx.use_privatekey(identity.private_key)
    ctx.check_privatekey()

    def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        verdict: _Verdict = conn.get_app_data()
        if depth != 0:
            verdict.reason = "peer sent a certificate chain; only a self-signed RA-TLS leaf is accepted"
            return False
        if verdict.peer is not None:  # OpenSSL calls once per chain error; the attestation runs once
            return True
        if verdict.reason is not None:
            return False
        verdict.der = cert.to_cryptography().public_bytes(Encoding.DER)
        try:
            verdict.peer = verifier.verify(verdict.der)
        except AttestationError as exc:
            verdict.reason = str(exc)
            return False
        except Exception as exc:  # fail closed: raised here it would escape the handshake, past its refusal
            verdict.reason = f"peer certificate could not be verified: {type(exc).__name__}: {exc}"[:300]
            return False
        return True

    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    return ctx


def _pump(conn: SSL.Connection, writer: asyncio.StreamWriter) -> None:
    """Move whatever OpenSSL encrypted into the socket."""
    while True:
        try:
            out = conn.bio_read(_READ_SIZE)
        except SSL.WantReadError:
            return
        if not out:
            return
        writer.write(out)


class TlsStream:
    """An established, attested TLS connection: ordered bytes in both directions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: SSL.Connection,
                 peer: PeerIdentity, peer_der: bytes, verifier: CertVerifier) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = conn
        self.peer = peer
        self._peer_der = peer_der
        self._verifier = verifier
        self._eof = False
        # Writes made during one event-loop turn leave as one TLS record and one socket write: under load
        # the proxy relays many small chunks per turn, and per-record and per-syscall costs dominate.
        self._pending = bytearray()
        self._send_scheduled = False

    def recheck(self, now: float | None = None) -> PeerIdentity:
        """Verifies the peer's certificate again against the current policy and root registry; cheap while
        nothing changed (the verdict is cached). AttestationError once the peer would be refused."""
        self.peer = self._verifier.verify(self._peer_der, now)
        return self.peer

    @property
    def peer_der(self) -> bytes:
        """The peer's certificate (DER), as it presented it: what a proxy hands clients to seal to a worker."""
        return self._peer_der

    @property
    def peername(self) -> str:
        addr = self._writer.get_extra_info("peername")
        return f"{addr[0]}:{addr[1]}" if addr else "?"

    def _flush(self) -> None:
        _pump(self._conn, self._writer)

    async def read(self) -> bytes:
        """Return the next decrypted bytes, or b"" when the peer closed the connection."""
        while not self._eof:
            try:
                return self._conn.recv(_READ_SIZE)
            except SSL.WantReadError:
                self._flush()
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    self._eof = True
                    return b""
                self._conn.bio_write(data)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                self._eof = True
            except SSL.Error as exc:
                # TLS 1.3: a peer that refuses our certificate says so only after our handshake returned.
                log.warning("tls error from %s: %s", self.peername, _describe(exc))
                self._eof = True
        return b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("connection is closed")
        self._pending += data
        if len(self._pending) >= _COALESCE_LIMIT:
            self._send_pending()
        elif not self._send_scheduled:
            self._send_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_pending)

    def _send_pending(self) -> None:
        self._send_scheduled = False
        if self._pending and not self._writer.is_closing():
            self._conn.sendall(bytes(self._pending))
            self._pending.clear()
            self._flush()

    async def drain(self) -> None:
        await self._writer.drain()

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    async def close(self) -> None:
        # A transport the peer already reset takes no close_notify: uvloop raises RuntimeError ("handler is
        # closed") on such a write, which would escape into whoever closes the link (a dialer's task, once).
        if not self._writer.is_closing():
            with contextlib.suppress(SSL.Error, OSError, RuntimeError):
                self._send_pending()
                self._conn.shutdown()
                self._flush()
        self._writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self._writer.wait_closed()


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: SSL.Context,
                     verifier: CertVerifier, *, server: bool) -> TlsStream:
    conn = SSL.Connection(ctx, None)
    verdict = _Verdict()
    conn.set_app_data(verdict)
    if server:
        conn.set_accept_state()
    else:
        conn.set_connect_state()

    def flush() -> None:
        _pump(conn, writer)

    received = False
    while True:
        try:
            conn.do_handshake()
            break
        except SSL.WantReadError:
            flush()
            data = await reader.read(_READ_SIZE)
            if not data:
                if not received:
                    raise SilentPeer("peer closed the connection without a byte") from None
                raise HandshakeError(
                    verdict.reason or "peer closed the connection during the TLS handshake"
                ) from None
            received = True
            conn.bio_write(data)
        except SSL.Error as exc:
            flush()  # deliver our alert so the peer learns it was refused
            with contextlib.suppress(OSError):
                await writer.drain()
            raise HandshakeError(verdict.reason or _describe(exc)) from None
    flush()
    if verdict.peer is None:
        raise HandshakeError(verdict.reason or "peer presented no certificate")
    return TlsStream(reader, writer, conn, verdict.peer, verdict.der, verifier)


def _describe(exc: SSL.Error) -> str:
    parts = []
    for err in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        parts.append(err[2] if isinstance(err, tuple) and len(err) > 2 else str(err))
    text = "; ".join(parts) or str(exc)
    if "certificate required" in text:
        return "peer presented no certificate (refused by the other side: certificate required)"
    if "alert" in text:
        return f"refused by the peer during the TLS handshake ({text})"
    return f"TLS handshake failed: {text}"


async def connect(
    host: str, port: int, identity: IdentitySource, verifier: CertVerifier, *, timeout: float = 10.0
) -> TlsStream:
    """Dial host:port and complete an attested handshake, or raise HandshakeError/OSError."""

    async def run() -> TlsStream:
        reader, writer = await asyncio.open_connection(host, port, limit=_READ_SIZE)
        try:
            ctx = make_context(identity.current(), verifier, server=False)
            return await _handshake(reader, writer, ctx, verifier, server=False)
        except BaseException:
            writer.close()
            raise

    return await asyncio.wait_for(run(), timeout)


async def serve(
    handler: Callable[[TlsStream], Awaitable[None]],
    host: str,
    port: int,
    identity: IdentitySource,
    verifier: CertVerifier,
    *,
    admission: Admission | None = None,
) -> asyncio.Server:
    """Listen for attested peers; `handler` runs for each one that passes the handshake.

    Each handshake presents the identity's current certificate (a context is built once per certificate).
    Connections are admitted per source address and each handshake is bounded in time (`admission`).
    """
    admission = admission or Admission(AdmissionConfig())
    timeout = admission.limits.handshake_timeout_s
    presented: list[tuple[Identity, SSL.Context]] = []  # the certificate in use and its context

    def context() -> SSL.Context:
        current = identity.current()
        if not presented or presented[0][0] is not current:
            presented[:] = [(current, make_context(current, verifier, server=True))]
        return presented[0][1]

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = source_key(peer)
        entry = admission.begin(address, writer.transport.abort)
        if entry is None:
            writer.transport.abort()
            return
        established = False
        try:
            stream = await asyncio.wait_for(_handshake(reader, writer, context(), verifier, server=True), timeout)
            established = True
        except TimeoutError:
            admission.timed_out(entry)
            writer.transport.abort()
            return
        except SilentPeer:
            writer.close()
            return
        except (HandshakeError, OSError) as exc:
            if not entry.evicted:  # an eviction was counted and logged as such
                log.warning("refused connection from %s: %s", peer, exc)
            writer.close()
            return
        finally:
            admission.end(entry, established=established)
        try:
            await handler(stream)
        finally:
            admission.link_closed(address)
            await stream.close()

    return await asyncio.start_server(on_connect, host, port, limit=_READ_SIZE)
