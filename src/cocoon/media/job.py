"""What a transcoding job asks for: the output container and codec, and optional bitrate, sample rate, frame
size and the span of the input to keep. It travels as the JSON body of a wire `Request` (the input's bytes follow
it in parts), so the proxy relays it like any other body and the worker decodes it once more: a peer may skip its
client's checks."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import msgspec

from cocoon.core.errors import DECODE_ERRORS, ApiError, ErrorCode, bad_request

FIELDS = ("format", "codec", "bitrate", "sample_rate", "width", "height", "start", "duration")
_BITRATE = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")
MAX_BITRATE = 100_000_000  # bits per second: beyond any codec offered here
MAX_SAMPLE_RATE = 384_000


class TranscodeJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    format: str  # output container, e.g. ogg, webm, mp4, mp3, wav (media/formats.py)
    codec: str  # the encoder of the output's main stream, e.g. libopus, aac, libvpx-vp9, h264
    bitrate: int | None = None  # bits per second
    sample_rate: int | None = None  # Hz (audio)
    width: int | None = None  # pixels (video); the other side keeps the aspect ratio when only one is given
    height: int | None = None
    start: float = 0.0  # seconds of the input skipped
    duration: float | None = None  # seconds of the input kept from `start` (None: to its end)

    def to_body(self) -> bytes:
        return msgspec.json.encode(self)

    def end(self) -> float:
        """Where the kept span of the input ends, in seconds (inf: at its end)."""
        return math.inf if self.duration is None else self.start + self.duration


_DECODER = msgspec.json.Decoder(TranscodeJob)


def decode_job(body: bytes) -> TranscodeJob:
    """The job a wire body carries, checked as `parse_job` checks form fields; ApiError(400) otherwise."""
    try:
        job = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid media job: {exc}", code=ErrorCode.INVALID_VALUE) from None
    except (*DECODE_ERRORS, RecursionError):
        raise bad_request("the media job is not a JSON object", code=ErrorCode.INVALID_JSON) from None
    return _checked(job)


def parse_job(fields: Mapping[str, str]) -> TranscodeJob:
    """A job from the API's form fields (strings); ApiError(400) naming the field that is wrong."""
    for name in ("format", "codec"):
        if not fields.get(name, "").strip():
            raise bad_request(f"the `{name}` field is required", code=ErrorCode.MISSING_FIELD, param=name)
    job = TranscodeJob(
        format=fields["format"].strip().lower(), codec=fields["codec"].strip().lower(),
        bitrate=_bitrate(fields.get("bitrate")), sample_rate=_int(fields, "sample_rate"),
        width=_int(fields, "width"), height=_int(fields, "height"),
        start=_seconds(fields, "start") or 0.0, duration=_seconds(fields, "duration"))
    return _checked(job)


def _checked(job: TranscodeJob) -> TranscodeJob:
    if not re.fullmatch(r"[a-z0-9_\-]{1,32}", job.format):
        raise bad_request("`format` must be a container name such as ogg, webm, mp4, mp3 or wav",
                          code=ErrorCode.INVALID_VALUE, param="format")
    if not re.fullmatch(r"[a-z0-9_\-]{1,32}", job.codec):
        raise bad_request("`codec` must be a codec name such as libopus, aac, libvpx-vp9 or h264",
                          code=ErrorCode.INVALID_VALUE, param="codec")
    _within(job.bitrate, "bitrate", 1, MAX_BITRATE)
    _within(job.sample_rate, "sample_rate", 1, MAX_SAMPLE_RATE)
    _within(job.width, "width", 2, 1 << 16)
    _within(job.height, "height", 2, 1 << 16)
    if not (math.isfinite(job.start) and job.start >= 0):
        raise bad_request("`start` must be a number of seconds, 0 or more", code=ErrorCode.INVALID_VALUE,
                          param="start")
    if job.duration is not None and not (math.isfinite(job.duration) and job.duration > 0):
        raise bad_request("`duration` must be a positive number of seconds", code=ErrorCode.INVALID_VALUE,
                          param="duration")
    return job


def _within(value: int | None, name: str, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise bad_request(f"`{name}` must be between {low} and {high}, not {value}", code=ErrorCode.INVALID_VALUE,
                          param=name)


def _int(fields: Mapping[str, str], name: str) -> int | None:
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise bad_request(f"`{name}` must be a whole number", code=ErrorCode.INVALID_TYPE, param=name)
    return int(raw)


def _seconds(fields: Mapping[str, str], name: str) -> float | None:
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"`{name}` must be a number of seconds", code=ErrorCode.INVALID_TYPE, param=name) from None
    if not math.isfinite(value):
        raise bad_request(f"`{name}` must be a finite number of seconds", code=ErrorCode.INVALID_VALUE, param=name)
    return value


def _bitrate(raw: str | None) -> int | None:
    """Bits per second, written plainly or with a k/M suffix (`64k`, `1.5M`)."""
    raw = (raw or "").strip()
    if not raw:
        return None
    m = _BITRATE.match(raw)
    if m is None:
        raise bad_request("`bitrate` must be bits per second, e.g. 64000 or 64k", code=ErrorCode.INVALID_TYPE,
                          param="bitrate")
    scale = {"": 1, "k": 1000, "m": 1_000_000}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def too_large(message: str, param: str | None = None) -> ApiError:
    return ApiError(413, message, code=ErrorCode.MEDIA_TOO_LARGE, param=param)


def invalid_media(message: str) -> ApiError:
    return ApiError(400, message, code=ErrorCode.INVALID_MEDIA, param="file")
