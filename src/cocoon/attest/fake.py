"""Fake attestation: a software quote with TDX's fields, for machines without TDX (development, CI).

A fake quote is signed by the "fake platform" key, whose seed is derived from a public constant: anyone
can forge a fake quote for any measurements and report_data. Fake attestation therefore proves nothing
about the peer; it only exercises the same code paths as TDX. That is why a production policy refuses
kind "fake" (see `cocoon.attest.policy`).

Quote layout: msgpack array [mrtd, mrconfigid, mrowner, mrownerconfig, [rtmr0..3], report_data]
followed by a 64-byte Ed25519 signature over those msgpack bytes.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Annotated

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cocoon.attest.types import AttestationError, Measurements, VerifiedQuote

_Register = Annotated[bytes, msgspec.Meta(min_length=48, max_length=48)]
_ReportData = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
_SIGNATURE_LEN = 64
_ZERO_REGISTER = bytes(48)


class _FakeQuoteBody(msgspec.Struct, frozen=True, array_like=True):
    mrtd: _Register
    mrconfigid: _Register
    mrowner: _Register
    mrownerconfig: _Register
    rtmr: tuple[_Register, _Register, _Register, _Register]
    report_data: _ReportData


_DECODER = msgspec.msgpack.Decoder(_FakeQuoteBody)
_ENCODER = msgspec.msgpack.Encoder()
# Every field has a fixed length, so every well-formed fake quote has exactly this many bytes.
FAKE_QUOTE_LEN = (
    len(_ENCODER.encode(_FakeQuoteBody(*[_ZERO_REGISTER] * 4, (_ZERO_REGISTER,) * 4, bytes(64))))
    + _SIGNATURE_LEN
)


@functools.cache
def fake_platform_key() -> Ed25519PrivateKey:
    """The publicly known fake platform key (deterministic, so every machine verifies every other's)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"cocoon fake platform key v1").digest())


@functools.cache
def _fake_platform_public_key() -> Ed25519PublicKey:
    return fake_platform_key().public_key()


def fake_measurements(image: str) -> Measurements:
    """The measurements a fake quote reports for `image`: derived from the name, so stable across runs."""
    name = image.encode()
    return Measurements(
        mrtd=hashlib.sha384(b"cocoon-fake-mrtd:" + name).digest(),
        mrconfigid=_ZERO_REGISTER,
        mrowner=_ZERO_REGISTER,
        mrownerconfig=_ZERO_REGISTER,
        rtmr=(
            hashlib.sha384(b"cocoon-fake-rtmr0:" + name).digest(),
            hashlib.sha384(b"cocoon-fake-rtmr1:" + name).digest(),
            hashlib.sha384(b"cocoon-fake-rtmr2:" + name).digest(),
            hashlib.sha384(b"cocoon-fake-rtmr3:" + name).digest(),
        ),
    )


def fake_image_hash(image: str) -> bytes:
    """The image hash (32 bytes) of a fake quote for `image`, to put in a policy's allow-list."""
    return fake_measurements(image).image_hash()


class FakeBackend:
    """Quotes as image `image` with the fake platform key; verifies any fake quote, whatever its image."""

    kind = "fake"

    def __init__(self, image: str) -> None:
        self.image = image
        self.measurements = fake_measurements(image)

    def quote(self, report_data: bytes) -> bytes:
        if len(report_data) != 64:
            raise ValueError(f"report_data has {len(report_data)} bytes, expected 64")
        m = self.measurements
        body = _ENCODER.encode(
            _FakeQuoteBody(m.mrtd, m.mrconfigid, m.mrowner, m.mrownerconfig, m.rtmr, report_data)
        )
        return body + fake_platform_key().sign(body)

    def verify(self, quote: bytes, now: float) -> VerifiedQuote:
        # `now` is unused: a fake quote carries no validity period (the certificate around it does).
        _check_length(quote)
        body, signature = quote[:-_SIGNATURE_LEN], quote[-_SIGNATURE_LEN:]
        try:
            _fake_platform_public_key().verify(signature, body)
        except InvalidSignature:
            raise AttestationError(
                "fake quote signature does not verify with the fake platform key"
            ) from None
        measurements, report_data = parse_fake_quote(quote)
        return VerifiedQuote(kind="fake", report_data=report_data, measurements=measurements)


def parse_fake_quote(quote: bytes) -> tuple[Measurements, bytes]:
    """(measurements, report_data) of a fake quote, without checking its signature."""
    _check_length(quote)
    try:
        decoded = _DECODER.decode(quote[:-_SIGNATURE_LEN])
    except msgspec.DecodeError as e:
        raise AttestationError(f"fake quote body is malformed: {e}") from None
    measurements = Measurements(
        mrtd=decoded.mrtd,
        mrconfigid=decoded.mrconfigid,
        mrowner=decoded.mrowner,
        mrownerconfig=decoded.mrownerconfig,
        rtmr=decoded.rtmr,
    )
    return measurements, decoded.report_data


def _check_length(quote: bytes) -> None:
    if len(quote) != FAKE_QUOTE_LEN:
        raise AttestationError(f"fake quote has {len(quote)} bytes, expected {FAKE_QUOTE_LEN}")
