"""The toncenter-v2 transport against endpoints that are down, answer garbage, or refuse: bounded retries with
backoff, then a clear error; nothing re-signed. Real sockets on 127.0.0.1 (a scripted HTTP server)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pytoniq_core import Address, begin_cell

from cocoon.ledger.toncenter import (
    ChainApiError,
    OutcomeUnknown,
    ToncenterTransport,
    stack_args_to_json,
    stack_from_json,
    stack_to_json,
)
from tests.netutil import free_port

ADDRESS = "0:" + "11" * 32


class Scripted:
    """An HTTP server answering each request with the next scripted (status, body); the last one repeats."""

    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        self.answers = answers
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests.append(self.path)
                status, body = outer.answers[min(len(outer.requests), len(outer.answers)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v2"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _transport(url: str, sleeps: list[float]) -> ToncenterTransport:
    return ToncenterTransport(url, attempts=3, backoff_s=0.01, timeout_s=2, sleep=sleeps.append, settle_s=0)


def _ok(result: Any) -> bytes:
    return json.dumps({"ok": True, "result": result}).encode()


@pytest.fixture
def sleeps() -> Iterator[list[float]]:
    yield []


def test_a_down_endpoint_is_a_clear_error_after_bounded_retries_with_backoff(sleeps: list[float]) -> None:
    t = _transport(f"http://127.0.0.1:{free_port()}/api/v2", sleeps)
    with pytest.raises(ChainApiError, match=r"getAddressInformation: unreachable .*after 3 attempts"):
        t.balance(ADDRESS)
    assert sleeps == [0.01, 0.02]  # exponential backoff between the 3 attempts
    sleeps.clear()
    # a refused connection carried nothing: the sender learns that nothing was sent (it may sign again)
    with pytest.raises(ChainApiError, match="nothing was sent"):
        t.send_boc(begin_cell().end_cell().to_boc(), dest=ADDRESS, valid_until=0)
    assert len(sleeps) == 2


@pytest.mark.parametrize("body", [b"<html>502 bad gateway</html>", b'{"result": 5}', b"[1, 2]"])
def test_garbage_answers_are_a_clear_error(sleeps: list[float], body: bytes) -> None:
    with Scripted([(200, body)]) as server:
        with pytest.raises(ChainApiError, match=r"(not JSON|not an API answer).*after 3 attempts"):
            _transport(server.url, sleeps).balance(ADDRESS)
        assert len(server.requests) == 3


def test_a_malformed_result_is_a_clear_error(sleeps: list[float]) -> None:
    with Scripted([(200, _ok({"state": "active", "balance": "lots"}))]) as server, \
            pytest.raises(ChainApiError, match="getAddressInformation: a malformed answer"):
        _transport(server.url, sleeps).balance(ADDRESS)


def test_overload_is_retried_and_then_answered(sleeps: list[float]) -> None:
    answers = [(503, b"busy"), (429, json.dumps({"ok": False, "error": "Ratelimit exceed", "code": 429}).encode()),
               (200, _ok({"state": "active", "balance": "42"}))]
    with Scripted(answers) as server:
        assert _transport(server.url, sleeps).balance(ADDRESS) == 42
        assert len(server.requests) == 3


def test_a_refusal_is_not_retried(sleeps: list[float]) -> None:
    refusal = json.dumps({"ok": False, "error": "Incorrect address", "code": 416}).encode()
    with Scripted([(416, refusal)]) as server:
        with pytest.raises(ChainApiError, match=r"refused \(416\): Incorrect address"):
            _transport(server.url, sleeps).balance(ADDRESS)
        assert len(server.requests) == 1 and sleeps == []


def test_an_outcome_not_seen_by_valid_until_is_unknown_and_names_the_message(sleeps: list[float]) -> None:
    boc = begin_cell().store_uint(1, 8).end_cell().to_boc()
    # the send may have reached the chain (it answered garbage), so the transport looks for its transaction
    answers = [(502, b"bad gateway")] * 3 + [(200, _ok([]))]
    with Scripted(answers) as server:
        t = ToncenterTransport(server.url, attempts=3, backoff_s=0.01, sleep=sleeps.append, settle_s=0,
                               clock=lambda: 1000.0)
        with pytest.raises(OutcomeUnknown, match=r"message [0-9a-f]{64} to 0:1111.* was not seen on chain by 1000"):
            t.send_boc(boc, dest=ADDRESS, valid_until=990)
        assert [p.split("?")[0] for p in server.requests] == ["/api/v2/sendBocReturnHash"] * 3 + \
            ["/api/v2/getTransactions"]  # sent the same bytes only, never anything new


def test_a_failing_get_method_names_its_exit_code(sleeps: list[float]) -> None:
    with Scripted([(200, _ok({"stack": [], "exit_code": -13, "gas_used": 0}))]) as server, \
            pytest.raises(Exception, match=r"get-method seqno on .* exit code -13"):
        _transport(server.url, sleeps).run_get(ADDRESS, "seqno", [])


def test_stacks_in_the_apis_json() -> None:
    cell = begin_cell().store_uint(7, 8).end_cell()
    address = begin_cell().store_address(Address(ADDRESS)).end_cell().begin_parse()
    shown = stack_to_json([5, -3, cell, None, address])
    assert shown[0] == ["num", "0x5"] and shown[1] == ["num", "-0x3"] and shown[3][0] == "list"
    five, minus_three, back, null, slice_cell = stack_from_json(json.loads(json.dumps(shown)))
    assert (five, minus_three, back.hash, null) == (5, -3, cell.hash, None)
    assert slice_cell.begin_parse().load_address().to_str(False) == ADDRESS  # slices come back as cells
    args = stack_from_json(stack_args_to_json([9, address, cell]), arguments=True)
    assert args[0] == 9 and args[1].load_address().to_str(False) == ADDRESS and args[2].hash == cell.hash
    for bad in ([["num"]], [["weird", 1]], [["cell", {"bytes": 5}]], "nope"):
        with pytest.raises(ValueError):
            stack_from_json(bad)
