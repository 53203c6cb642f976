"""One transcoding job with PyAV: the input file decoded, the span asked for re-encoded into the output file.

It blocks (run it in a thread) and checks `cancelled` between packets. What it processed, the input seconds it
charges for, is the span of the main stream's decoded frames within `start`..`start + duration`. Every failure a
client can act on is an ApiError (media/job.py's codes); anything else is the worker's own fault.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av

from cocoon.config import MediaLimits
from cocoon.core.errors import ApiError, ErrorCode, bad_request
from cocoon.media.formats import Container, Encoder, check_limits, encoders, resolve
from cocoon.media.job import TranscodeJob, invalid_media, too_large

# per-encoder options that trade size for speed: a transcoding network answers while the client waits
_SPEED = {"libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
          "libvpx": {"deadline": "realtime", "cpu-used": "8"},
          "libx264": {"preset": "veryfast"}}
_SIZE_CHECK_EVERY = 64  # packets between checks of the output's size


class Cancelled(Exception):
    """The job was cancelled (its client went away)."""


class Result(NamedTuple):
    seconds: float  # input seconds processed
    output_bytes: int


def transcode(src: Path, dst: Path, job: TranscodeJob, limits: MediaLimits, cancelled: threading.Event) -> Result:
    container, encoder = resolve(job)
    check_limits(job, limits)
    try:
        inp = av.open(str(src), mode="r")
    except av.FFmpegError:
        raise invalid_media("the file is not audio or video that can be read") from None
    with inp:
        declared = inp.duration / av.time_base if inp.duration is not None else None
        if declared is not None and declared > limits.max_seconds:
            raise too_large(f"the input lasts {declared:.3f} s, above this network's limit of "
                            f"{limits.max_seconds:g} s", "file")
        main = next((s for s in inp.streams if s.type == encoder.kind), None)
        if main is None:
            raise invalid_media(f"the file has no {encoder.kind} stream to encode with `{job.codec}`")
        try:
            out = av.open(str(dst), mode="w", format=container.muxer)
        except av.FFmpegError:
            raise ApiError(400, f"cannot write `{job.format}`", code=ErrorCode.UNSUPPORTED_FORMAT,
                           param="format") from None
        with out:
            lanes = [_lane(main, out, encoder, job, limits, main=True)]
            extra = _extra_audio(inp, container, encoder)
            if extra is not None:
                lanes.append(_lane(extra, out, encoders()[container.audio or ""], job, limits, main=False))
            processed = _run(inp, out, lanes, job, limits, cancelled, dst)
    if processed <= 0:
        raise invalid_media("no audio or video could be decoded from the file (in the span asked)")
    return Result(processed, dst.stat().st_size)


def _extra_audio(inp: av.container.InputContainer, container: Container, encoder: Encoder) -> av.stream.Stream | None:
    """A video job keeps the input's audio when its container has an audio encoder in this build."""
    if encoder.kind != "video" or container.audio is None or container.audio not in encoders():
        return None
    return next((s for s in inp.streams if s.type == "audio"), None)


def _run(inp: av.container.InputContainer, out: av.container.OutputContainer, lanes: list[_Lane],
         job: TranscodeJob, limits: MediaLimits, cancelled: threading.Event, dst: Path) -> float:
    by_index = {lane.src.index: lane for lane in lanes}
    end = job.end()
    packets = 0
    try:
        demuxed = inp.demux([lane.src for lane in lanes])
        for packet in demuxed:
            if cancelled.is_set():
                raise Cancelled
            lane = by_index[packet.stream.index]
            if lane.finished:
                if all(other.finished for other in lanes):
                    break
                continue
            for frame in _decoded(lane, packet):
                t = frame.time
                if t is None or t < job.start:
                    continue
                if t > limits.max_seconds:
                    raise too_large(f"the input lasts longer than this network's limit of {limits.max_seconds:g} s",
                                    "file")
                if t >= end:
                    lane.finished = True
                    break
                lane.reached = max(lane.reached, min(t + lane.frame_seconds(frame), end))
                packets += _mux(out, lane, lane.encode(frame, t - job.start))
            if packets >= _SIZE_CHECK_EVERY:
                packets = 0
                _check_size(dst, limits)
        for lane in lanes:
            _mux(out, lane, lane.flush())
    except av.FFmpegError as exc:
        raise _encode_error(exc, job) from None
    _check_size(dst, limits)
    return max(lanes[0].reached - job.start, 0.0)


