"""Types shared by every attestation backend and by RA-TLS."""

from __future__ import annotations

import hashlib

import msgspec

from cocoon.core.errors import CocoonError

ROLES = ("client", "proxy", "worker", "keys")  # keys: the key service (`cocoon keys`)
KINDS = ("tdx", "fake", "none")

# Intel's TCB statuses a quote can verify with, spelled as in its TCB info (and dcap-qvl). "Revoked" is not
# listed: a revoked platform never verifies, whatever a policy says.
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)
# Software hardening is a mitigation the TD's own code applies; configuration and out-of-date statuses mean
# the host's firmware or BIOS settings leave known vulnerabilities open, so they must be opted into.
DEFAULT_TCB_STATUSES = frozenset({"UpToDate", "SWHardeningNeeded"})


class AttestationError(CocoonError):
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
    tcb_status: str | None = None  # set for tdx: Intel's verdict on the platform's firmware and microcode
    valid_until: float | None = None  # when the evidence used (tdx: Intel's collateral) stops being current

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
    hpke_public_key: bytes = b""  # raw X25519 key from the claims, when the peer can receive sealed keys
    config_hash: bytes = b""  # SHA-256 of its trust-deciding configuration (cocoon.attest.trustconfig)
    policy_name: str = ""  # the name of its own policy
    engine: str = ""  # a worker's engine kind, and its origin when it runs outside the worker's process
    engine_origin: str = ""
    voucher_key: bytes = b""  # a proxy's voucher key
    model_hash: bytes = b""  # a worker's weights' SHA-256, as its claims state it
    model_hash_declared: bool = False  # declared by its operator rather than measured in its image

    @property
    def key_id(self) -> str:
        return self.public_key.hex()[:16]
