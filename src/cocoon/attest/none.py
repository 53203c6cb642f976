"""No attestation: kind "none". Clients (ordinary app servers) and local development use it.

Its certificate proves only possession of the key, which identifies the peer (for a client: its payment
channel). It says nothing about the code the peer runs, so policies accept it only where that is enough.
"""

from __future__ import annotations

from cocoon.attest.types import AttestationError, VerifiedQuote


class NoneBackend:
    kind = "none"

    def quote(self, report_data: bytes) -> bytes:
        if len(report_data) != 64:
            raise ValueError(f"report_data has {len(report_data)} bytes, expected 64")
        return b""

    def verify(self, quote: bytes, now: float) -> VerifiedQuote:
        # A non-empty "none" quote is either a bug or an attempt to smuggle data past the verifier.
        if quote:
            raise AttestationError(
                f"attestation kind 'none' must carry an empty quote, got {len(quote)} bytes"
            )
        return VerifiedQuote(kind="none", report_data=b"")
