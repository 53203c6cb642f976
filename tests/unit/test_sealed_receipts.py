"""Metering without plaintext (issue 10 item 2): a sealed answer's receipt covers the sealed request and answer as
they crossed the proxy, which checks them without a key; the client holds it only from the worker it sealed to."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.client import receipts as client_receipts
from cocoon.inference.fake import FakeEngine
from cocoon.ledger.receipts import ReceiptError, answer_digest, request_digest
from cocoon.proxy import receipts as proxy_receipts
from cocoon.seal import AnswerDigest, seal_request
from cocoon.seal import request_digest as sealed_digest
from cocoon.wire.messages import Message, Request, ResponseChunk, ResponseEnd, ResponseHead
from cocoon.worker.execution import Execution
from cocoon.worker.sealing import Unsealer
from tests.unit.test_receipt_checks import NOTARY, PEER, PROXY, PUBLIC, settled

HPKE = X25519PrivateKey.generate()
BODY = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "sealed"}]}).encode()


def sealed_request(stream: bool) -> tuple[Request, Any]:
    req = Request(call_id=3, endpoint="chat", model="fake-model", body=b"", stream=stream, include_usage=True,
                  deadline=time.time() + 60, request_id="req-9", max_tokens=5, sealed=True)
    sealed = seal_request(BODY, [HPKE.public_key().public_bytes_raw()], req.envelope())
    return msgspec.structs.replace(req, body=sealed.sealed), sealed


async def execute(req: Request) -> list[Message]:
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    await Execution(FakeEngine(), req, send, NOTARY, Unsealer(HPKE)).run()
    return sent


@pytest.mark.parametrize("stream", [False, True])
async def test_a_sealed_answer_is_signed_over_what_the_proxy_relays(stream: bool) -> None:
    req, sealed = sealed_request(stream)
    sent = await execute(req)
    head, end = sent[0], sent[-1]
    assert isinstance(head, ResponseHead) and isinstance(end, ResponseEnd) and end.receipt is not None
    relayed = AnswerDigest()
    for m in sent:
        if isinstance(m, ResponseChunk):
            relayed.add(m.data)
    relayed.add(end.sealed_end)
    receipt = end.receipt
    assert receipt.sealed_request_hash == sealed_digest(req.body) and receipt.request_hash == request_digest(BODY)
    assert receipt.sealed_answer_hash == relayed.digest()
    # the client's plaintext hash is over what it opened
    opener = sealed.answer(head.seal_key_id)
    payloads = [opener.open(m.data) for m in sent if isinstance(m, ResponseChunk)]
    opener.end(end.sealed_end)
    assert receipt.answer_hash == answer_digest(payloads)

    check = {"req": req, "worker": PEER, "coefficient": 1000, "reported": end.usage}
    assert proxy_receipts.check_receipt(receipt, **check, sealed_answer_hash=relayed.digest()) == receipt
    for what, changes in [("another sealed answer", {"sealed_answer_hash": bytes(32)}),
                          ("another sealed body", {"req": msgspec.structs.replace(req, body=req.body + b"x"),
                                                   "sealed_answer_hash": relayed.digest()}),
                          ("more usage than signed", {"reported": msgspec.structs.replace(end.usage,
                              completion_tokens=end.usage.completion_tokens + 1),
                              "sealed_answer_hash": relayed.digest()})]:
        with pytest.raises(ReceiptError):
            proxy_receipts.check_receipt(receipt, **{**check, **changes})
            pytest.fail(f"the proxy accepted {what}")

    # the client holds it only from the worker whose attested HPKE key opened its request
    plain = msgspec.structs.replace(req, body=BODY, sealed=False)
    charged = settled(end.usage)
    answered = msgspec.structs.replace(end, receipt=proxy_receipts.countersign(receipt, PROXY, charged, 1000),
                                       cost_nanoton=50, voucher=charged.client_voucher, coefficient=1000)
    args: dict[str, Any] = {"req": plain, "answer_hash": answer_digest(payloads), "proxy_key": PROXY.public_key}
    assert client_receipts.check_receipt(answered, **args, worker_key=PUBLIC).worker_key == PUBLIC
    with pytest.raises(ReceiptError, match="worker_key"):
        client_receipts.check_receipt(answered, **args, worker_key=bytes(32))
