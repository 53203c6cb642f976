"""Reading quotes without verifying them: what they claim (CLI, logs, own image hash)."""

from __future__ import annotations

import dataclasses

from cryptography import x509

from cocoon.attest.fake import FAKE_QUOTE_LEN, parse_fake_quote
from cocoon.attest.tdx import parse_tdx_quote
from cocoon.attest.types import KINDS, AttestationError, Measurements


@dataclasses.dataclass(frozen=True)
class QuoteView:
    kind: str
    report_data: bytes
    measurements: Measurements | None
    td_attributes: bytes | None = None  # tdx only
    fmspc: str | None = None  # tdx only


def read_quote(kind: str, quote: bytes) -> QuoteView:
    """Parses a quote of `kind`; AttestationError if it is malformed. Signatures are NOT checked."""
    if kind == "none":
        return QuoteView(kind="none", report_data=b"", measurements=None)
    if kind == "fake":
        measurements, report_data = parse_fake_quote(quote)
        return QuoteView(kind="fake", report_data=report_data, measurements=measurements)
    if kind == "tdx":
        tdx = parse_tdx_quote(quote)
        return QuoteView(kind="tdx", report_data=tdx.report_data, measurements=tdx.measurements,
                         td_attributes=tdx.td_attributes, fmspc=tdx.fmspc)
    raise AttestationError(f"unknown attestation kind {kind!r}; expected one of {', '.join(KINDS)}")


def quote_kind(quote: bytes) -> str:
    """Tells a bare fake quote (fixed length) from a TDX one."""
    return "fake" if len(quote) == FAKE_QUOTE_LEN else "tdx"


def load_certificate(data: bytes) -> x509.Certificate | None:
    """The certificate in `data` (PEM or DER), or None if `data` is not one."""
    if data.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
        return x509.load_pem_x509_certificate(data)
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError:
        return None
