"""One-shot verification of a quote or an RA-TLS certificate against a policy (`cocoon attest verify`)."""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.attest.backends import verifier_for
from cocoon.attest.collateral import CollateralSource
from cocoon.attest.inspect import load_certificate, quote_kind
from cocoon.attest.policy import Policy
from cocoon.attest.registry import RegistryImages
from cocoon.attest.types import ROLES
from cocoon.ratls.cert import CertVerifier


def verify_evidence(data: bytes, policy: Policy, *, role: str, now: float, collateral: CollateralSource,
                    registry: RegistryImages | None) -> str:
    """A one-line verdict for an accepted certificate (PEM or DER) or bare quote; AttestationError with the
    precise reason otherwise. A certificate names its role; a bare quote is judged by the rules of `role`."""
    cert = load_certificate(data)
    if cert is not None:
        verifier = CertVerifier(policy, ROLES, registry=registry, collateral=collateral)
        peer = verifier.verify(cert.public_bytes(Encoding.DER), now)
        image = peer.image_hash.hex() if peer.image_hash else "none"
        return (f"accepted by policy {policy.name!r}: {peer.role} certificate, kind {peer.kind}, "
                f"image hash {image}, key {peer.public_key.hex()}")
    kind = quote_kind(data)
    verified = verifier_for(kind, collateral=collateral).verify(data, now)
    policy.check_quote(role, verified, registry.current() if registry else None)
    image = verified.image_hash.hex() if verified.image_hash else "none"
    tcb = f", TCB status {verified.tcb_status}" if verified.tcb_status else ""
    return f"accepted by policy {policy.name!r} for role {role}: {kind} quote, image hash {image}{tcb}"
