"""The media API: `POST /v1/media/transcode` (multipart: the `file` and the job's fields) and
`GET /v1/media/formats`.

The upload is spooled to a temporary file in the client's state directory as it arrives (curl sends the file
before the fields that say what to do with it), then sent to the proxy in parts paced end to end
(wire/parts.py). The output comes back in paced chunks and is spooled too, so that the answer's headers can say
what was processed (`x-cocoon-media-seconds`) and charged (`x-cocoon-cost-nanoton`) and an output that breaks
off is a clean error rather than a truncated file (and is charged nothing); the body then goes out chunked. Memory
holds at most a window of parts whatever the file's size; both files are removed whatever happens.

Nothing logged names the file or quotes its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import BodyPartReader, web

from cocoon.client.proxy_link import ProxyLink
from cocoon.core.errors import ApiError, ErrorCode, bad_request
from cocoon.media.formats import CONTAINERS
from cocoon.media.job import FIELDS, TranscodeJob, invalid_media, parse_job
from cocoon.media.spool import Spool
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
            raise ApiError(501, "media transcoding needs a direct link to a proxy; this client sends through a relay, "
                                "whose encapsulated messages cannot carry a body in parts", type="api_error",
                           code=ErrorCode.UNSUPPORTED_PARAMETER)
        if request.content_type != "multipart/form-data":
            raise ApiError(415, "send the file as multipart/form-data (curl -F file=@NAME -F format=... -F codec=...)",
                           code=ErrorCode.UNSUPPORTED_MEDIA_TYPE)
        with Spool(self.directory, self.cfg.max_media_bytes) as upload:
            job, has_file = await self._read_form(request, upload)
            if not has_file:
                raise bad_request("the `file` part is required", code=ErrorCode.MISSING_FIELD, param="file")
            if upload.size == 0:
                raise invalid_media("the upload is empty")
            req = Request(
                endpoint=MEDIA_ENDPOINT, model=MEDIA_WORKLOAD, body=job.to_body(), stream=True, include_usage=False,
                deadline=time.time() + self.cfg.request_timeout_s, request_id=self.api.request_id(request),
                max_coefficient=self.cfg.default_max_coefficient, region=self.api.region(request), parts=True,
                max_media_ms=self._reserved_ms(job))
            payments = self.api.payments
            ticket = payments.begin(req.request_id) if payments is not None else 0
            try:
                return await self._answer(request, req, job, upload.finish(), ticket, started)
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

    async def _read_form(self, request: web.Request, upload: Spool) -> tuple[TranscodeJob, bool]:
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
                      started: float) -> web.StreamResponse:
        api = self.api
        try:
            conn, call = await api.link.open(req)
        except ApiError:
            if api.payments is not None:  # it never reached a proxy: nothing can be charged for it
                api.payments.unsent(ticket)
            raise
        uploading = asyncio.create_task(_upload(conn, call, source))
        api.stats.active += 1
        try:
            with Spool(self.directory, self.cfg.max_media_bytes) as output:
                head, end = await self._receive(call, ticket, output)
                timing = {"x-cocoon-client-ms": f"{(time.monotonic() - started) * 1000:.1f}",
                          "x-cocoon-proxy-ms": f"{head.proxy_ms:.1f}", "x-cocoon-worker-ms": f"{head.worker_ms:.1f}"}
                api.stats.answered(MEDIA_WORKLOAD, time.monotonic() - started, None)
                return await _send_file(request, output.finish(), {
                    "content-type": CONTAINERS[job.format].content_type if job.format in CONTAINERS
                    else "application/octet-stream",
                    SECONDS_HEADER: f"{end.usage.media_ms / 1000:.3f}", COST_HEADER: str(end.cost_nanoton),
                    **timing})
        finally:
            api.stats.active -= 1
            uploading.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await uploading
            if not call.done:  # our HTTP client went away, or we failed: stop the job on the worker
                call.cancel("API client disconnected")
                api.stats.record("cancelled")

    async def _receive(self, call: Call, ticket: int, output: Spool) -> tuple[ResponseHead, ResponseEnd]:
        """The answer into `output`, each chunk acknowledged once written; its head and end, or the ApiError."""
        head: ResponseHead | None = None
        chunks = 0
        while True:
            msg = await self.api.next_answer(call)
            if isinstance(msg, ResponseHead):
                head = msg
            elif isinstance(msg, ResponseChunk):
                output.write(msg.data)
                chunks += 1
                call.ack_chunks(chunks)
            elif isinstance(msg, ResponseEnd):
                self.api.paid(ticket, "ok", msg)
                if head is None:
                    raise ApiError(502, "the proxy ended the answer before its head", code=ErrorCode.UPSTREAM_ERROR)
                return head, msg
            elif isinstance(msg, ResponseError):
                self.api.paid(ticket, ErrorCode.label(msg.code), msg)
                raise msg.to_api()


async def _upload(conn: Connection, call: Call, source: Path) -> None:
    """The spooled file to the proxy in parts, as fast as the far end takes them."""
    with source.open("rb") as src:
        data = src.read(PART_BYTES)
        while True:
            following = src.read(PART_BYTES)
            await conn.send_part(call, data, last=not following)
            if not following:
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
