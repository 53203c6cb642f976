"""The media workload's realtime factor (input seconds transcoded per second of wall time), directly with PyAV in
one process and through a local network (client -> proxy -> worker over RA-TLS, paid per second), on media made
here: a stereo tone (WAV -> Ogg/Opus) and a moving test pattern (MKV/MPEG-4 -> WebM/VP9 and MP4/H.264). Also the
peak memory (VmHWM) of each process of the network afterwards: the input passes through in paced parts, so it
stays far below the file's size.

    .venv/bin/python bench/media.py [--audio-seconds 120] [--video-seconds 10] [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from cocoon.config import MediaLimits
from cocoon.localnet import LocalNet, free_port
from cocoon.media import samples
from cocoon.media.job import TranscodeJob
from cocoon.media.transcode import transcode


def direct(src: Path, out: Path, job: TranscodeJob) -> tuple[float, float]:
    """(input seconds, wall seconds) of one transcoding in this process."""
    started = time.perf_counter()
    result = transcode(src, out, job, MediaLimits(), threading.Event())
    return result.seconds, time.perf_counter() - started


async def through(api_url: str, src: Path, job: TranscodeJob) -> tuple[float, float, int]:
    """(input seconds, wall seconds, cost) of one POST /v1/media/transcode, the output read to its end."""
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file", src.open("rb"), filename="input")
        form.add_field("format", job.format)
        form.add_field("codec", job.codec)
        started = time.perf_counter()
        async with session.post(api_url + "/media/transcode", data=form,
                                timeout=aiohttp.ClientTimeout(total=600)) as resp:
            async for _ in resp.content.iter_chunked(256 * 1024):
                pass
            if resp.status != 200:
                raise RuntimeError(f"{resp.status}: {await resp.text()}")
            took = time.perf_counter() - started
            return float(resp.headers["x-cocoon-media-seconds"]), took, int(resp.headers["x-cocoon-cost-nanoton"])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-seconds", type=float, default=120.0)
    parser.add_argument("--video-seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cocoon-media-bench-") as tmp:
        d = Path(tmp)
        tone = samples.tone_wav(d / "tone.wav", seconds=args.audio_seconds, rate=48_000, channels=2)
        pattern = samples.test_pattern(d / "pattern.mkv", seconds=args.video_seconds, width=320, height=240, fps=25)
        jobs = [("WAV -> Ogg/Opus", tone, TranscodeJob(format="ogg", codec="libopus")),
                ("MKV -> WebM/VP9", pattern, TranscodeJob(format="webm", codec="libvpx-vp9")),
                ("MKV -> MP4/H.264", pattern, TranscodeJob(format="mp4", codec="h264"))]
        rows: list[dict[str, Any]] = []
        for name, src, job in jobs:
            runs = [direct(src, d / f"out.{job.format}", job) for _ in range(args.runs)]
            rows.append({"job": name, "input_mb": round(src.stat().st_size / 2**20, 1),
                         "direct_rtf": [round(s / w, 1) for s, w in runs]})
        net = LocalNet(d / "state", workers=1, engine="fake", port=free_port(), max_active=2, engine_options={})
        try:
            net.start(timeout_s=120)
            url = net.client.api_url or ""
            for row, (_, src, job) in zip(rows, jobs, strict=True):
                runs = [asyncio.run(through(url, src, job)) for _ in range(args.runs)]
                row["network_rtf"] = [round(s / w, 1) for s, w, _ in runs]
                row["cost_nanoton"] = runs[0][2]
            memory = {node.name: round(peak_rss_mb(node.proc.pid), 1) for node in net.nodes if node.proc}
        finally:
            net.stop()
    print(f"realtime factor (input seconds per wall second), {args.runs} runs each; audio {args.audio_seconds:g} s "
          f"stereo 48 kHz, video {args.video_seconds:g} s 320x240 25 fps")
    print(f"{'job':<18} {'input MB':>8}  {'direct':<24} {'through the network':<24} {'ratio':>6}")
    for row in rows:
        ratio = (sorted(row["network_rtf"])[len(row["network_rtf"]) // 2]
                 / sorted(row["direct_rtf"])[len(row["direct_rtf"]) // 2])
        row["ratio_median"] = round(ratio, 2)
        print(f"{row['job']:<18} {row['input_mb']:>8}  {row['direct_rtf']!s:<24} {row['network_rtf']!s:<24} "
              f"{ratio:>6.2f}")
    print("peak RSS after the runs (MB): " + ", ".join(f"{k} {v}" for k, v in memory.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "peak_rss_mb": memory}, indent=2) + "\n")


if __name__ == "__main__":
    main()
