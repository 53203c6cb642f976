"""Running one media job (the `media` workload) and streaming its output back over the proxy link.

The job's JSON comes in the request's body and its input in RequestParts (wire/parts.py), each acknowledged once
written to a spooled file in the worker's state directory; PyAV transcodes it in a thread (cocoon/media) into a
second spooled file, which goes back in ResponseChunks paced by the caller's ChunkAcks. Both files are removed
whatever happens. What the job processed (input milliseconds) is known before its first chunk, so the head
already carries it; the proxy charges it at the end, and nothing when the output does not arrive whole.

No log line names the file or carries its bytes: the job's format and codec, sizes and times only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from cocoon.config import MediaLimits
from cocoon.core.errors import ApiError
from cocoon.core.usage import Usage
from cocoon.media.formats import check_limits, resolve
from cocoon.media.job import TranscodeJob, decode_job, invalid_media
from cocoon.media.spool import Spool
from cocoon.media.transcode import Cancelled, transcode
from cocoon.openai.http import internal_error
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

log = logging.getLogger(__name__)

Send = Callable[[Message], Awaitable[None]]


class MediaExecution:
    """One media job's run; `usage.media_ms` is the input it processed, the basis of billing."""

    def __init__(self, req: Request, send: Send, limits: MediaLimits, directory: Path) -> None:
        self.req = req
        self.send = send
        self.limits = limits
        self.directory = directory
        self.parts = PartQueue()
        self.credit = Credit()  # the caller's pace for our chunks
        self.started = time.monotonic()
        self.usage: Usage | None = None

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
                await self.send(ResponseHead(call_id=call_id, status=200, worker_ms=self._ms(), usage=self.usage))
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
        await self.send(ResponseEnd(call_id=call_id, usage=self.usage or Usage(), worker_ms=self._ms()))

    def _job(self) -> TranscodeJob:
        """The job decoded once more (a peer may have skipped its client's checks), checked against what this build
        can write and the limits, and held to the input the proxy reserved for (`max_media_ms`)."""
        job = decode_job(self.req.body)
        resolve(job)
        check_limits(job, self.limits)
        reserved = self.req.max_media_ms / 1000
        if reserved <= 0:
            raise invalid_media("the job declared no input to process")
        if job.duration is None or job.duration > reserved:
            job = msgspec.structs.replace(job, duration=reserved)
        return job

    async def _receive(self, spool: Spool) -> None:
        """The body's parts into `spool`, each acknowledged once written (the caller may then send another)."""
        while True:
            part = await self.parts.next()
            if part is None:
                raise asyncio.CancelledError("the upload was aborted")
            spool.write(part.data)
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
                await self.send(ResponseChunk(call_id=self.req.call_id, data=data))
