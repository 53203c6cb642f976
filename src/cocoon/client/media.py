"""The media API: `POST /v1/media/transcode` (multipart: the `file` and the job's fields) and
`GET /v1/media/formats`.

The upload is spooled to a temporary file in the client's state directory as it arrives (curl sends the file
before the fields that say what to do with it), then sent to the proxy in parts paced end to end
(wire/parts.py). The output comes back in paced chunks and is spooled too, so that the answer's headers can say
what was processed (`x-cocoon-media-seconds`) and charged (`x-cocoon-cost-nanoton`) and an output that breaks
off is a clean error rather than a truncated file (and is charged nothing); the body then goes out chunked. Memory
holds at most a window of parts whatever the file's size; both files are removed whatever happens.

With `seal_requests` (the default) the job is sealed like a prompt (client/sealing.py, to workers of the media
workload this client verified itself), its input part by part (seal/parts.py) and its output comes back sealed
chunk by chunk: the proxy reads only the envelope, which holds the input the job declared (`max_media_ms`, what
it reserves money for). When the proxy moves the job to another worker after its parts reached one that failed, it
asks for the input again (`Request.resend_parts`): it is sent again from the spool, sealed to the same bytes. The
answer carries the worker's receipt, countersigned with the charge, in `x-cocoon-receipt` (the output is spooled
before the headers go, so a header can carry it), checked here over the input and output files
(ledger/receipts.py: `parts_digest`, SHA-256 of the output).

Nothing logged names the file or quotes its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import BodyPartReader, web

from cocoon.client.proxy_link import ProxyLink
from cocoon.client.receipts import RECEIPT_HEADER, Answering, FileSeen
from cocoon.client.sealing import SealedCall
from cocoon.core.errors import ApiError, ErrorCode, bad_request
from cocoon.ledger.receipts import Receipt, parts_digest
from cocoon.media.formats import CONTAINERS
from cocoon.media.job import FIELDS, TranscodeJob, invalid_media, parse_job
from cocoon.media.spool import Spool
from cocoon.seal import SealedRequest, SealError
from cocoon.wire.connection import Call, Connection
from cocoon.wire.messages import (
    MEDIA_ENDPOINT,
    MEDIA_WORKLOAD,
    Request,
    ResponseChunk,
    ResponseEnd,
    ResponseError,
    ResponseHead,
)
from cocoon.wire.parts import PART_BYTES

if TYPE_CHECKING:
    from cocoon.client.api import ClientApi

MAX_FIELD_BYTES = 256  # a form field other than the file (a codec name, a number)
SECONDS_HEADER = "x-cocoon-media-seconds"
COST_HEADER = "x-cocoon-cost-nanoton"


class MediaApi:
    def __init__(self, api: ClientApi) -> None:
        self.api = api
        self.cfg = api.cfg
        self.directory = api.cfg.state_path / "media"

    async def formats(self, request: web.Request) -> web.Response:
        """What the workers linked to the proxy can write, and their limits (each distinct announcement)."""
        reply = await self.api.link.models()
        formats = sorted({f for m in reply.media for f in m.formats})
        codecs = sorted({c for m in reply.media for c in m.codecs})
        return web.json_response({
            "object": "list", "workers": reply.media_workers, "formats": formats, "codecs": codecs,
            "limits": [{"max_input_bytes": m.max_input_bytes, "max_seconds": m.max_seconds,
                        "max_width": m.max_width, "max_height": m.max_height} for m in reply.media]})

    async def transcode(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        if not isinstance(self.api.link, ProxyLink):
            raise ApiError(501, "media transcoding needs a direct link to a proxy, and this client sends through a "
                                "relay (Oblivious HTTP): an encapsulated message carries one body, whole, not an "
                                "upload in parts; use a client linked to a proxy", type="api_error",
                           code=ErrorCode.MEDIA_NEEDS_DIRECT_LINK)
        if request.content_type != "multipart/form-data":
            raise ApiError(415, "send the file as multipart/form-data (curl -F file=@NAME -F format=... -F codec=...)",
                           code=ErrorCode.UNSUPPORTED_MEDIA_TYPE)
        with Spool(self.directory, self.cfg.max_media_bytes) as upload:
            input_hash = hashlib.sha256()
            job, has_file = await self._read_form(request, upload, input_hash)
            if not has_file:
                raise bad_request("the `file` part is required", code=ErrorCode.MISSING_FIELD, param="file")
            if upload.size == 0:
                raise invalid_media("the upload is empty")
            req = Request(
                endpoint=MEDIA_ENDPOINT, model=MEDIA_WORKLOAD, body=job.to_body(), stream=True, include_usage=False,
                deadline=time.time() + self.cfg.request_timeout_s, request_id=self.api.request_id(request),
                max_coefficient=self.cfg.default_max_coefficient, region=self.api.region(request), parts=True,
                max_media_ms=self._reserved_ms(job), resend_parts=True)
            payments = self.api.payments
            ticket = payments.begin(req.request_id) if payments is not None else 0
            try:
                return await self._answer(request, req, job, upload.finish(), ticket, started,
                                          parts_digest(req.body, input_hash.digest()))
            finally:
                if payments is not None:
                    payments.end(ticket, None)

    def _reserved_ms(self, job: TranscodeJob) -> int:
        """The input the job may process, as the proxy reserves it: its `duration`, within the client's bound."""
        most = self.cfg.max_media_seconds - job.start
        if most <= 0:
            raise bad_request(f"`start` is beyond the longest input this client sends ({self.cfg.max_media_seconds:g}"
                              f" s)", code=ErrorCode.INVALID_VALUE, param="start")
        return max(round(min(job.duration or most, most) * 1000), 1)

    async def _read_form(self, request: web.Request, upload: Spool, input_hash: hashlib._Hash
                         ) -> tuple[TranscodeJob, bool]:
        fields: dict[str, str] = {}
        has_file = False
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise bad_request("nested multipart bodies are not accepted", param="file")
            name = part.name or ""
            if name == "file":
                if has_file:
                    raise bad_request("send one `file`", code=ErrorCode.DUPLICATE_KEY, param="file")
                has_file = True
                while chunk := await part.read_chunk(PART_BYTES):
                    upload.write(chunk)
                    input_hash.update(chunk)
            elif name in FIELDS:
                if name in fields:
                    raise bad_request(f"`{name}` is given twice", code=ErrorCode.DUPLICATE_KEY, param=name)
                raw = b""
                while chunk := await part.read_chunk(MAX_FIELD_BYTES + 1):  # however the bytes arrive
                    raw += chunk
                    if len(raw) > MAX_FIELD_BYTES:
                        raise bad_request(f"`{name}` is too long", code=ErrorCode.INVALID_VALUE, param=name)
                try:
                    fields[name] = raw.decode()
                except UnicodeDecodeError:
                    raise bad_request(f"`{name}` is not text", code=ErrorCode.INVALID_TYPE, param=name) from None
            else:
                raise bad_request(f"unknown field `{name[:64]}`; expected file, {', '.join(FIELDS)}",
                                  code=ErrorCode.UNKNOWN_FIELD, param=name[:64])
        return parse_job(fields), has_file

    async def _answer(self, request: web.Request, req: Request, job: TranscodeJob, source: Path, ticket: int,
                      started: float, request_hash: bytes) -> web.StreamResponse:
        api = self.api
        assert isinstance(api.link, ProxyLink)
        upload = _Upload(api.link, source)
        try:
            call, proxy_key = await (api.sealer.request(req, upload.send) if api.sealer is not None
                                     else upload.send(req, None))
        except ApiError:
            await upload.stop()
            if api.payments is not None:  # it never reached a proxy: nothing can be charged for it
                api.payments.unsent(ticket)
            raise
        api.stats.active += 1
        answering = _answering(req, ticket, proxy_key, call, request_hash)
        try:
            with Spool(self.directory, self.cfg.max_media_bytes) as output:
                head, end, receipt = await self._receive(call, answering, output)
                timing = {"x-cocoon-client-ms": f"{(time.monotonic() - started) * 1000:.1f}",
                          "x-cocoon-proxy-ms": f"{head.proxy_ms:.1f}", "x-cocoon-worker-ms": f"{head.worker_ms:.1f}"}
                api.stats.answered(MEDIA_WORKLOAD, time.monotonic() - started, None)
                return await _send_file(request, output.finish(), {
                    "content-type": CONTAINERS[job.format].content_type if job.format in CONTAINERS
                    else "application/octet-stream",
                    SECONDS_HEADER: f"{end.usage.media_ms / 1000:.3f}", COST_HEADER: str(end.cost_nanoton),
                    **({RECEIPT_HEADER: receipt.to_base64()} if receipt is not None else {}), **timing})
        except SealError:  # a sealed chunk or end that did not open: never accepted as charged
            api.disown(ticket)
            raise
        finally:
            api.stats.active -= 1
            await upload.stop()
            if not call.done:  # our HTTP client went away, or we failed: stop the job on the worker
                call.cancel("API client disconnected")
                api.stats.record("cancelled")

    async def _receive(self, call: Call | SealedCall, answering: Answering, output: Spool
                       ) -> tuple[ResponseHead, ResponseEnd, Receipt | None]:
        """The answer into `output`, each chunk acknowledged once written; its head, end and receipt (if it holds),
        or the ApiError."""
        head: ResponseHead | None = None
        chunks = 0
        answer = FileSeen()
        while True:
            msg = await self.api.next_answer(call)
            if isinstance(msg, ResponseHead):
                head = msg
            elif isinstance(msg, ResponseChunk):
                output.write(msg.data)
                answer.update(msg.data)
                chunks += 1
                call.ack_chunks(chunks)
            elif isinstance(msg, ResponseEnd):
                receipt = self.api.checked_receipt(answering, msg, answer)
                self.api.paid(answering.ticket, "ok", msg, receipt)
                if head is None:
                    raise ApiError(502, "the proxy ended the answer before its head", code=ErrorCode.UPSTREAM_ERROR)
                return head, msg, receipt
            elif isinstance(msg, ResponseError):
                self.api.paid(answering.ticket, ErrorCode.label(msg.code), msg)
                raise msg.to_api()


