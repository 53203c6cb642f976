"""Issue 13, item 5 (media bodies sealed end to end) and issue 15: a proxy that tampers with a sealed media job.

Real processes: a client and a worker (`cocoon client`, `cocoon worker`, the media workload) linked by the real
`cocoon proxy` with its relay changed (tests/security/tampering_proxy.py). The job's input travels sealed part by
part and its output sealed chunk by chunk (cocoon/seal). The proxy flips a byte of an input part, cuts one short,
drops one, swaps two, sends one twice, or marks an early one as the last; or it flips a byte of an output chunk,
drops one, swaps two, or cuts the output off. Each is caught (the worker refuses the input with 400
`sealed_request_invalid` before anything runs; the client refuses the output with 502 `sealed_answer_invalid`),
answered as a clean OpenAI-style error, never accepted as charged, leaves no temporary file, and every process
keeps serving (an honest job afterwards is answered, with a receipt).

Checked to fail before media was sealed (main at 53efc0c): every case was answered 200 and charged (a changed,
dropped, reordered or repeated input part transcoded as it came; a changed or cut output reached the app).
"""

from __future__ import annotations

import json
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cocoon.ledger.receipts import Receipt
from cocoon.media.spool import leftovers
from cocoon.wire.parts import PART_BYTES
from tests.netutil import get_json, log_records, transcode_with_curl
from tests.security.procs import tampering_network


class Setup:
    def __init__(self, tmp: Path, api: str, client_stats: int, mode_file: Path) -> None:
        self.tmp, self.api, self.client_stats, self.mode_file = tmp, api, client_stats, mode_file
        self.source = tmp / "input.wav"
        # 4 parts in and 4 chunks out: the samples are bytes that a WAV copy keeps as they are
        samples = bytes(range(256)) * (PART_BYTES * 7 // 2 // 256)
        with wave.open(str(self.source), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16_000)
            w.writeframes(samples)

    def client(self) -> dict[str, Any]:
        return get_json(f"http://127.0.0.1:{self.client_stats}/jsonstats")

    def transcode(self, mode: str) -> tuple[int, dict[str, str], bytes]:
        """One WAV → WAV job while the proxy plays `mode`: status, headers, body."""
        self.mode_file.write_text(mode)
        return transcode_with_curl(self.api, self.source, self.tmp / "out.wav", format="wav", codec="pcm_s16le")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with tampering_network(tmp_path_factory.mktemp("mediatamper")) as (tmp, api, client_stats, mode_file):
        yield Setup(tmp, api, client_stats, mode_file)


def frames(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def check_refused(setup: Setup, mode: str, status: int, code: str, says: str) -> None:
    before = setup.client()
    got, headers, body = setup.transcode(mode)
    error = json.loads(body).get("error") if body.startswith(b"{") else None
    assert error is not None, f"{mode}: the tampered job was answered {got} unnoticed"
    assert (got, error["code"]) == (status, code), error
    assert says in error["message"], error
    assert headers["x-request-id"]
    after = setup.client()
    assert after["charged_nanoton"] == before["charged_nanoton"]
    assert after["media_seconds"] == before["media_seconds"]
    # the client's and the worker's (one state dir here); a worker whose output the client stopped taking is
    # cancelled through the proxy just after the client answered
    deadline = time.monotonic() + 10
    while leftovers(setup.tmp / "media") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers(setup.tmp / "media") == []
    got, headers, body = setup.transcode("none")  # and everything still serves
    assert got == 200, body[:300]
    assert frames(setup.tmp / "out.wav") == frames(setup.source)  # a WAV copy of the input
    receipt = Receipt.from_base64(headers["x-cocoon-receipt"])
    assert receipt.sealed_request_hash and receipt.sealed_answer_hash
    assert setup.client()["charged_nanoton"] == after["charged_nanoton"] + int(headers["x-cocoon-cost-nanoton"])


@pytest.mark.parametrize(("mode", "says"), [
    ("part-flip", "sealed upload part 1 does not open"),
    ("part-truncate", "sealed upload part 1 does not open"),
    ("part-drop", "sealed upload part 1 does not open"),
    ("part-reorder", "sealed upload part 1 does not open"),
    ("part-replay", "sealed upload part 2 does not open"),
    ("part-cut", "the sealed upload's end marker does not open after 1 parts"),
])
def test_a_tampered_input_part_is_refused_by_the_worker_and_charged_nothing(setup: Setup, mode: str,
                                                                             says: str) -> None:
    check_refused(setup, mode, 400, "sealed_request_invalid", says)
    worker_log = (setup.tmp / "worker.log").read_text()
    assert "sealed_request_invalid" in [r.get("code") for r in log_records(worker_log)]


@pytest.mark.parametrize(("mode", "says"), [
    ("flip", "sealed answer chunk 0 does not open"),
    ("drop", "sealed answer chunk 1 does not open"),
    ("reorder", "sealed answer chunk 1 does not open"),
    ("cut", "end marker does not open after 2 chunks"),
])
def test_a_tampered_output_is_refused_by_the_client_and_never_accepted_as_charged(setup: Setup, mode: str,
                                                                                  says: str) -> None:
    check_refused(setup, mode, 502, "sealed_answer_invalid", says)
