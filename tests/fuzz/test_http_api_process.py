"""Fuzzing the HTTP API of a real client process (issue 15, "Also"): 300 of the requests test_http_api.py makes,
sent over real HTTP to the client of a `cocoon up` network (fake engine, payments on), each answered with a clean
4xx error or a valid answer within its time bound; no process logged a traceback meanwhile."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import example, given

from tests.fuzz.api_cases import CHAT, Case, check_answer
from tests.fuzz.strategies import fuzz
from tests.fuzz.test_http_api import CASES, NOT_UTF8_KEY
from tests.netutil import Net, localnet


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with localnet(tmp_path_factory.mktemp("fuzz-up") / "state", engine="fake", workers=1,
                  options=("reply_tokens=3",)) as net:
        yield net


def send(net: Net, case: Case) -> tuple[int, str, bytes]:
    api = urlsplit(net.api_url)
    conn = http.client.HTTPConnection(api.hostname, api.port, timeout=60)  # a hang fails the case
    try:
        conn.request(case.method, case.path, body=case.body, headers=case.headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


@fuzz(300)
@given(CASES)
@example(NOT_UTF8_KEY)
@example(Case("POST", CHAT, json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
                                        "stream": True}).encode(), {"Content-Type": "application/json"}))
def test_every_request_to_the_client_process_gets_a_clean_error_or_an_answer(up: Net, case: Case) -> None:
    check_answer(case, *send(up, case))


def test_no_process_logged_a_traceback(up: Net) -> None:
    logs = [Path(p["log"]) for p in up.info["processes"]]
    assert any(p["role"] == "client" for p in up.info["processes"]) and all(log.exists() for log in logs)
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "Error handling request" not in text, (log, text[-2000:])
