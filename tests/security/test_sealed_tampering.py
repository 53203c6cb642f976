"""Issue 10, item 1 ("Bad input"): a proxy that tampers with sealed answers, or runs a sealed request twice.

Real processes: a client and a worker (`cocoon client`, `cocoon worker`) linked by a proxy that is the real `cocoon
proxy` with its relay changed (tests/security/tampering_proxy.py): it changes a byte of a sealed chunk, cuts a
chunk short, drops one, swaps two, sends one twice, cuts the answer off before its end, or runs a request on its
worker once before relaying the real run. Each is detected by the client (the stream's last event, or the answer,
is an error naming what was wrong), the answer is never accepted as charged (the client's charge does not move),
the worker refuses to open the same sealed request twice, and every process keeps serving (an honest request
afterwards is answered). Before sealing, the changed bytes reached the app unnoticed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netutil import get_json, log_records
from tests.security.procs import tampering_network


class Setup:
    def __init__(self, tmp: Path, api: str, client_stats: int, mode_file: Path) -> None:
        self.tmp, self.api, self.client_stats, self.mode_file = tmp, api, client_stats, mode_file

    def client(self) -> dict[str, Any]:
        return get_json(f"http://127.0.0.1:{self.client_stats}/jsonstats")

    def ask(self, mode: str, *, stream: bool) -> tuple[int, list[dict[str, Any]], bytes]:
        """One chat request while the proxy plays `mode`: the status, the events (or the one JSON answer), raw."""
        self.mode_file.write_text(mode)
        body = {"model": "fake-model", "stream": stream, "max_tokens": 8,
                "messages": [{"role": "user", "content": f"tamper with {mode}"}]}
        req = urllib.request.Request(self.api + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        if not stream or status != 200:
            return status, [json.loads(raw)], raw
        return status, [json.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")], raw


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with tampering_network(tmp_path_factory.mktemp("tamper")) as (tmp, api, client_stats, mode_file):
        yield Setup(tmp, api, client_stats, mode_file)


@pytest.mark.parametrize(("mode", "says"), [
    ("flip", "does not open"), ("truncate", "does not open"), ("drop", "does not open"),
    ("reorder", "does not open"), ("replay", "does not open"), ("cut", "end marker does not open after 2 chunks"),
])
def test_a_tampered_stream_is_detected_and_never_accepted_as_charged(setup: Setup, mode: str, says: str) -> None:
    before = setup.client()
    status, events, raw = setup.ask(mode, stream=True)
    assert status == 200  # the stream had begun: its last event is the error
    assert b"[DONE]" not in raw
    error = events[-1].get("error")
    assert error is not None, f"{mode}: the tampered answer reached the app unnoticed: {events[-2:]}"
    assert error["code"] == "sealed_answer_invalid" and says in error["message"], error
    after = setup.client()
    assert after["charged_nanoton"] == before["charged_nanoton"]
    assert after["requests"].get("sealed_answer_invalid", 0) == before["requests"].get("sealed_answer_invalid", 0) + 1
    status, events, _ = setup.ask("none", stream=True)  # and everything still serves
    assert status == 200 and "error" not in events[-1] and setup.client()["charged_nanoton"] > 0


def test_a_tampered_whole_answer_is_a_clean_502(setup: Setup) -> None:
    before = setup.client()["charged_nanoton"]
    status, (answer,), _ = setup.ask("flip", stream=False)
    assert status == 502 and answer["error"]["code"] == "sealed_answer_invalid", answer
    assert "chunk 0 does not open" in answer["error"]["message"]
    assert setup.client()["charged_nanoton"] == before


def test_a_sealed_request_run_twice_by_the_proxy_is_refused_by_the_worker(setup: Setup) -> None:
    before = setup.client()["charged_nanoton"]
    status, (answer,), _ = setup.ask("rerun", stream=False)
    assert status == 409 and answer["error"]["code"] == "sealed_request_replayed", answer
    assert "replayed encapsulation" in answer["error"]["message"]
    assert setup.client()["charged_nanoton"] == before
    worker_log = (setup.tmp / "worker.log").read_text()
    assert "sealed_request_replayed" in [r.get("code") for r in log_records(worker_log)]
