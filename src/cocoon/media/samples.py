"""Media made on the spot (a tone, a moving test pattern) for tests and the benchmark: nothing is downloaded."""

from __future__ import annotations

import math
import struct
import wave
from fractions import Fraction
from pathlib import Path

import av


def tone_wav(path: Path, seconds: float = 2.0, rate: int = 44_100, hz: float = 440.0, channels: int = 1) -> Path:
    """A sine tone as 16-bit PCM WAV."""
    n = round(seconds * rate)
    samples = (round(12_000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(n))
    frames = b"".join(struct.pack("<h", s) * channels for s in samples)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


def test_pattern(path: Path, seconds: float = 1.0, width: int = 160, height: int = 120, fps: int = 25,
                 fmt: str = "matroska", codec: str = "mpeg4") -> Path:
    """A moving gradient, `fps` frames a second, encoded with PyAV itself (no audio)."""
    with av.open(str(path), mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        ctx = stream.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, fps)
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame(width, height, "yuv420p")
            luma = bytes((x + y + 4 * i) & 0xFF for y in range(height) for x in range(width))
            chroma = bytes([128]) * ((width // 2) * (height // 2))
            for index, (plane, data) in enumerate(zip(frame.planes, (luma, chroma, chroma), strict=True)):
                _fill(plane, data, width if index == 0 else width // 2)
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _fill(plane: av.video.plane.VideoPlane, data: bytes, width: int) -> None:
    """Copy rows of `width` bytes into a plane whose rows may be padded (`line_size`)."""
    if plane.line_size == width:
        plane.update(data)
        return
    rows = len(data) // width
    padded = b"".join(data[r * width:(r + 1) * width].ljust(plane.line_size, b"\0") for r in range(rows))
    plane.update(padded)
