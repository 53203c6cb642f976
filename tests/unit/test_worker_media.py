"""A media job on the worker (worker/media.py), in one process: a sealed job's parts opened in order, its output
sealed chunk by chunk and its receipt over the files and the sealed bytes, checked the way the proxy checks it;
an envelope that declares more input than the sealed job's own duration refused."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.attest.types import PeerIdentity
from cocoon.config import MediaLimits
from cocoon.core.usage import Usage
from cocoon.ledger.receipts import parts_digest
from cocoon.media import samples
from cocoon.media.job import TranscodeJob
from cocoon.proxy.receipts import check_receipt
from cocoon.seal import AnswerDigest, seal_request
from cocoon.wire.messages import Message, Request, RequestPart, ResponseChunk, ResponseEnd, ResponseError, ResponseHead
from cocoon.wire.parts import split
from cocoon.worker.media import MediaExecution
from cocoon.worker.notary import Notary
from cocoon.worker.sealing import Unsealer

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes_raw()
NOTARY = Notary(KEY.sign, PUBLIC, 1000)
PEER = PeerIdentity(role="worker", kind="fake", public_key=PUBLIC, image_hash=b"", cert_sha256=b"", not_after=0.0)
HPKE = X25519PrivateKey.generate()
HPKE_PUBLIC = HPKE.public_key().public_bytes_raw()


def media_request(job: TranscodeJob, max_media_ms: int) -> Request:
    return Request(endpoint="media", model="media", body=job.to_body(), stream=True, include_usage=False,
                   deadline=time.time() + 60, request_id=os.urandom(8).hex(), call_id=1, parts=True,
                   max_media_ms=max_media_ms)


async def run_job(req: Request, parts: list[RequestPart], directory: Path) -> list[Message]:
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    job = MediaExecution(req, send, MediaLimits(), directory, NOTARY, Unsealer(HPKE))
    for part in parts:
        assert job.feed(part)
    await job.run()
    return [m for m in sent if type(m) in (ResponseHead, ResponseChunk, ResponseEnd, ResponseError)]


async def test_a_sealed_job_runs_and_its_receipt_holds_over_what_the_proxy_relayed(tmp_path: Path) -> None:
    source = samples.tone_wav(tmp_path / "tone.wav", seconds=1.0, rate=16_000).read_bytes()
    job = TranscodeJob(format="ogg", codec="libopus")
    plain = media_request(job, 1000)
    envelope = msgspec.structs.replace(plain, sealed=True, body=b"").envelope()
    sealed = seal_request(plain.body, [HPKE_PUBLIC], envelope)
    req = msgspec.structs.replace(plain, sealed=True, body=sealed.sealed)
    pieces = split(source, -(-len(source) // 8))  # the input in one window of parts (no acks are read here)
    sealer = sealed.parts()
    parts = [RequestPart(call_id=1, data=sealer.part(p, i == len(pieces) - 1), last=i == len(pieces) - 1)
             for i, p in enumerate(pieces)]
    answers = await run_job(req, parts, tmp_path)
    head, *chunks, end = answers
    assert isinstance(head, ResponseHead) and isinstance(end, ResponseEnd), answers
    opener = sealed.answer(head.seal_key_id)
    output = b"".join(opener.open(c.data) for c in chunks if isinstance(c, ResponseChunk))
    opener.end(end.sealed_end)
    assert output.startswith(b"OggS")
    receipt = end.receipt
    assert receipt is not None
    assert receipt.request_hash == parts_digest(plain.body, hashlib.sha256(source).digest())
    assert receipt.answer_hash == hashlib.sha256(output).digest()
    relayed = AnswerDigest()
    for c in chunks:
        relayed.add(c.data)  # type: ignore[union-attr]
    relayed.add(end.sealed_end)
    sealed_parts_hash = hashlib.sha256(b"".join(p.data for p in parts)).digest()
    check_receipt(receipt, req=req, worker=PEER, coefficient=1000, reported=end.usage,
                  sealed_answer_hash=relayed.digest(), request_hash=parts_digest(req.body, sealed_parts_hash))
    assert end.usage == Usage(media_ms=1000)


async def test_an_envelope_declaring_more_input_than_the_job_is_refused(tmp_path: Path) -> None:
    source = samples.tone_wav(tmp_path / "tone.wav", seconds=1.0, rate=16_000).read_bytes()
    req = media_request(TranscodeJob(format="ogg", codec="libopus", duration=0.5), 5000)
    [error] = await run_job(req, [RequestPart(call_id=1, data=source, last=True)], tmp_path)
    assert isinstance(error, ResponseError)
    assert (error.status, error.code, error.param) == (400, "invalid_value", "duration")
    assert "5000 ms" in error.message


async def test_a_sealed_envelope_declaring_more_input_than_the_sealed_job_is_a_mismatch(tmp_path: Path) -> None:
    source = samples.tone_wav(tmp_path / "tone.wav", seconds=1.0, rate=16_000).read_bytes()
    plain = media_request(TranscodeJob(format="ogg", codec="libopus", duration=0.5), 5000)
    sealed = seal_request(plain.body, [HPKE_PUBLIC], msgspec.structs.replace(plain, sealed=True, body=b"").envelope())
    req = msgspec.structs.replace(plain, sealed=True, body=sealed.sealed)
    part = RequestPart(call_id=1, data=sealed.parts().part(source, True), last=True)
    [error] = await run_job(req, [part], tmp_path)
    assert isinstance(error, ResponseError)
    assert (error.status, error.code, error.param) == (400, "sealed_envelope_mismatch", "duration")
