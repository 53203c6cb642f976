"""Receipts (ledger/receipts.py): the worker's signature, the proxy's countersignature, the canonical encoding and
exactly which bytes the hashes cover."""

from __future__ import annotations

import hashlib
import os

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.core.usage import Usage
from cocoon.ledger.contracts import Tag
from cocoon.ledger.receipts import (
    AnswerHasher,
    Receipt,
    ReceiptError,
    answer_digest,
    answer_payload,
    request_digest,
)
from cocoon.ledger.vouchers import sign_voucher
from cocoon.ledger.wallet import Wallet

CONTRACT = "0:" + "ab" * 32


def _worker() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _receipt(worker_key: bytes, **changes: object) -> Receipt:
    fields: dict[str, object] = dict(
        request_id="req-1", request_hash=request_digest(b'{"model":"m"}'), answer_hash=answer_digest([b"{}"]),
        model="m", usage=Usage(prompt_tokens=5, completion_tokens=7), coefficient=1000, worker_key=worker_key,
        issued_at=1_700_000_000, model_hash=hashlib.sha256(b"weights").digest(), image_hash=bytes(32))
    fields.update(changes)
    return Receipt(**fields)  # type: ignore[arg-type]


def _signed() -> tuple[Receipt, Wallet]:
    key, public = _worker()
    proxy = Wallet(os.urandom(32))
    voucher = sign_voucher(proxy, Tag.CHARGE, CONTRACT, 3, 900, global_id=7)
    receipt = _receipt(public).sign(key.sign).countersign(
        proxy.sign, proxy.public_key, usage=Usage(prompt_tokens=5, completion_tokens=7), cost_nanoton=120,
        coefficient=1000, voucher=voucher, signed_at=1_700_000_001)
    return receipt, proxy


def test_signed_receipt_verifies_after_encoding_round_trips() -> None:
    receipt, proxy = _signed()
    voucher = sign_voucher(proxy, Tag.CHARGE, CONTRACT, 3, 900, global_id=7)  # the one it names (signing is
    again = Receipt.from_base64(receipt.to_base64())                             # deterministic)
    assert again == receipt
    counter = again.verify(proxy.public_key)
    assert counter.cost_nanoton == 120 and counter.names(voucher) and not counter.names(None)
    other = sign_voucher(proxy, Tag.CHARGE, CONTRACT, 3, 901, global_id=7)
    assert not counter.names(other)


@pytest.mark.parametrize("field,value", [
    ("usage", Usage(prompt_tokens=5, completion_tokens=8)),
    ("request_id", "req-2"),
    ("answer_hash", bytes(32)),
    ("model", "other"),
    ("model_hash", bytes(32)),
    ("coefficient", 1001),
    ("sealed_answer_hash", bytes(32)),
])
def test_a_changed_statement_fails_the_worker_signature(field: str, value: object) -> None:
    receipt, _ = _signed()
    changed = msgspec.structs.replace(receipt, **{field: value})
    with pytest.raises(ReceiptError, match="worker's signature"):
        changed.verify_worker()


def test_a_changed_charge_fails_the_countersignature() -> None:
    receipt, proxy = _signed()
    assert receipt.countersignature is not None
    cheaper = msgspec.structs.replace(receipt.countersignature, cost_nanoton=119)
    with pytest.raises(ReceiptError, match="proxy's countersignature"):
        msgspec.structs.replace(receipt, countersignature=cheaper).verify_proxy(proxy.public_key)


def test_the_countersignature_binds_the_worker_statement() -> None:
    """A countersignature moved onto another worker statement (another answer) does not verify."""
    receipt, _ = _signed()
    key, public = _worker()
    other = _receipt(public, request_id="req-9").sign(key.sign)
    moved = msgspec.structs.replace(other, countersignature=receipt.countersignature)
    moved.verify_worker()
    with pytest.raises(ReceiptError, match="countersignature"):
        moved.verify_proxy()


def test_countersigned_by_another_key_is_refused_when_the_proxy_key_is_known() -> None:
    receipt, _ = _signed()
    receipt.verify_proxy()  # self-consistent
    with pytest.raises(ReceiptError, match="not by the proxy's voucher key"):
        receipt.verify_proxy(Wallet(os.urandom(32)).public_key)


def test_signed_by_a_key_other_than_the_one_it_names() -> None:
    _, public = _worker()
    impostor, _ = _worker()
    with pytest.raises(ReceiptError, match="worker's signature"):
        _receipt(public).sign(impostor.sign).verify_worker()


def test_unsigned_and_uncountersigned_receipts_are_refused() -> None:
    _, public = _worker()
    with pytest.raises(ReceiptError, match="worker's signature"):
        _receipt(public).verify_worker()
    key, public = _worker()
    with pytest.raises(ReceiptError, match="no countersignature"):
        _receipt(public).sign(key.sign).verify_proxy()


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"not msgpack at all", b"\x81\xa1x\x01", os.urandom(64)])
def test_garbage_is_not_a_receipt(garbage: bytes) -> None:
    with pytest.raises(ReceiptError):
        Receipt.decode(garbage)


@pytest.mark.parametrize("text", ["!!!", "é", "QUJD" * 30000, "QUJD="])
def test_bad_base64_is_refused(text: str) -> None:
    with pytest.raises(ReceiptError):
        Receipt.from_base64(text)


def test_every_flipped_byte_is_refused() -> None:
    receipt, proxy = _signed()
    raw = receipt.encode()
    for i in range(len(raw)):
        flipped = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1:]
        with pytest.raises(ReceiptError):
            Receipt.decode(flipped).verify(proxy.public_key)


def test_a_bad_hash_length_is_refused() -> None:
    key, public = _worker()
    with pytest.raises(ReceiptError, match="request_hash"):
        _receipt(public, request_hash=b"short").sign(key.sign).verify_worker()


def test_answer_payload_strips_only_what_the_client_api_adds() -> None:
    engine = b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
    delivered = b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"cost_nanoton":9,' \
                b'"receipt":"QUJD"}}'
    assert answer_payload(delivered) == answer_payload(engine) == engine
    spaced = b'{"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}'
    assert answer_payload(spaced) == engine  # the usage payload is taken in compact form
    chunk = b'{"id": "x", "choices": [{"delta": {"content": "hi"}}]}'
    assert answer_payload(chunk) == chunk  # others exactly as received
    assert answer_payload(b"[DONE") == b"[DONE"
    changed = delivered.replace(b'"completion_tokens":4', b'"completion_tokens":5')
    assert answer_payload(changed) != engine


def test_answer_digest_is_ordered_and_framed() -> None:
    a, b = b'{"a":1}', b'{"b":2}'
    assert answer_digest([a, b]) != answer_digest([b, a])
    assert answer_digest([a + b]) != answer_digest([a, b])
    hasher = AnswerHasher()
    hasher.update(a, has_usage=False)
    hasher.update(b, has_usage=False)
    assert hasher.digest() == answer_digest([a, b])
    expected = hashlib.sha256(len(a).to_bytes(8, "big") + a).digest()
    assert answer_digest([a]) == expected
