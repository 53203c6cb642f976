"""Found while fuzzing (issue 15, "Also"; an availability attack like items 13 and 14): msgspec raises
UnicodeDecodeError, not DecodeError, for a string that is not UTF-8, so an outsider presenting a certificate whose
RA-TLS claims hold such a string made the verifier raise an exception the handshake did not expect. It escaped the
proxy's listener: anyone who can reach the port, unattested, wrote a 2 KB traceback into the proxy's log per
connection, and the connection was dropped by asyncio's last-resort handler instead of refused with a reason.

A real proxy process is dialed with such certificates: each must be refused as any unacceptable peer is (logged in
one line, saying why), and the proxy's open descriptors must not grow with the number of attempts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from cocoon.attest.none import NoneBackend
from cocoon.attest.policy import DEV_POLICY
from cocoon.ratls import tls
from cocoon.ratls.cert import OID_CLAIMS, OID_QUOTE, CertVerifier, Claims, Identity
from tests.netutil import free_port
from tests.security.procs import proxy_config, role_process, wait_stats

ATTEMPTS = 20


def garbled_identity() -> Identity:
    """A client certificate, quoted like any `none` one, whose claims name a role that is not UTF-8."""
    key = Ed25519PrivateKey.generate()
    claims = Claims(public_key=key.public_key().public_bytes_raw(), role="client", kind="none",
                    issued_at=int(time.time()))
    encoded = claims.encode()
    assert b"\xa6client" in encoded
    encoded = encoded.replace(b"\xa6client", b"\xa6\xfflient")  # same length, first byte not UTF-8
    quote = NoneBackend().quote(Claims.report_data_for(encoded))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cocoon-client")])
    now = time.time()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(now - 60, datetime.UTC))
            .not_valid_after(datetime.datetime.fromtimestamp(now + 3600, datetime.UTC))
            .add_extension(x509.UnrecognizedExtension(OID_QUOTE, quote), critical=True)
            .add_extension(x509.UnrecognizedExtension(OID_CLAIMS, encoded), critical=True)
            .sign(key, None))
    return Identity(private_key=key, certificate=cert, claims=claims, hpke_key=None)


async def dial_garbled(port: int) -> None:
    """Dial with a garbled certificate and wait for the proxy's verdict (TLS 1.3: it comes after our handshake)."""
    try:
        stream = await tls.connect("127.0.0.1", port, garbled_identity(), CertVerifier(DEV_POLICY, {"proxy"}),
                                   timeout=10)
    except (tls.HandshakeError, OSError):
        return
    try:
        with contextlib.suppress(ConnectionError, OSError):
            assert await asyncio.wait_for(stream.read(), 10) == b"", "the proxy let a garbled certificate in"
    finally:
        await stream.close()


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_certificate_with_garbled_claims_is_refused_like_any_other(tmp_path: Path) -> None:
    port, stats = free_port(), free_port()
    config = proxy_config(tmp_path, port, stats)
    log = tmp_path / "proxy.log"
    with role_process("proxy", config, log) as proc:
        wait_stats(stats, proc, log)
        before = open_descriptors(proc.pid)

        async def attack() -> None:
            for _ in range(ATTEMPTS):
                await dial_garbled(port)
            await asyncio.sleep(0.5)  # let the proxy finish closing what it refused

        asyncio.run(attack())
        assert open_descriptors(proc.pid) - before < ATTEMPTS // 2, "refused connections were left open"
    text = log.read_text()
    assert "Traceback" not in text and "Unhandled exception" not in text, text[-3000:]
    assert text.count("refused connection") >= ATTEMPTS and "claims do not decode" in text
