"""Spot checks of sealed requests (issue 11): the client's `deterministic` mark in the seal's envelope, the worker's
check of it, the content digest a worker signs in its receipt, the client's check of that digest against the answer
it opened, and the proxy's sampling and evidence by them."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon import receipt_cli
from cocoon.client import receipts as client_receipts
from cocoon.core.errors import ErrorCode
from cocoon.core.usage import Usage
from cocoon.inference.fake import FakeEngine
from cocoon.ledger.receipts import Receipt, ReceiptError, answer_digest
from cocoon.openai.content import ContentDigest, content_digest, is_deterministic
from cocoon.proxy import receipts as proxy_receipts
from cocoon.proxy.spotcheck import SpotSampler, execution
from cocoon.seal import AnswerDigest, SealError, seal_request
from cocoon.wire.messages import Message, Request, ResponseChunk, ResponseEnd, ResponseError, ResponseHead
from cocoon.worker.execution import Execution
from cocoon.worker.sealing import Unsealer
from tests.unit.test_receipt_checks import NOTARY, PEER, PROXY, settled

HPKE = X25519PrivateKey.generate()


def body(**sampling: Any) -> bytes:
    return json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "sealed"}],
                       **sampling}).encode()


def sealed(plain: bytes, *, stream: bool = False, deterministic: bool | None = None) -> tuple[Request, Any]:
    """`plain` sealed to HPKE, marked as the client marks it (`is_deterministic`) unless `deterministic` says."""
    mark = is_deterministic(plain) if deterministic is None else deterministic
    req = Request(call_id=3, endpoint="chat", model="fake-model", body=b"", stream=stream, include_usage=True,
                  deadline=time.time() + 60, request_id="req-7", max_tokens=5, sealed=True, deterministic=mark)
    sealing = seal_request(plain, [HPKE.public_key().public_bytes_raw()], req.envelope())
    return msgspec.structs.replace(req, body=sealing.sealed), sealing


async def execute(req: Request, unsealer: Unsealer | None = None) -> list[Message]:
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    await Execution(FakeEngine(), req, send, NOTARY, unsealer or Unsealer(HPKE)).run()
    return sent


def test_the_mark_is_bound_into_the_envelope_and_an_unmarked_envelope_is_what_older_peers_bind() -> None:
    req, _ = sealed(body(temperature=0))
    assert req.deterministic
    flipped = msgspec.structs.replace(req, deterministic=False)
    assert flipped.envelope() != req.envelope()
    with pytest.raises(SealError) as refused:  # a proxy that drops (or adds) the mark makes the body fail to open
        Unsealer(HPKE).open(flipped, time.time())
    assert refused.value.code == ErrorCode.SEALED_REQUEST_INVALID
    old = [1, flipped.request_id, "chat", "fake-model", False, True, 1, [], "", flipped.deadline]
    assert flipped.envelope() == msgspec.msgpack.encode(old)
    # on the wire an unmarked request carries no new field at all
    assert b"deterministic" not in msgspec.msgpack.encode(flipped)


def test_a_worker_refuses_a_request_marked_deterministic_whose_body_samples() -> None:
    unsealer = Unsealer(HPKE)
    liar, _ = sealed(body(temperature=0.9), deterministic=True)
    with pytest.raises(SealError) as refused:
        unsealer.open(liar, time.time())
    assert refused.value.code == ErrorCode.SEALED_ENVELOPE_MISMATCH and refused.value.status == 400
    # an unmarked deterministic body is the client's choice (or an older client's): it opens
    quiet, _ = sealed(body(seed=7), deterministic=False)
    assert unsealer.open(quiet, time.time()).body == body(seed=7)


async def test_the_lying_request_gets_an_error_and_the_engine_never_runs() -> None:
    liar, _ = sealed(body(temperature=0.9), deterministic=True)
    engine = FakeEngine()
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    await Execution(engine, liar, send, NOTARY, Unsealer(HPKE)).run()
    assert len(sent) == 1 and isinstance(sent[0], ResponseError)
    assert sent[0].code == ErrorCode.SEALED_ENVELOPE_MISMATCH and engine.generated_tokens == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_marked_answer_states_its_content_digest_which_the_client_and_proxy_check(stream: bool) -> None:
    plain = body(temperature=0)
    req, sealing = sealed(plain, stream=stream)
    sent = await execute(req)
    head, end = sent[0], sent[-1]
    assert isinstance(head, ResponseHead) and isinstance(end, ResponseEnd) and end.receipt is not None
    opener = sealing.answer(head.seal_key_id)
    payloads = [opener.open(m.data) for m in sent if isinstance(m, ResponseChunk)]
    receipt = end.receipt
    assert receipt.content_digest == content_digest(payloads)
    # the same request run whole or streamed says the same
    other, other_sealing = sealed(plain, stream=not stream)
    other_sent = await execute(other)
    other_opener = other_sealing.answer(other_sent[0].seal_key_id)  # type: ignore[union-attr]
    other_payloads = [other_opener.open(m.data) for m in other_sent if isinstance(m, ResponseChunk)]
    assert content_digest(other_payloads) == receipt.content_digest

    relayed = AnswerDigest()
    for m in sent:
        if isinstance(m, ResponseChunk):
            relayed.add(m.data)
    relayed.add(end.sealed_end)
    check: dict[str, Any] = {"req": req, "worker": PEER, "coefficient": 1000, "reported": end.usage,
                             "sealed_answer_hash": relayed.digest()}
    assert proxy_receipts.check_receipt(receipt, **check) == receipt
    # a marked request's receipt without the digest is refused by the proxy (nothing to compare runs by)
    bare = msgspec.structs.replace(receipt, content_digest=b"").sign(NOTARY.sign)
    with pytest.raises(ReceiptError, match="content_digest"):
        proxy_receipts.check_receipt(bare, **check)

    # the client checks the digest against the answer it opened
    charged = settled(end.usage)
    answered = msgspec.structs.replace(end, receipt=proxy_receipts.countersign(receipt, PROXY, charged, 1000),
                                       cost_nanoton=50, voucher=charged.client_voucher, coefficient=1000)
    seen = client_receipts.AnswerSeen(deterministic=True)
    for payload in payloads:
        seen.update(payload)
    args: dict[str, Any] = {"req": msgspec.structs.replace(req, body=plain, sealed=False),
                            "answer_hash": seen.answer_hash(), "proxy_key": PROXY.public_key}
    assert seen.content_digest() == receipt.content_digest
    assert client_receipts.check_receipt(answered, **args, content_digest=seen.content_digest()).signature
    # a worker that signs what another answer says (the answer it served is hashed truly) is caught by the client
    lie = msgspec.structs.replace(receipt, content_digest=content_digest([b'{"choices": []}'])).sign(NOTARY.sign)
    lied = msgspec.structs.replace(answered, receipt=proxy_receipts.countersign(lie, PROXY, charged, 1000))
    client_receipts.check_receipt(lied, **args)  # holds when the digest is not asked for (an unmarked request)
    with pytest.raises(ReceiptError, match="content_digest"):
        client_receipts.check_receipt(lied, **args, content_digest=seen.content_digest())
    assert answer_digest(payloads) == seen.answer_hash()
    # and so does `cocoon receipt verify`, from the request and answer as the app got them
    receipt_cli.check_hashes(receipt, plain, payloads)
    with pytest.raises(ReceiptError, match="content digest does not match"):
        receipt_cli.check_hashes(lie, plain, payloads)


async def test_an_unmarked_answer_states_no_content_digest() -> None:
    req, _ = sealed(body(temperature=1.0))
    assert not req.deterministic
    end = (await execute(req))[-1]
    assert isinstance(end, ResponseEnd) and end.receipt is not None and end.receipt.content_digest == b""
    assert client_receipts.AnswerSeen().content_digest() is None


def test_receipts_without_a_content_digest_encode_as_before() -> None:
    receipt = Receipt(request_id="r", request_hash=b"\x01" * 32, answer_hash=b"\x02" * 32, model="m",
                      usage=Usage(prompt_tokens=1), coefficient=1000, worker_key=NOTARY.worker_key, issued_at=1)
    assert b"content_digest" not in receipt.encode()
    stated = msgspec.structs.replace(receipt, content_digest=b"\x03" * 32).sign(NOTARY.sign)
    stated.verify_worker()
    with pytest.raises(ReceiptError):  # the digest is signed: changing it breaks the worker's signature
        msgspec.structs.replace(stated, content_digest=b"\x04" * 32).verify_worker()
    with pytest.raises(ReceiptError, match="content_digest"):
        msgspec.structs.replace(receipt, content_digest=b"short").sign(NOTARY.sign).verify_worker()


def test_the_proxy_samples_sealed_requests_by_their_mark_and_reads_each_run_from_its_receipt() -> None:
    sampler = SpotSampler(1.0)
    marked, _ = sealed(body(temperature=0))
    unmarked, _ = sealed(body(temperature=0), deterministic=False)
    assert sampler.sample(marked) is not None and sampler.sample(unmarked) is None
    assert sampler.deterministic == sampler.sampled == 1

    digest = content_digest([b'{"choices": [{"index": 0, "message": {"content": "amber"}}]}'])
    receipt = Receipt(request_id="r", request_hash=b"\x01" * 32, answer_hash=b"\x02" * 32, model="m",
                      usage=Usage(completion_tokens=1), coefficient=1000, worker_key=b"k" * 32, issued_at=1,
                      content_digest=digest)
    end = ResponseEnd(call_id=1, usage=receipt.usage, receipt=receipt)
    run = execution("k", "w", [b"sealed bytes the proxy cannot read"], end, sealed=True)
    assert run is not None and run.digest == digest.hex() and run.receipt == receipt.to_base64()
    assert execution("k", "w", [], msgspec.structs.replace(end, receipt=None), sealed=True) is None
    no_digest = msgspec.structs.replace(end, receipt=msgspec.structs.replace(receipt, content_digest=b""))
    assert execution("k", "w", [], no_digest, sealed=True) is None


def test_the_content_digest_fed_payload_by_payload_is_the_digest_of_all() -> None:
    payloads = [b'{"choices": [{"index": 0, "delta": {"content": "a"}}]}', b"[DONE]", b"\xff",
                b'{"choices": [{"index": 0, "delta": {"content": "\\ud800"}, "finish_reason": "stop"}]}']
    fed = ContentDigest()
    for payload in payloads:
        fed.add(payload)
    assert fed.digest() == content_digest(payloads) and len(fed.digest()) == 32
