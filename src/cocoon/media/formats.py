"""What this build of the FFmpeg libraries (PyAV's wheel) can write, and the limits a worker keeps.

Output containers and the codecs each is known to carry are listed here rather than asked of FFmpeg: its muxers'
own lists are incomplete (the ogg muxer does not list opus), and a combination it would refuse only at the first
packet would fail after the input was read. A codec is offered when its encoder is in the build.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import av

from cocoon.config import MediaLimits
from cocoon.core.errors import ApiError, ErrorCode, bad_request
from cocoon.media.job import TranscodeJob
from cocoon.wire.messages import MediaParams


class Container(NamedTuple):
    muxer: str  # FFmpeg's name for it
    content_type: str
    codecs: frozenset[str]  # encoders (FFmpeg names) it carries
    audio: str | None  # the encoder of an input's audio when the job's codec is a video codec (None: dropped)


CONTAINERS: dict[str, Container] = {
    "ogg": Container("ogg", "audio/ogg", frozenset({"libopus", "flac"}), None),
    "opus": Container("opus", "audio/ogg", frozenset({"libopus"}), None),
    "webm": Container("webm", "video/webm", frozenset({"libopus", "libvpx-vp9", "libvpx"}), "libopus"),
    "mp4": Container("mp4", "video/mp4", frozenset({"aac", "libx264", "mpeg4", "libopus", "libmp3lame"}), "aac"),
    "mkv": Container("matroska", "video/x-matroska", frozenset(
        {"libopus", "aac", "flac", "libmp3lame", "pcm_s16le", "libvpx-vp9", "libvpx", "libx264", "mpeg4"}),
        "libopus"),
    "mp3": Container("mp3", "audio/mpeg", frozenset({"libmp3lame"}), None),
    "wav": Container("wav", "audio/wav", frozenset({"pcm_s16le"}), None),
    "flac": Container("flac", "audio/flac", frozenset({"flac"}), None),
}

# what users call a codec -> the encoder used
ALIASES = {"h264": "libx264", "opus": "libopus", "mp3": "libmp3lame", "vp9": "libvpx-vp9", "vp8": "libvpx",
           "pcm": "pcm_s16le"}


class Encoder(NamedTuple):
    name: str  # FFmpeg's encoder name
    kind: str  # "audio" | "video"


@cache
def encoders() -> dict[str, Encoder]:
    """Every encoder some container here carries and the build has, by its FFmpeg name."""
    found: dict[str, Encoder] = {}
    for name in sorted(set().union(*(c.codecs for c in CONTAINERS.values()))):
        try:
            codec = av.codec.Codec(name, "w")
        except Exception:  # not in this build (av raises several types for an unknown codec)
            continue
        found[name] = Encoder(codec.name, codec.type)
    return found


@cache
def containers() -> dict[str, Container]:
    """The containers this build can write."""
    return {name: c for name, c in CONTAINERS.items() if c.muxer in av.formats_available}


def resolve(job: TranscodeJob) -> tuple[Container, Encoder]:
    """The container and encoder a job asks for; the ApiError a client gets when the build cannot."""
    container = containers().get(job.format)
    if container is None:
        raise ApiError(400, f"cannot write the container `{job.format}`; available: {', '.join(sorted(containers()))}",
                       code=ErrorCode.UNSUPPORTED_FORMAT, param="format")
    name = ALIASES.get(job.codec, job.codec)
    encoder = encoders().get(name)
    if encoder is None:
        raise ApiError(400, f"cannot encode `{job.codec}`; available: {', '.join(sorted(encoders()))}",
                       code=ErrorCode.UNSUPPORTED_CODEC, param="codec")
    if name not in container.codecs:
        raise ApiError(400, f"`{job.format}` cannot carry `{job.codec}`; it carries "
                            f"{', '.join(sorted(container.codecs & encoders().keys()))}",
                       code=ErrorCode.UNSUPPORTED_CODEC, param="codec")
    return container, encoder


def check_limits(job: TranscodeJob, limits: MediaLimits) -> None:
    """What the job asks that the limits refuse before any byte of input is read."""
    for name, value, most in (("width", job.width, limits.max_width), ("height", job.height, limits.max_height)):
        if value is not None and value > most:
            raise ApiError(413, f"`{name}` {value} is above this network's limit of {most} pixels",
                           code=ErrorCode.MEDIA_TOO_LARGE, param=name)
    if job.start >= limits.max_seconds:
        raise bad_request(f"`start` is beyond the longest input accepted ({limits.max_seconds:g} s)",
                          code=ErrorCode.INVALID_VALUE, param="start")


def declared_seconds(job: TranscodeJob, limits: MediaLimits) -> float:
    """The most input seconds the job can be charged for: its `duration`, or what the limits let it reach."""
    most = max(limits.max_seconds - job.start, 0.0)
    return most if job.duration is None else min(job.duration, most)


def capabilities(limits: MediaLimits) -> MediaParams:
    """What a worker announces for its `media` workload."""
    return MediaParams(formats=sorted(containers()), codecs=sorted(encoders()),
                       max_input_bytes=limits.max_input_bytes, max_seconds=limits.max_seconds,
                       max_width=limits.max_width, max_height=limits.max_height)