def _answering(req: Request, ticket: int, proxy_key: bytes, call: Call | SealedCall, request_hash: bytes
               ) -> Answering:
    return Answering(req, ticket, proxy_key, call.worker_key if isinstance(call, SealedCall) else b"",
                      request_hash=request_hash)


class _Upload:
    """The spooled input sent to the proxy in parts (sealed when the request is), sent again from its first part
    whenever the proxy asks (it moved the job to another worker), until the call ends; a request sealed again
    (to fresh workers) is a new call, with its own upload."""

    def __init__(self, link: ProxyLink, source: Path) -> None:
        self.link = link
        self.source = source
        self.task: asyncio.Task[None] | None = None

    async def send(self, req: Request, sealed: SealedRequest | None) -> tuple[Call, bytes]:
        """Send `req` (sealed: its body is `sealed`'s), then its parts; the call and the proxy's voucher key."""
        conn, call = await self.link.open(req)
        await self.stop()
        self.task = asyncio.create_task(_upload(conn, call, self.source, sealed))
        return call, conn.peer.voucher_key

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self.task
            self.task = None


async def _upload(conn: Connection, call: Call, source: Path, sealed: SealedRequest | None) -> None:
    """The spooled file to the proxy in parts, as fast as the far end takes them; again, whole, each time the proxy
    asks for a later attempt."""
    attempt = 0
    while True:
        await _send_parts(conn, call, source, sealed, attempt)
        assert call.credit is not None  # made by the first part sent
        attempt = await call.credit.moved_on(attempt)


async def _send_parts(conn: Connection, call: Call, source: Path, sealed: SealedRequest | None, attempt: int
                      ) -> None:
    """Every part of `source` as sending `attempt`, sealed from the first when `sealed`; stops early when the proxy
    asks for a later attempt."""
    sealer = sealed.parts() if sealed is not None else None
    with source.open("rb") as src:
        data = src.read(PART_BYTES)
        while True:
            following = src.read(PART_BYTES)
            last = not following
            if not await conn.send_part(call, sealer.part(data, last) if sealer else data, last, attempt):
                return
            if last:
                return
            data = following


async def _send_file(request: web.Request, path: Path, headers: dict[str, str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers=headers)
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    with path.open("rb") as out:
        while data := out.read(PART_BYTES):
            await resp.write(data)
    await resp.write_eof()
    return resp
