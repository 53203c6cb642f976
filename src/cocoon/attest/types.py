"""Types shared by every attestation backend and by RA-TLS."""

from __future__ import annotations

import hashlib

import msgspec

ROLES = ("client", "proxy", "worker")
KINDS = ("tdx", "fake", "none")


class AttestationError(Exception):
    """A peer's attestation is refused; the message is the precise reason (logged on both sides)."""


class Measurements(msgspec.Struct, frozen=True):
    """TD measurements, each 48 bytes (SHA-384 registers), as in a TDX TD report."""

    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]

    def image_hash(self) -> bytes:
        """SHA-256 over MRTD || MRCONFIGID || MROWNER || MROWNERCONFIG || RTMR0..3 (8 x 48 bytes).

        report_data is excluded: the hash names the code, not the instance. Same layout for fake and tdx.
        """
        h = hashlib.sha256()
        for part in (self.mrtd, self.mrconfigid, self.mrowner, self.mrownerconfig, *self.rtmr):
            if len(part) != 48:
                raise AttestationError(f"measurement register has {len(part)} bytes, expected 48")
            h.update(part)
        return h.digest()


class VerifiedQuote(msgspec.Struct, frozen=True):
    """What a backend's `verify` proves: these measurements produced this report_data."""

    kind: str
    report_data: bytes
    measurements: Measurements | None = None
    tcb_status: str | None = None

    @property
    def image_hash(self) -> bytes | None:
        return self.measurements.image_hash() if self.measurements else None


class PeerIdentity(msgspec.Struct, frozen=True):
    """A peer whose RA-TLS certificate passed the policy: what the application may rely on."""

    role: str
    kind: str
    public_key: bytes  # raw Ed25519 public key: the peer's identity (and, for clients, its payment key)
    image_hash: bytes | None
    cert_sha256: bytes
    not_after: float

    @property
    def key_id(self) -> str:
        return self.public_key.hex()[:16]
