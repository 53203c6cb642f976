"""Running one media job (the `media` workload) and streaming its output back over the proxy link.

The job's JSON comes in the request's body and its input in RequestParts (wire/parts.py), each acknowledged once
written to a spooled file in the worker's state directory; PyAV transcodes it in a thread (cocoon/media) into a
second spooled file, which goes back in ResponseChunks paced by the caller's ChunkAcks. Both files are removed
whatever happens. What the job processed (input milliseconds) is known before its first chunk, so the head
already carries it; the proxy charges it at the end, and nothing when the output does not arrive whole.

A sealed job (cocoon/seal) is opened like a sealed prompt (the job's JSON, bound to the envelope, which also
holds the input it declared for the reservation, `max_media_ms`): each part is opened in order as it arrives
(seal/parts.py: a part changed, dropped, reordered, repeated or an upload cut short is refused), and each output
chunk is sealed like an answer chunk, then the end marker. The end carries a receipt (worker/notary.py) over the
input and output files and, sealed, over the sealed job, parts and answer as they crossed the proxy, which checks
it before it charges.

No log line names the file or carries its bytes: the job's format and codec, sizes and times only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from cocoon.config import MediaLimits
from cocoon.core.errors import ApiError, ErrorCode
from cocoon.core.usage import Usage
from cocoon.ledger.receipts import Receipt, parts_digest
from cocoon.media.formats import check_limits, resolve
from cocoon.media.job import TranscodeJob, decode_job, invalid_media
from cocoon.media.spool import Spool
from cocoon.media.transcode import Cancelled, transcode
from cocoon.openai.http import internal_error
from cocoon.seal import AnswerDigest, AnswerSealer, PartOpener
from cocoon.wire.messages import (
    Message,
    PartAck,
    Request,
    RequestPart,
    ResponseChunk,
    ResponseEnd,
    ResponseError,
    ResponseHead,
)
from cocoon.wire.parts import PART_BYTES, Credit, PartQueue
from cocoon.worker.notary import Notary
from cocoon.worker.sealing import Unsealer, open_sealed

log = logging.getLogger(__name__)

Send = Callable[[Message], Awaitable[None]]


class MediaExecution:
    """One media job's run; `usage.media_ms` is the input it processed, the basis of billing."""

    def __init__(self, req: Request, send: Send, limits: MediaLimits, directory: Path, notary: Notary | None = None,
                 unsealer: Unsealer | None = None) -> None:
        self.req = req
        self.send = send
        self.limits = limits
        self.directory = directory
        self.notary = notary
        self.unsealer = unsealer
        self.parts = PartQueue()
        self.credit = Credit()  # the caller's pace for our chunks
        self.started = time.monotonic()
        self.usage: Usage | None = None
        self.body = req.body  # the job's JSON (a sealed job's, once opened)
        self.opener: PartOpener | None = None  # a sealed job's parts
        self.sealer: AnswerSealer | None = None  # ... and output chunks
        self.seal_key_id = b""
        self.input = hashlib.sha256()  # the input file, and (sealed) its parts as they came: the receipt's hashes
        self.sealed_input = hashlib.sha256()
        self.output = hashlib.sha256()  # the output file, and (sealed) its chunks and end marker as sent
        self.sealed_output = AnswerDigest()

    def feed(self, part: RequestPart) -> bool:
        return self.parts.feed(part)

    def chunks_taken(self, taken: int) -> None:
        self.credit.took(taken)

    def _ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    async def run(self) -> None:
        """Run the job and send its answer; every failure but a lost link becomes an error answer."""
        call_id = self.req.call_id
        try:
            if self.req.sealed:
                self._open()
            job = self._job()
            with Spool(self.directory, self.limits.max_input_bytes) as src, \
                    Spool(self.directory, self.limits.max_input_bytes, suffix=f".{job.format}") as dst:
                await self._receive(src)
                if src.size == 0:
                    raise invalid_media("the upload is empty")
                seconds, size = await self._transcode(src.finish(), dst.finish(), job)
                self.usage = Usage(media_ms=round(seconds * 1000))
                log.info("media job transcoded", extra={"fields": {
                    "format": job.format, "codec": job.codec, "input_bytes": src.size, "output_bytes": size,
                    "media_ms": self.usage.media_ms, "ms": round(self._ms(), 1)}})
                await self.send(ResponseHead(call_id=call_id, status=200, worker_ms=self._ms(), usage=self.usage,
                                             seal_key_id=self.seal_key_id))
                await self._send_output(dst.path)
        except ApiError as exc:
            log.info("media job refused or failed", extra={"fields": {"status": exc.status, "code": exc.code}})
            await self.send(ResponseError.from_api(exc, call_id))
            return
        except (ConnectionError, asyncio.CancelledError):
            raise  # the link or the call is gone: nobody is left to answer
        except Exception as exc:
            await self.send(ResponseError.from_api(internal_error(exc, "media job failed"), call_id))
            return
        finally:
            self.parts.abort()
            self.credit.fail()
        usage = self.usage or Usage()
        sealed_end = b""
        if self.sealer is not None:
            sealed_end = self.sealer.end()
            self.sealed_output.add(sealed_end)
        await self.send(ResponseEnd(call_id=call_id, usage=usage, worker_ms=self._ms(), receipt=self._receipt(usage),
                                    sealed_end=sealed_end))

    def _open(self) -> None:
        opened = open_sealed(self.unsealer, self.req)
        assert self.unsealer is not None  # it opened
        self.body, self.sealer, self.opener = opened.body, opened.answer, opened.parts()
        self.seal_key_id = self.unsealer.key.key_id

    def _receipt(self, usage: Usage) -> Receipt | None:
        if self.notary is None:
            return None
        sealed = self.req.sealed
        return self.notary.receipt(
            self.req, usage, self.output.digest(), request_hash=parts_digest(self.body, self.input.digest()),
            sealed_request_hash=parts_digest(self.req.body, self.sealed_input.digest()) if sealed else b"",
            sealed_answer_hash=self.sealed_output.digest() if sealed else b"")

    def _job(self) -> TranscodeJob:
        """The job decoded once more (a peer may have skipped its client's checks), checked against what this build
        can write and the limits, and held to the input the proxy reserved for (`max_media_ms`, in the envelope),
        which must not exceed the `duration` the job itself declares (sealed, where the proxy cannot read it)."""
        job = decode_job(self.body)
        resolve(job)
        check_limits(job, self.limits)
        reserved_ms = self.req.max_media_ms
        if reserved_ms <= 0:
            raise invalid_media("the job declared no input to process")
        if job.duration is not None and reserved_ms > max(round(job.duration * 1000), 1):
            raise ApiError(400, f"the request's envelope declares {reserved_ms} ms of input to reserve, more than "
                                f"the job's own duration ({job.duration:g} s): they must agree",
                           code=ErrorCode.SEALED_ENVELOPE_MISMATCH if self.req.sealed else ErrorCode.INVALID_VALUE,
                           param="duration")
        reserved = reserved_ms / 1000
        if job.duration is None or job.duration > reserved:
            job = msgspec.structs.replace(job, duration=reserved)
        return job

    async def _receive(self, spool: Spool) -> None:
        """The body's parts into `spool`, each acknowledged once written (the caller may then send another)."""
        while True:
            part = await self.parts.next()
            if part is None:
                raise asyncio.CancelledError("the upload was aborted")
            data = part.data
            if self.opener is not None:
                self.sealed_input.update(data)
                data = self.opener.part(data, part.last)
            self.input.update(data)
            spool.write(data)
            await self.send(PartAck(call_id=self.req.call_id, taken=self.parts.taken))
            if part.last:
                return

    async def _transcode(self, src: Path, dst: Path, job: TranscodeJob) -> tuple[float, int]:
        """PyAV in a thread; cancelling this waits for the thread to notice (between packets) before the files go."""
        cancelled = threading.Event()
        work = asyncio.get_running_loop().run_in_executor(None, transcode, src, dst, job, self.limits, cancelled)
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            cancelled.set()
            with contextlib.suppress(Cancelled, Exception):
                await work
            raise
        return result.seconds, result.output_bytes

    async def _send_output(self, path: Path) -> None:
        with path.open("rb") as out:
            while data := out.read(PART_BYTES):
                await self.credit.wait()
                self.credit.spend()
                self.output.update(data)
                if self.sealer is not None:  # the proxy relays the sealed chunk only
                    data = self.sealer.seal(data)
                    self.sealed_output.add(data)
                await self.send(ResponseChunk(call_id=self.req.call_id, data=data))
