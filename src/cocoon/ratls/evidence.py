"""Reading RA-TLS certificates and bare quotes without verifying them: what they claim (`cocoon attest inspect`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography import x509

from cocoon.attest.inspect import QuoteView, load_certificate, quote_kind, read_quote
from cocoon.ratls.cert import Claims, decode_claims, read_ratls_extensions


@dataclasses.dataclass(frozen=True)
class Evidence:
    """A bare quote, or an RA-TLS certificate's quote with its claims."""

    quote: QuoteView
    raw_quote: bytes
    claims: Claims | None = None
    certificate: x509.Certificate | None = None


def read_evidence(data: bytes) -> Evidence:
    cert = load_certificate(data)
    if cert is None:
        return Evidence(quote=read_quote(quote_kind(data), data), raw_quote=data)
    raw_quote, encoded_claims = read_ratls_extensions(cert)
    claims = decode_claims(encoded_claims)
    return Evidence(quote=read_quote(claims.kind, raw_quote), raw_quote=raw_quote, claims=claims, certificate=cert)


def evidence_dict(evidence: Evidence) -> dict[str, Any]:
    """Lowercase hex everywhere; registers are None for kind "none"."""
    q, m = evidence.quote, evidence.quote.measurements
    out: dict[str, Any] = {
        "kind": q.kind,
        "mrtd": m.mrtd.hex() if m else None,
        "rtmr": [r.hex() for r in m.rtmr] if m else None,
        "mrconfigid": m.mrconfigid.hex() if m else None,
        "mrowner": m.mrowner.hex() if m else None,
        "mrownerconfig": m.mrownerconfig.hex() if m else None,
        "report_data": q.report_data.hex(),
        "image_hash": m.image_hash().hex() if m else None,
    }
    if q.td_attributes is not None:
        out["td_attributes"] = q.td_attributes.hex()
        out["fmspc"] = q.fmspc.lower() if q.fmspc else None
    if evidence.claims is not None and evidence.certificate is not None:
        c = evidence.claims
        out["claims"] = {
            "role": c.role,
            "kind": c.kind,
            "public_key": c.public_key.hex(),
            "issued_at": c.issued_at,
            "gpu_evidence": c.gpu_evidence.hex(),
            "hpke_public_key": c.hpke_public_key.hex(),
            "config_hash": c.config_hash.hex(),
            "policy": c.policy.name if c.policy else "",
            "engine": c.engine,
            "engine_origin": c.engine_origin,
            "voucher_key": c.voucher_key.hex(),
        }
        out["not_before"] = int(evidence.certificate.not_valid_before_utc.timestamp())
        out["not_after"] = int(evidence.certificate.not_valid_after_utc.timestamp())
    return out
