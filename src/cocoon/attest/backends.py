"""The attestation backend interface and the choice of backend by kind."""

from __future__ import annotations

from typing import Protocol

from cocoon.attest.collateral import CollateralCache, CollateralSource
from cocoon.attest.fake import FakeBackend
from cocoon.attest.none import NoneBackend
from cocoon.attest.tdx import TdxBackend, TdxVerifier
from cocoon.attest.types import KINDS, AttestationError, VerifiedQuote


class QuoteVerifier(Protocol):
    def verify(self, quote: bytes, now: float) -> VerifiedQuote:
        """Checks a quote of this kind; AttestationError with the precise reason if it is refused."""
        ...


class AttestationBackend(QuoteVerifier, Protocol):
    kind: str

    def quote(self, report_data: bytes) -> bytes:
        """A quote over the 64-byte `report_data` (ValueError if it has another length)."""
        ...


# Verifiers hold no per-image state (a fake verifier accepts every image), so one instance each is shared.
_FAKE_VERIFIER = FakeBackend("cocoon-dev")
_NONE = NoneBackend()


def _unknown_kind(kind: str) -> AttestationError:
    return AttestationError(f"unknown attestation kind {kind!r}; expected one of {', '.join(KINDS)}")


def _tdx_verifier(collateral: CollateralSource | None) -> TdxVerifier:
    # Without a source, every TDX quote is refused with a reason that names the missing PCCS setting.
    return TdxVerifier(collateral or CollateralCache(None, None))


def get_backend(kind: str, *, image: str = "cocoon-dev", collateral: CollateralSource | None = None
                ) -> AttestationBackend:
    """The backend that produces this machine's quotes; `image` names the fake image (ignored otherwise)."""
    if kind == "fake":
        return FakeBackend(image)
    if kind == "none":
        return _NONE
    if kind == "tdx":
        return TdxBackend(_tdx_verifier(collateral))
    raise _unknown_kind(kind)


def verifier_for(kind: str, *, collateral: CollateralSource | None = None) -> QuoteVerifier:
    """Verifies peers' quotes of `kind`; it need not be able to quote on this machine. `collateral` is where
    TDX verification finds Intel's collateral."""
    if kind == "fake":
        return _FAKE_VERIFIER
    if kind == "none":
        return _NONE
    if kind == "tdx":
        return _tdx_verifier(collateral)
    raise _unknown_kind(kind)