def _decoded(lane: _Lane, packet: av.Packet) -> Iterator[av.AudioFrame | av.VideoFrame]:
    try:
        yield from lane.src.codec_context.decode(packet)
    except (av.InvalidDataError, av.error.EOFError):
        raise invalid_media("the file is corrupt: a packet could not be decoded") from None


def _mux(out: av.container.OutputContainer, lane: _Lane, packets: list[av.Packet]) -> int:
    for packet in packets:
        packet.stream = lane.dst
        out.mux(packet)
    return len(packets)


def _check_size(dst: Path, limits: MediaLimits) -> None:
    size = dst.stat().st_size
    if size > limits.max_input_bytes:
        raise too_large(f"the output grew beyond this network's limit of {limits.max_input_bytes} bytes; ask for a "
                        f"lower bitrate", "bitrate")


def _encode_error(exc: av.FFmpegError, job: TranscodeJob) -> ApiError:
    """An FFmpeg failure while encoding or muxing: the build cannot make what was asked (its words, without any
    file name, are safe to show: they come from FFmpeg's fixed error strings)."""
    return ApiError(400, f"cannot encode `{job.codec}` into `{job.format}` with these settings "
                         f"({exc.strerror or type(exc).__name__})", code=ErrorCode.UNSUPPORTED_CODEC, param="codec")


class _Lane:
    """One input stream, its encoder and its output stream."""

    def __init__(self, src: av.stream.Stream, dst: av.stream.Stream) -> None:
        self.src = src
        self.dst = dst
        self.reached = 0.0  # input time the decoded frames reached (end of the last frame kept), seconds
        self.finished = False

    def frame_seconds(self, frame: av.AudioFrame | av.VideoFrame) -> float:
        raise NotImplementedError

    def encode(self, frame: av.AudioFrame | av.VideoFrame, at: float) -> list[av.Packet]:
        raise NotImplementedError

    def flush(self) -> list[av.Packet]:
        raise NotImplementedError


class _AudioLane(_Lane):
    def __init__(self, src: av.stream.Stream, dst: av.stream.Stream, rate: int) -> None:
        super().__init__(src, dst)
        ctx = dst.codec_context
        self.rate = rate
        self.resampler = av.AudioResampler(format=ctx.format, layout=ctx.layout, rate=rate,
                                           frame_size=ctx.frame_size or None)
        self.samples = 0

    def frame_seconds(self, frame: av.AudioFrame) -> float:
        return frame.samples / frame.sample_rate

    def encode(self, frame: av.AudioFrame, at: float) -> list[av.Packet]:
        frame.pts = None  # the resampler keeps its own clock; ours is the samples written
        return self._encode(self.resampler.resample(frame))

    def flush(self) -> list[av.Packet]:
        return [*self._encode(self.resampler.resample(None)), *self.dst.codec_context.encode(None)]

    def _encode(self, frames: list[av.AudioFrame]) -> list[av.Packet]:
        packets: list[av.Packet] = []
        for frame in frames:
            frame.pts = self.samples
            frame.time_base = Fraction(1, self.rate)
            self.samples += frame.samples
            packets.extend(self.dst.codec_context.encode(frame))
        return packets


class _VideoLane(_Lane):
    def __init__(self, src: av.stream.Stream, dst: av.stream.Stream, rate: Fraction) -> None:
        super().__init__(src, dst)
        self.rate = rate
        self.last_pts = -1

    def frame_seconds(self, frame: av.VideoFrame) -> float:
        return float(1 / self.rate)

    def encode(self, frame: av.VideoFrame, at: float) -> list[av.Packet]:
        ctx = self.dst.codec_context
        pts = max(round(at * self.rate), self.last_pts + 1)  # strictly increasing, whatever the input's clock
        self.last_pts = pts
        scaled = frame.reformat(width=ctx.width, height=ctx.height, format=ctx.pix_fmt)
        scaled.pts = pts
        scaled.time_base = Fraction(1) / self.rate
        return list(ctx.encode(scaled))

    def flush(self) -> list[av.Packet]:
        return list(self.dst.codec_context.encode(None))


