"""Fuzzing the client's HTTP API (issue 15, "Also"): whatever a caller sends to /v1/chat/completions or
/v1/completions, with whatever method, path and headers, the answer is a clean OpenAI-style error (4xx, its code one
of `ErrorCode`) or a valid answer: never a 5xx, a hang or a traceback.

Three depths, 11,800 cases in all (how they stay cheap: tests/fuzz/strategies.py):
- 10,000 bodies through the validation layer (`cocoon.openai.schema`), where every body is judged; what it admits
  must be forwardable and admitted again as forwarded;
- 1,500 requests over HTTP to the real aiohttp app of a client linked over real RA-TLS to a real proxy and a worker
  running the fake engine, all in one event loop (tests/integration/inproc.py): nothing is stubbed;
- 300 requests to a real `cocoon up` network's client process (test_http_api_process.py)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from hypothesis import example, given

from cocoon.core.errors import ApiError
from cocoon.inference.fake import FakeEngine
from cocoon.openai import schema
from tests.fuzz.api_cases import CHAT, COMPLETIONS, Case, check_answer, check_error, make_case
from tests.fuzz.strategies import TAPES, Tape, fuzz
from tests.integration.inproc import Net, network

LIMITS = {"max_tokens_limit": 4096, "max_prompt_chars": 200_000}  # the client's defaults
T = TypeVar("T")
PARSERS = {CHAT: schema.parse_chat_request, COMPLETIONS: schema.parse_completion_request}


def judge(path: str, body: bytes) -> schema.ChatCompletionRequest | schema.CompletionRequest | None:
    """What the validation layer makes of `body`: the parsed request, or None after a clean 4xx ApiError. Any
    other exception escapes and fails the test."""
    try:
        return PARSERS[path](body, **LIMITS)
    except ApiError as exc:
        assert 400 <= exc.status < 500, exc
        check_error(json.loads(exc.to_json()))
        return None


CASES = TAPES.map(lambda data: make_case(Tape(data)))
# was a 500: msgspec raises UnicodeDecodeError, not a DecodeError, for such a key
NOT_UTF8_KEY = Case("POST", CHAT, b'{"\xffmodel": "fake-model", "messages": []}')


@fuzz(10_000)
@given(CASES)
@example(NOT_UTF8_KEY)
@example(Case("POST", CHAT, b'{"model": "fake-model", "messages": [{"role": "\xc3"}]}'))
@example(Case("POST", COMPLETIONS, b'{"model": "fake-model", "prompt": "' + b"\xed\xa0\x80" + b'"}'))
@example(Case("POST", CHAT, b'{"model": "fake-model", "messages": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"))
@example(Case("POST", COMPLETIONS, b'{"model": "fake-model", "prompt": "x", "max_tokens": 1e400, "n": -0}'))
def test_every_body_is_admitted_or_refused_with_a_clean_400(case: Case) -> None:
    path = case.path if case.path in PARSERS else CHAT
    parsed = judge(path, case.body)
    if parsed is not None:
        # what the client forwards is what it would admit again, unchanged
        forwarded = msgspec.json.encode(parsed.to_body())  # as ClientApi._forward does
        again = judge(path, forwarded)
        assert again is not None and again.to_body() == parsed.to_body()
        assert isinstance(parsed.engine_features(), list)
        assert parsed.max_tokens is None or 1 <= parsed.max_tokens <= LIMITS["max_tokens_limit"]


class LiveNetwork:
    """An in-process network (proxy, worker, client: real RA-TLS links) on an event loop of its own thread, so
    that Hypothesis's synchronous cases can drive it; every request is bounded in time (a hang fails)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self, state: Path) -> None:
        self._cm = network()
        self.net: Net = await self._cm.__aenter__()
        proxy = await self.net.proxy(state)
        await self.net.worker(proxy, FakeEngine(reply_tokens=3))
        await self.net.client([proxy])
        self.base = f"http://127.0.0.1:{self.net.clients[0].api_port}"

    async def send(self, case: Case) -> tuple[int, str, bytes]:
        assert self.net.session is not None
        async with self.net.session.request(case.method, self.base + case.path, data=case.body,
                                            headers=case.headers) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()

    def stop(self) -> None:
        self.run(self._cm.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNetwork]:
    live = LiveNetwork()
    try:
        live.run(live.start(tmp_path_factory.mktemp("fuzz-net")))
        yield live
    finally:
        live.stop()


@fuzz(1500)
@given(CASES)
@example(NOT_UTF8_KEY)
@example(Case("HEAD", CHAT, b""))
def test_every_request_to_the_app_gets_a_clean_error_or_an_answer(live: LiveNetwork, case: Case) -> None:
    try:
        status, content_type, raw = live.run(live.send(case))
    except aiohttp.ClientError as exc:
        raise AssertionError(f"no HTTP answer to {case}: {exc!r}") from None
    check_answer(case, status, content_type, raw)
