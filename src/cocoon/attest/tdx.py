"""Intel TDX attestation: quotes from the Linux TSM interface, parsed and verified with dcap-qvl.

A TDX quote (version 4 or 5) is a signed TD report: MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0-3 and
the guest's 64-byte report_data, plus the Quoting Enclave's signature and the PCK certificate chain up to
Intel's root CA. Its image hash is `Measurements.image_hash()`, the same byte layout as a fake quote's.

Verification: the TD attributes first (a debug TD is refused unless allowed: its host can read and write
its memory), then dcap-qvl checks every signature, certificate, CRL and date against collateral valid at
the caller's `now`, then the Intel root key id must be on `INTEL_ROOT_KEY_IDS`. The TCB status is reported,
not judged: which statuses are acceptable is the policy's decision (`cocoon.attest.policy`).
"""

from __future__ import annotations

import dataclasses
import json

import dcap_qvl

from cocoon.attest.collateral import CollateralSource
from cocoon.attest.tsm import TsmQuoter
from cocoon.attest.types import TCB_STATUSES, AttestationError, Measurements, VerifiedQuote

# SHA-384 of the Intel SGX Root CA's public key (uncompressed P-256 point), as dcap-qvl reports it. The root
# certificate is built into dcap-qvl; pinning its key here catches a build or a caller that swapped it.
INTEL_ROOT_KEY_IDS = frozenset({
    bytes.fromhex(
        "46e403bd34f05a3f2817ab9badcaacc7ffc98e0f261008cd30dae936cace18d5dcf58eef31463613de1570d516200993"
    ),
})

TDX_TEE_TYPE = 0x81
_TD_ATTRIBUTE_DEBUG = 0x01  # bit 0 of TDATTRIBUTES (little-endian, so byte 0)


@dataclasses.dataclass(frozen=True)
class TdxQuote:
    """What a TDX quote says, parsed but not verified."""

    raw: bytes
    version: int
    measurements: Measurements
    report_data: bytes
    td_attributes: bytes
    fmspc: str  # uppercase hex: the platform (family, model, stepping, SKU) whose collateral applies
    ca: str  # "platform" or "processor": the PCK CA, which selects the PCK CRL

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & _TD_ATTRIBUTE_DEBUG)


def parse_tdx_quote(raw: bytes) -> TdxQuote:
    """Parses without checking any signature; AttestationError if it is not a well-formed TDX quote."""
    try:
        quote = dcap_qvl.parse_quote(raw)
        header, report = quote.header, quote.report
        if header.tee_type != TDX_TEE_TYPE or not hasattr(report, "mr_td"):
            raise AttestationError(f"quote has TEE type {header.tee_type:#x}, expected TDX ({TDX_TEE_TYPE:#x})")
        fmspc, ca = quote.fmspc(), quote.ca()
    except ValueError as e:
        raise AttestationError(f"TDX quote does not parse: {e}") from None
    measurements = Measurements(
        mrtd=bytes(report.mr_td),
        mrconfigid=bytes(report.mr_config_id),
        mrowner=bytes(report.mr_owner),
        mrownerconfig=bytes(report.mr_owner_config),
        rtmr=(bytes(report.rt_mr0), bytes(report.rt_mr1), bytes(report.rt_mr2), bytes(report.rt_mr3)),
    )
    return TdxQuote(raw=raw, version=header.version, measurements=measurements,
                    report_data=bytes(report.report_data), td_attributes=bytes(report.td_attributes),
                    fmspc=fmspc.upper(), ca=ca)


def _dcap_policy(now: int) -> dcap_qvl.QuotePolicy:
    policy = dcap_qvl.QuotePolicy.strict(now)
    for status in TCB_STATUSES:  # judged by our policy, per role, with a precise message
        policy = policy.allow_status(status)
    # Multi-socket and cloud hosts register dynamically, cache platform keys and run SMT; these say how
    # the platform was provisioned, not what the TD runs, and the TCB status already covers their risk.
    return policy.allow_dynamic_platform(True).allow_cached_keys(True).allow_smt(True)


class TdxVerifier:
    def __init__(self, collateral: CollateralSource, *, allow_debug: bool = False,
                 root_key_ids: frozenset[bytes] = INTEL_ROOT_KEY_IDS) -> None:
        self.collateral = collateral
        self.allow_debug = allow_debug
        self.root_key_ids = root_key_ids
        self._dcap = dcap_qvl.QuoteVerifier()

    def verify(self, quote: bytes, now: float) -> VerifiedQuote:
        parsed = parse_tdx_quote(quote)
        if parsed.debug and not self.allow_debug:
            raise AttestationError(
                f"TDX quote comes from a debug TD (TD attributes {parsed.td_attributes.hex()}): "
                "its host can read and change its memory"
            )
        collateral = self.collateral.get(quote, parsed.fmspc, parsed.ca, now)
        collateral.check_applies(parsed.fmspc, now)
        try:
            claims = json.loads(
                self._dcap.verify_with_policy(quote, collateral.dcap, int(now), _dcap_policy(int(now))).to_json()
            )
        except ValueError as e:
            reason = str(e).removeprefix("Verification failed: ")
            raise AttestationError(f"TDX quote does not verify (DCAP): {reason}") from None
        try:
            root_key_id, status = bytes(claims["platform"]["root_key_id"]), str(claims["tcb"]["status"])
        except (KeyError, TypeError, ValueError) as e:
            raise AttestationError(f"dcap-qvl returned claims of an unexpected shape ({e!r})") from None
        if root_key_id not in self.root_key_ids:
            raise AttestationError(f"TDX quote chains to an unknown root key (id {root_key_id.hex()[:24]}…), "
                                   "not Intel's SGX root CA")
        return VerifiedQuote(kind="tdx", report_data=parsed.report_data, measurements=parsed.measurements,
                             tcb_status=status, valid_until=collateral.not_after)


class TdxBackend:
    """This TD's quotes, from the TSM interface; verifies peers' TDX quotes with `verifier`."""

    kind = "tdx"

    def __init__(self, verifier: TdxVerifier, quoter: TsmQuoter | None = None) -> None:
        self.verifier = verifier
        self.quoter = quoter or TsmQuoter()

    def quote(self, report_data: bytes) -> bytes:
        return self.quoter.quote(report_data)

    def verify(self, quote: bytes, now: float) -> VerifiedQuote:
        return self.verifier.verify(quote, now)
