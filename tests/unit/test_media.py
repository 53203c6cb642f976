"""cocoon/media: jobs from form fields, what the build offers, spooling, probing and transcoding with PyAV, on
media made at test time."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cocoon.config import MediaLimits
from cocoon.core.errors import ApiError, ErrorCode
from cocoon.media import formats, samples
from cocoon.media.job import TranscodeJob, decode_job, parse_job
from cocoon.media.probe import measured_duration, probe
from cocoon.media.spool import Spool, leftovers
from cocoon.media.transcode import Cancelled, transcode

LIMITS = MediaLimits()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    samples.tone_wav(d / "tone.wav", seconds=2.0, rate=44_100)
    samples.test_pattern(d / "pattern.mkv", seconds=1.0, width=160, height=120, fps=25)
    return d


def run(src: Path, dst: Path, limits: MediaLimits = LIMITS, **job: object) -> float:
    return transcode(src, dst, TranscodeJob(**job), limits, threading.Event()).seconds  # type: ignore[arg-type]


def refused(code: ErrorCode, src: Path, dst: Path, limits: MediaLimits = LIMITS, **job: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        run(src, dst, limits, **job)
    assert caught.value.code == code, caught.value
    return caught.value


# -- transcoding -------------------------------------------------------------------------------------------------
def test_wav_to_ogg_opus(media: Path, tmp_path: Path) -> None:
    seconds = run(media / "tone.wav", tmp_path / "out.ogg", format="ogg", codec="libopus", bitrate=48_000)
    assert seconds == pytest.approx(2.0, abs=1e-9)
    info = probe(tmp_path / "out.ogg")
    assert info.container == "ogg"
    assert [(s.kind, s.codec, s.sample_rate) for s in info.streams] == [("audio", "opus", 48_000)]
    assert abs(measured_duration(tmp_path / "out.ogg") - 2.0) < 0.05


def test_sample_rate_asked_is_kept(media: Path, tmp_path: Path) -> None:
    run(media / "tone.wav", tmp_path / "out.mp3", format="mp3", codec="mp3", sample_rate=22_050)
    assert probe(tmp_path / "out.mp3").streams[0].sample_rate == 22_050


def test_video_to_webm_vp9_scaled_keeping_aspect(media: Path, tmp_path: Path) -> None:
    seconds = run(media / "pattern.mkv", tmp_path / "out.webm", format="webm", codec="vp9", width=80)
    assert seconds == pytest.approx(1.0, abs=1e-9)
    [video] = probe(tmp_path / "out.webm").streams
    assert (video.codec, video.width, video.height) == ("vp9", 80, 60)
    assert abs(measured_duration(tmp_path / "out.webm") - 1.0) < 0.05


def test_video_to_mp4_h264(media: Path, tmp_path: Path) -> None:
    run(media / "pattern.mkv", tmp_path / "out.mp4", format="mp4", codec="h264")
    [video] = probe(tmp_path / "out.mp4").streams
    assert (video.codec, video.width, video.height) == ("h264", 160, 120)


def test_a_span_is_charged_for_what_it_kept(media: Path, tmp_path: Path) -> None:
    seconds = run(media / "tone.wav", tmp_path / "out.wav", format="wav", codec="pcm", start=0.5, duration=1.0)
    assert 0.95 <= seconds <= 1.0
    assert abs(measured_duration(tmp_path / "out.wav") - seconds) < 0.05
    # a span reaching past the end is charged only to the end
    assert run(media / "tone.wav", tmp_path / "o2.wav", format="wav", codec="pcm", start=1.5, duration=9.0) <= 0.5


def test_cancelled_stops(media: Path, tmp_path: Path) -> None:
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(Cancelled):
        transcode(media / "tone.wav", tmp_path / "out.ogg", TranscodeJob(format="ogg", codec="libopus"), LIMITS,
                  cancelled)


# -- refusals ----------------------------------------------------------------------------------------------------
def test_unknown_container_and_codec(media: Path, tmp_path: Path) -> None:
    err = refused(ErrorCode.UNSUPPORTED_FORMAT, media / "tone.wav", tmp_path / "o", format="avi2", codec="aac")
    assert (err.status, err.param) == (400, "format")
    err = refused(ErrorCode.UNSUPPORTED_CODEC, media / "tone.wav", tmp_path / "o", format="ogg", codec="nosuch")
    assert err.param == "codec"
    # in the build, but not in this container: refused before any input is read
    refused(ErrorCode.UNSUPPORTED_CODEC, media / "tone.wav", tmp_path / "o", format="wav", codec="libopus")


def test_unencodable_settings(media: Path, tmp_path: Path) -> None:
    err = refused(ErrorCode.INVALID_VALUE, media / "tone.wav", tmp_path / "o", format="ogg", codec="libopus",
                  sample_rate=44_100)  # opus encodes at 48k, 24k, 16k, 12k, 8k only
    assert err.param == "sample_rate"


def test_not_media_empty_and_corrupt(media: Path, tmp_path: Path) -> None:
    (tmp_path / "text").write_bytes(b"this is not audio\n" * 100)
    (tmp_path / "empty").write_bytes(b"")
    ogg = tmp_path / "good.ogg"
    run(media / "tone.wav", ogg, format="ogg", codec="libopus")
    (tmp_path / "cut").write_bytes(ogg.read_bytes()[:60])  # the first page of headers, then nothing
    for name in ("text", "empty", "cut"):
        err = refused(ErrorCode.INVALID_MEDIA, tmp_path / name, tmp_path / "o.wav", format="wav", codec="pcm")
        assert (err.status, err.param) == (400, "file")
        assert str(tmp_path) not in err.message  # no file name reaches the client


def test_audio_codec_for_video_only_input(media: Path, tmp_path: Path) -> None:
    refused(ErrorCode.INVALID_MEDIA, media / "pattern.mkv", tmp_path / "o.ogg", format="ogg", codec="libopus")


def test_limits(media: Path, tmp_path: Path) -> None:
    short = MediaLimits(max_seconds=1.0, max_width=100, max_height=100)
    err = refused(ErrorCode.MEDIA_TOO_LARGE, media / "tone.wav", tmp_path / "o.ogg", short, format="ogg",
                  codec="libopus")
    assert err.status == 413
    err = refused(ErrorCode.MEDIA_TOO_LARGE, media / "pattern.mkv", tmp_path / "o.webm", LIMITS, format="webm",
                  codec="vp9", width=4000)
    assert err.param == "width"
    # the input's own size, scaled to nothing smaller, is above the limit too
    err = refused(ErrorCode.MEDIA_TOO_LARGE, media / "pattern.mkv", tmp_path / "o.webm", short, format="webm",
                  codec="vp9")
    assert err.param == "width"


def test_spool_limit_and_removal(tmp_path: Path) -> None:
    with Spool(tmp_path, limit=10) as spool:
        spool.write(b"12345")
        assert oct(os.stat(spool.path).st_mode & 0o777) == "0o600"
        with pytest.raises(ApiError) as caught:
            spool.write(b"123456")
        assert caught.value.code == ErrorCode.MEDIA_TOO_LARGE
    assert leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), Spool(tmp_path, limit=10) as spool:
        spool.finish()
        raise RuntimeError
    assert leftovers(tmp_path) == []


# -- jobs and capabilities ---------------------------------------------------------------------------------------
def test_parse_job_fields() -> None:
    job = parse_job({"format": " OGG", "codec": "libopus", "bitrate": "64k", "sample_rate": "48000", "start": "1.5",
                     "duration": "2"})
    assert job == TranscodeJob(format="ogg", codec="libopus", bitrate=64_000, sample_rate=48_000, start=1.5,
                               duration=2.0)
    assert decode_job(job.to_body()) == job
    assert parse_job({"format": "mp4", "codec": "h264", "bitrate": "1.5M"}).bitrate == 1_500_000


@pytest.mark.parametrize(("fields", "code", "param"), [
    ({"codec": "aac"}, ErrorCode.MISSING_FIELD, "format"),
    ({"format": "ogg"}, ErrorCode.MISSING_FIELD, "codec"),
    ({"format": "ogg", "codec": "libopus", "bitrate": "fast"}, ErrorCode.INVALID_TYPE, "bitrate"),
    ({"format": "ogg", "codec": "libopus", "sample_rate": "-1"}, ErrorCode.INVALID_TYPE, "sample_rate"),
    ({"format": "ogg", "codec": "libopus", "width": "1"}, ErrorCode.INVALID_VALUE, "width"),
    ({"format": "ogg", "codec": "libopus", "start": "nan"}, ErrorCode.INVALID_VALUE, "start"),
    ({"format": "ogg", "codec": "libopus", "duration": "0"}, ErrorCode.INVALID_VALUE, "duration"),
    ({"format": "../x", "codec": "libopus"}, ErrorCode.INVALID_VALUE, "format"),
])
def test_parse_job_refusals(fields: dict[str, str], code: ErrorCode, param: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_job(fields)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, code, param)


def test_decode_job_refuses_unknown_fields() -> None:
    with pytest.raises(ApiError):
        decode_job(b'{"format": "ogg", "codec": "libopus", "evil": 1}')
    with pytest.raises(ApiError):
        decode_job(b'{"format": "ogg", "codec": "libopus", "start": -1}')


def test_capabilities_and_declared_seconds() -> None:
    caps = formats.capabilities(LIMITS)
    assert {"ogg", "webm", "mp4", "mp3", "wav"} <= set(caps.formats)
    assert {"libopus", "aac", "libvpx-vp9", "libx264"} <= set(caps.codecs)
    assert caps.max_seconds == LIMITS.max_seconds
    job = TranscodeJob(format="ogg", codec="libopus", start=10.0)
    assert formats.declared_seconds(job, MediaLimits(max_seconds=60.0)) == 50.0
    assert formats.declared_seconds(TranscodeJob(format="ogg", codec="libopus", duration=5.0), LIMITS) == 5.0
