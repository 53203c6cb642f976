"""msgspec raises UnicodeDecodeError, not DecodeError, for a string that is not UTF-8 (found by tests/fuzz): every
decoder of bytes from a peer or an engine turns it into its own error, like any other undecodable input."""

from __future__ import annotations

import pytest

from cocoon.attest.types import AttestationError
from cocoon.client.api import with_cost
from cocoon.core.errors import DECODE_ERRORS, ErrorCode
from cocoon.inference.openai_upstream import _error_from_body
from cocoon.ratls.cert import decode_claims
from cocoon.worker.metering import MeteringError, read_answer

NOT_UTF8 = b"\xa2\xff\xfe"  # a two-byte MessagePack string: neither byte starts UTF-8


def test_msgspec_still_raises_unicode_decode_error_outside_decode_error() -> None:
    """Why DECODE_ERRORS exists; once msgspec wraps it, DecodeError alone would do."""
    import msgspec

    with pytest.raises(UnicodeDecodeError):
        msgspec.json.decode(b'{"\xff": 1}')
    assert not issubclass(UnicodeDecodeError, msgspec.DecodeError) and UnicodeDecodeError in DECODE_ERRORS


def test_claims_that_are_not_utf8_are_an_attestation_error() -> None:
    with pytest.raises(AttestationError, match="claims do not decode"):
        decode_claims(b"\x81\xa4role" + NOT_UTF8)


def test_an_engine_answer_that_is_not_utf8_is_a_metering_error() -> None:
    with pytest.raises(MeteringError, match="unreadable"):
        read_answer(b'{"choices": [{"text": "\xff"}]}')


def test_an_answer_that_is_not_utf8_is_relayed_without_its_cost() -> None:
    payload = b'{"usage": {"\xff": 1}}'
    assert with_cost(payload, 5) == payload


def test_an_engine_error_body_that_is_not_utf8_is_still_an_error() -> None:
    err = _error_from_body(500, b'{"error": {"message": "\xff"}}')
    assert err.status >= 500 and err.code in set(ErrorCode)