def _lane(src: av.stream.Stream, out: av.container.OutputContainer, encoder: Encoder, job: TranscodeJob,
          limits: MediaLimits, *, main: bool) -> _Lane:
    try:
        if encoder.kind == "audio":
            return _audio_lane(src, out, encoder, job if main else None)
        return _video_lane(src, out, encoder, job, limits)
    except av.FFmpegError as exc:
        raise _encode_error(exc, job) from None


def _audio_lane(src: av.stream.Stream, out: av.container.OutputContainer, encoder: Encoder,
                job: TranscodeJob | None) -> _Lane:
    """`job` is None for a video job's audio, which takes the encoder's defaults."""
    codec = av.codec.Codec(encoder.name, "w")
    rates = list(codec.audio_rates or [])
    source_rate = src.codec_context.sample_rate or 48_000
    asked = job.sample_rate if job is not None else None
    if asked is not None and rates and asked not in rates:
        raise bad_request(f"`{encoder.name}` encodes at {', '.join(map(str, rates))} Hz, not {asked}",
                          code=ErrorCode.INVALID_VALUE, param="sample_rate")
    rate = asked or (source_rate if not rates or source_rate in rates else max(rates))
    dst = out.add_stream(encoder.name, rate=rate)
    ctx = dst.codec_context
    ctx.layout = "stereo" if (src.codec_context.channels or 1) >= 2 else "mono"
    formats = codec.audio_formats or []
    if formats:
        ctx.format = formats[0]
    if job is not None and job.bitrate is not None:
        ctx.bit_rate = job.bitrate
    ctx.time_base = Fraction(1, rate)
    ctx.open()  # now its frame size is known (libopus: 960 samples), which the resampler cuts frames to
    return _AudioLane(src, dst, rate)


def _video_lane(src: av.stream.Stream, out: av.container.OutputContainer, encoder: Encoder, job: TranscodeJob,
                limits: MediaLimits) -> _Lane:
    source = src.codec_context
    if not source.width or not source.height:
        raise invalid_media("the video stream has no frame size")
    if source.width * source.height > 4 * limits.max_width * limits.max_height:
        raise too_large(f"the video's frames are {source.width}x{source.height}, above what this network decodes",
                        "file")
    width, height = _size(source.width, source.height, job)
    if width > limits.max_width or height > limits.max_height:
        raise too_large(f"the output would be {width}x{height}, above this network's limit of "
                        f"{limits.max_width}x{limits.max_height}; ask for a smaller `width` or `height`",
                        "width" if width > limits.max_width else "height")
    rate = Fraction(src.average_rate or src.guessed_rate or 25).limit_denominator(1001)
    if not 0 < rate <= 240:
        rate = Fraction(25)
    dst = out.add_stream(encoder.name, rate=rate, options=_SPEED.get(encoder.name, {}))
    ctx = dst.codec_context
    ctx.width, ctx.height = width, height
    codec = av.codec.Codec(encoder.name, "w")
    names = [f.name for f in codec.video_formats or []]
    ctx.pix_fmt = "yuv420p" if not names or "yuv420p" in names else names[0]
    ctx.time_base = Fraction(1) / rate
    if job.bitrate is not None:
        ctx.bit_rate = job.bitrate
    return _VideoLane(src, dst, rate)


def _size(width: int, height: int, job: TranscodeJob) -> tuple[int, int]:
    """The output's frame size: as asked (one side alone keeps the aspect ratio), else the input's; even, as
    4:2:0 chroma needs."""
    if job.width and job.height:
        w, h = job.width, job.height
    elif job.width:
        w, h = job.width, math.ceil(job.width * height / width)
    elif job.height:
        w, h = math.ceil(job.height * width / height), job.height
    else:
        w, h = width, height
    return max(w - w % 2, 2), max(h - h % 2, 2)
