"""Each hop's part in receipts (issue 11 item 1): the worker signs over exactly the payloads it sends, the proxy
countersigns only a receipt that matches the request and the worker's attested link, the client only one that
matches what it sent and delivers."""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.types import PeerIdentity
from cocoon.client import receipts as client_receipts
from cocoon.client.api import with_cost
from cocoon.core.usage import Usage
from cocoon.inference.fake import FakeEngine
from cocoon.ledger.books import Settled
from cocoon.ledger.contracts import Tag
from cocoon.ledger.pricing import Charge
from cocoon.ledger.receipts import Receipt, ReceiptError, answer_digest, request_digest
from cocoon.ledger.vouchers import sign_voucher
from cocoon.ledger.wallet import Wallet
from cocoon.proxy import receipts as proxy_receipts
from cocoon.wire.messages import Message, Request, ResponseChunk, ResponseEnd
from cocoon.worker.execution import Execution
from cocoon.worker.notary import Notary

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes_raw()
IMAGE, WEIGHTS = os.urandom(32), os.urandom(32)
NOTARY = Notary(KEY.sign, PUBLIC, 1000, image_hash=IMAGE, model_hash=WEIGHTS)
PEER = PeerIdentity(role="worker", kind="fake", public_key=PUBLIC, image_hash=IMAGE, cert_sha256=b"", not_after=0.0,
                    model_hash=WEIGHTS)
PROXY = Wallet(os.urandom(32))


def request(stream: bool, include_usage: bool = True, **body: Any) -> Request:
    doc = {"model": "fake-model", "messages": [{"role": "user", "content": "a receipt for this"}], **body}
    return Request(call_id=3, endpoint="chat", model="fake-model", body=json.dumps(doc).encode(), stream=stream,
                   include_usage=include_usage, deadline=0, request_id="req-7", max_tokens=5)


async def execute(req: Request) -> list[Message]:
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    await Execution(FakeEngine(), req, send, NOTARY).run()
    return sent


@pytest.mark.parametrize(("stream", "include_usage"), [(False, False), (True, True), (True, False)])
async def test_the_worker_signs_over_exactly_the_payloads_it_sent(stream: bool, include_usage: bool) -> None:
    req = request(stream, include_usage)
    sent = await execute(req)
    end = sent[-1]
    assert isinstance(end, ResponseEnd) and end.receipt is not None
    receipt = end.receipt
    receipt.verify_worker()
    payloads = [m.data for m in sent if isinstance(m, ResponseChunk)]
    assert receipt.answer_hash == answer_digest(payloads)
    assert (receipt.request_id, receipt.request_hash, receipt.model) == ("req-7", request_digest(req.body), req.model)
    assert (receipt.usage, receipt.worker_key, receipt.image_hash, receipt.model_hash) == (end.usage, PUBLIC, IMAGE,
                                                                                         WEIGHTS)
    assert receipt.cost_nanoton is None  # this worker reads no registry prices
    # what the client API delivers (cost added to the usage payload) still hashes the same
    delivered = [with_cost(p, 42) if b'"usage"' in p else p for p in payloads]
    assert delivered != payloads or not include_usage
    assert answer_digest(delivered) == receipt.answer_hash


def settled(usage: Usage) -> Settled:
    voucher = sign_voucher(PROXY, Tag.CHARGE, "0:" + "cd" * 32, 4, 777, global_id=1)
    return Settled(Charge(50, 40), voucher, None, usage)


async def test_the_proxy_countersigns_only_a_receipt_matching_the_request_and_the_link() -> None:
    req = request(False)
    end = (await execute(req))[-1]
    assert isinstance(end, ResponseEnd) and end.receipt is not None
    good = proxy_receipts.check_receipt(end.receipt, req=req, worker=PEER, coefficient=1000, reported=end.usage)
    signed = proxy_receipts.countersign(good, PROXY, settled(end.usage), 1000)
    counter = signed.verify(PROXY.public_key)
    assert (counter.cost_nanoton, counter.usage) == (50, end.usage) and counter.names(settled(end.usage).client_voucher)

    other_key = Ed25519PrivateKey.generate()
    cases = {
        "no receipt": (None, {}),
        "another request id": (msgspec.structs.replace(end.receipt, request_id="req-8").sign(KEY.sign), {}),
        "another body": (end.receipt, {"req": request(False, temperature=0.5)}),
        "usage beyond the report": (end.receipt, {"reported": Usage(completion_tokens=1)}),
        "another coefficient": (end.receipt, {"coefficient": 1500}),
        "another worker's key": (msgspec.structs.replace(
            end.receipt, worker_key=other_key.public_key().public_bytes_raw()).sign(other_key.sign), {}),
        "altered": (msgspec.structs.replace(end.receipt, model_hash=bytes(32)), {}),
        "another image": (end.receipt, {"worker": msgspec.structs.replace(PEER, image_hash=bytes(32))}),
    }
    for what, (receipt, changes) in cases.items():
        args: dict[str, Any] = {"req": req, "worker": PEER, "coefficient": 1000, "reported": end.usage, **changes}
        with pytest.raises(ReceiptError):
            proxy_receipts.check_receipt(receipt, **args)
            pytest.fail(f"countersigned a receipt with {what}")


async def test_the_client_holds_only_a_receipt_matching_what_it_sent_and_delivers() -> None:
    req = request(True)
    sent = await execute(req)
    end = sent[-1]
    assert isinstance(end, ResponseEnd) and end.receipt is not None
    payloads = [m.data for m in sent if isinstance(m, ResponseChunk)]
    charged = settled(end.usage)
    receipt = proxy_receipts.countersign(end.receipt, PROXY, charged, 1000)
    answered = msgspec.structs.replace(end, receipt=receipt, cost_nanoton=50, voucher=charged.client_voucher,
                                       coefficient=1000)
    answer_hash = answer_digest(payloads)
    held = client_receipts.check_receipt(answered, req=req, answer_hash=answer_hash, proxy_key=PROXY.public_key)
    assert held == receipt

    other = Wallet(os.urandom(32))
    for what, end_changes, kwargs in [
        ("a changed answer", {}, {"answer_hash": answer_digest([payloads[0] + b" ", *payloads[1:]])}),
        ("another proxy's key", {}, {"proxy_key": other.public_key}),
        ("another charge than the answer carries", {"cost_nanoton": 51}, {}),
        ("another voucher", {"voucher": sign_voucher(PROXY, Tag.CHARGE, "0:" + "cd" * 32, 5, 900, global_id=1)}, {}),
        ("another request", {}, {"req": request(True, temperature=0.1)}),
        ("none at all", {"receipt": None}, {}),
    ]:
        args: dict[str, Any] = {"req": req, "answer_hash": answer_hash, "proxy_key": PROXY.public_key, **kwargs}
        with pytest.raises(ReceiptError):
            client_receipts.check_receipt(msgspec.structs.replace(answered, **end_changes), **args)
            pytest.fail(f"held a receipt with {what}")


def test_a_countersignature_with_no_receipt_to_bind_is_refused() -> None:
    with pytest.raises(ReceiptError, match="no countersignature"):
        Receipt(request_id="r", request_hash=bytes(32), answer_hash=bytes(32), model="m", usage=Usage(),
                coefficient=1, worker_key=PUBLIC, issued_at=0).sign(KEY.sign).verify()
