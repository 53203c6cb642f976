"""The media workload through real processes (`cocoon up`: client, proxy, workers on the local chain): a tone
to Ogg/Opus and a test pattern to WebM/VP9 with the output probed and the charge exactly seconds × price; every
bad input answered with an OpenAI-style error, charged nothing and leaving no temporary file; no log line with
the file's name or bytes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cocoon.config import MediaLimits
from cocoon.ledger.receipts import Receipt
from cocoon.media import samples
from cocoon.media.job import TranscodeJob
from cocoon.media.probe import measured_duration, probe
from cocoon.media.spool import leftovers
from cocoon.media.transcode import transcode
from tests.netutil import Net, localnet, transcode_with_curl

MAX_UPLOAD = 400_000  # the client's max_media_bytes here (COCOON_MAX_MEDIA_BYTES): a 2 s tone fits, 5 s does not
SECRET_NAME = "very-private-recording"  # appears in no log
MARKER = b"NOT-MEDIA-MARKER-7f3a"  # nor does this


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    state = tmp_path_factory.mktemp("medianet") / "state"
    os.environ["COCOON_MAX_MEDIA_BYTES"] = str(MAX_UPLOAD)
    try:
        with localnet(state, engine="fake", workers=2) as running:
            yield running
    finally:
        del os.environ["COCOON_MAX_MEDIA_BYTES"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mediafiles")
    samples.tone_wav(d / f"{SECRET_NAME}.wav", seconds=2.0, rate=44_100)  # 176 kB
    samples.tone_wav(d / "big.wav", seconds=5.0, rate=44_100)  # 441 kB: above MAX_UPLOAD
    samples.test_pattern(d / "pattern.mkv", seconds=1.0, width=160, height=120, fps=25)
    (d / "text.wav").write_bytes(MARKER + b" this is not audio\n" * 200)
    (d / "empty.wav").write_bytes(b"")
    # a real Ogg file cut after its first header page: corrupt
    ogg = d / "good.ogg"
    transcode(d / f"{SECRET_NAME}.wav", ogg, TranscodeJob(format="ogg", codec="libopus"), MediaLimits(),
              threading.Event())
    (d / "corrupt.ogg").write_bytes(ogg.read_bytes()[:60])
    return d


def curl(net: Net, path: Path, out: Path, **fields: str) -> tuple[int, dict[str, str], bytes]:
    return transcode_with_curl(net.api_url, path, out, **fields)


def money(net: Net) -> tuple[int, float]:
    stats = net.stats("client-1")
    return stats["charged_nanoton"], stats["media_seconds"]


def media_price(net: Net) -> int:
    return net.stats("proxy-1")["prices"]["price_per_media_second"]


def test_formats(net: Net) -> None:
    with urllib.request.urlopen(net.api_url + "/media/formats", timeout=10) as resp:
        formats = json.loads(resp.read())
    assert formats["workers"] == 2
    assert {"ogg", "webm", "mp4", "mp3", "wav"} <= set(formats["formats"])
    assert {"libopus", "aac", "libvpx-vp9"} <= set(formats["codecs"])
    with urllib.request.urlopen(net.api_url + "/models", timeout=10) as resp:
        assert "media" not in [m["id"] for m in json.loads(resp.read())["data"]]  # a workload, not a model


def test_tone_to_ogg_opus(net: Net, files: Path, tmp_path: Path) -> None:
    charged, seconds_before = money(net)
    status, headers, _ = curl(net, files / f"{SECRET_NAME}.wav", tmp_path / "tone.ogg", format="ogg",
                              codec="libopus")
    assert status == 200, headers
    assert headers["content-type"] == "audio/ogg"
    assert headers["x-request-id"]
    info = probe(tmp_path / "tone.ogg")
    [audio] = info.streams
    assert (audio.codec, audio.sample_rate) == ("opus", 48_000)
    assert abs(measured_duration(tmp_path / "tone.ogg") - 2.0) < 0.05
    seconds = Decimal(headers["x-cocoon-media-seconds"])
    assert seconds == Decimal("2.000")
    cost = int(headers["x-cocoon-cost-nanoton"])
    assert cost == seconds * media_price(net)  # exactly: the workers' coefficient is the list price (1000)
    assert money(net) == (charged + cost, pytest.approx(seconds_before + 2.0))
    receipt = Receipt.from_base64(headers["x-cocoon-receipt"])  # sealed (the default), countersigned
    assert receipt.verify().cost_nanoton == cost and receipt.sealed_request_hash
    assert receipt.answer_hash == hashlib.sha256((tmp_path / "tone.ogg").read_bytes()).digest()
    workers = [net.stats(w["name"]) for w in net.by_role("worker")]
    assert sum(w["media"]["seconds"] for w in workers) >= 2.0
    assert net.stats("proxy-1")["media_seconds"] >= 2.0


def test_pattern_to_webm_vp9(net: Net, files: Path, tmp_path: Path) -> None:
    status, headers, _ = curl(net, files / "pattern.mkv", tmp_path / "p.webm", format="webm", codec="libvpx-vp9",
                              width="80")
    assert status == 200, headers
    assert headers["content-type"] == "video/webm"
    [video] = probe(tmp_path / "p.webm").streams
    assert (video.codec, video.width, video.height) == ("vp9", 80, 60)
    assert abs(measured_duration(tmp_path / "p.webm") - 1.0) < 0.05
    assert int(headers["x-cocoon-cost-nanoton"]) == Decimal(headers["x-cocoon-media-seconds"]) * media_price(net)


def test_a_span_is_charged_for_what_was_kept(net: Net, files: Path, tmp_path: Path) -> None:
    status, headers, _ = curl(net, files / f"{SECRET_NAME}.wav", tmp_path / "s.mp3", format="mp3", codec="mp3",
                              start="0.5", duration="1")
    assert status == 200, headers
    seconds = Decimal(headers["x-cocoon-media-seconds"])
    assert Decimal("0.95") <= seconds <= 1
    assert int(headers["x-cocoon-cost-nanoton"]) == seconds * media_price(net)


BAD: list[tuple[str, dict[str, str], int, str, str | None]] = [
    ("corrupt.ogg", {"format": "wav", "codec": "pcm"}, 400, "invalid_media", "file"),
    ("text.wav", {"format": "ogg", "codec": "libopus"}, 400, "invalid_media", "file"),
    ("empty.wav", {"format": "ogg", "codec": "libopus"}, 400, "invalid_media", "file"),
    (f"{SECRET_NAME}.wav", {"format": "ogg", "codec": "nosuchcodec"}, 400, "unsupported_codec", "codec"),
    (f"{SECRET_NAME}.wav", {"format": "avi9", "codec": "libopus"}, 400, "unsupported_format", "format"),
    (f"{SECRET_NAME}.wav", {"format": "wav", "codec": "libopus"}, 400, "unsupported_codec", "codec"),
    (f"{SECRET_NAME}.wav", {"format": "ogg", "codec": "libopus", "sample_rate": "44100"}, 400, "invalid_value",
     "sample_rate"),
    ("pattern.mkv", {"format": "ogg", "codec": "libopus"}, 400, "invalid_media", "file"),  # no audio in it
    ("pattern.mkv", {"format": "webm", "codec": "vp9", "width": "4000"}, 413, "media_too_large", "width"),
    ("big.wav", {"format": "ogg", "codec": "libopus"}, 413, "media_too_large", "file"),
    (f"{SECRET_NAME}.wav", {"format": "ogg"}, 400, "missing_field", "codec"),
    (f"{SECRET_NAME}.wav", {"format": "ogg", "codec": "libopus", "start": "99999"}, 400, "invalid_value", "start"),
    (f"{SECRET_NAME}.wav", {"format": "ogg", "codec": "x" * 300}, 400, "invalid_value", "codec"),
    (f"{SECRET_NAME}.wav", {"format": "ogg", "codec": "libopus", "evil": "1"}, 400, "unknown_field", "evil"),
]


@pytest.mark.parametrize(("name", "fields", "status", "code", "param"), BAD,
                         ids=[f"{b[0]}-{b[3]}-{b[4]}" for b in BAD])
def test_bad_input_is_refused_and_charged_nothing(net: Net, files: Path, tmp_path: Path, name: str,
                                                  fields: dict[str, str], status: int, code: str,
                                                  param: str | None) -> None:
    before = money(net)
    got, headers, body = curl(net, files / name, tmp_path / "out", **fields)
    error = json.loads(body)["error"]
    assert (got, error["code"], error["param"]) == (status, code, param), error
    assert error["type"] and error["message"]
    assert headers["x-request-id"]
    assert SECRET_NAME not in error["message"]
    assert money(net) == before
    assert leftovers(net.node_dir("client-1") / "media") == []


def test_client_disconnecting_mid_upload(net: Net, files: Path) -> None:
    """Half a multipart upload, then the connection closes: nothing is charged, no file is left."""
    before = money(net)
    boundary = "cocoonboundary"
    data = (files / f"{SECRET_NAME}.wav").read_bytes()
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{SECRET_NAME}.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode()
    body_len = len(head) + len(data) + 200
    with socket.create_connection(("127.0.0.1", net.port), timeout=10) as sock:
        sock.sendall((f"POST /v1/media/transcode HTTP/1.1\r\nHost: 127.0.0.1:{net.port}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {body_len}\r\n\r\n").encode() + head + data[: len(data) // 2])
        time.sleep(0.5)  # the client has spooled part of it
    deadline = time.monotonic() + 10
    while leftovers(net.node_dir("client-1") / "media") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(net.node_dir("client-1") / "media") == []
    assert money(net) == before


def test_logs_carry_no_file_names_or_bytes(net: Net) -> None:
    logs = list((net.state_dir / "logs").glob("*.log"))
    assert len(logs) == 5  # the chain's, the proxy's, two workers', the client's
    for path in logs:
        text = path.read_bytes()
        assert SECRET_NAME.encode() not in text, path
        assert MARKER not in text, path
    # and the jobs were logged, by their shape
    worker_lines = [json.loads(line) for path in logs if "worker" in path.name
                    for line in path.read_text().splitlines()]
    transcoded: list[dict[str, Any]] = [line for line in worker_lines if line["msg"] == "media job transcoded"]
    assert transcoded and all(line.get("request_id") for line in transcoded)
