"""What a media file holds: its container, length and streams (`probe`), for the limits and for tests."""

from __future__ import annotations

from pathlib import Path

import av
import msgspec

from cocoon.media.job import invalid_media


class StreamInfo(msgspec.Struct, frozen=True):
    kind: str  # audio | video
    codec: str
    sample_rate: int = 0
    channels: int = 0
    width: int = 0
    height: int = 0


class MediaInfo(msgspec.Struct, frozen=True):
    container: str
    duration_s: float | None  # as the container declares it (None: it does not say)
    streams: list[StreamInfo]


def probe(path: Path) -> MediaInfo:
    """The file's container and streams; ApiError(400, invalid_media) when it is not audio or video."""
    try:
        with av.open(str(path), mode="r") as container:
            return _read(container)
    except av.FFmpegError:
        raise invalid_media("the file is not audio or video that can be read") from None


def _read(container: av.container.InputContainer) -> MediaInfo:
    streams = []
    for s in container.streams:
        if s.type == "audio":
            ctx = s.codec_context
            streams.append(StreamInfo("audio", ctx.name, sample_rate=ctx.sample_rate, channels=ctx.channels))
        elif s.type == "video":
            ctx = s.codec_context
            streams.append(StreamInfo("video", ctx.name, width=ctx.width, height=ctx.height))
    duration = container.duration / av.time_base if container.duration is not None else None
    return MediaInfo(container.format.name, duration, streams)


def measured_duration(path: Path) -> float:
    """The length of a file's first audio or video stream, from the end of its last decoded frame: what tests
    compare (a container's declared length can be rounded or absent)."""
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type in ("audio", "video"))
        first: float | None = None
        end = 0.0
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            first = frame.time if first is None else first
            end = max(end, frame.time + _frame_seconds(frame, stream))
        return end - (first or 0.0)


def _frame_seconds(frame: av.AudioFrame | av.VideoFrame, stream: av.stream.Stream) -> float:
    if isinstance(frame, av.AudioFrame):
        return frame.samples / frame.sample_rate
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / rate) if rate else 0.0
