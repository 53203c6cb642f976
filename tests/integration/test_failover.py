"""Failure handling through a real proxy, workers and client in one event loop: retries before the first
token, error events and partial charges after it, each timeout, backpressure, limits, proxy failover."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import generate_latest

from cocoon.config import SelectionConfig
from cocoon.core.usage import Usage
from cocoon.inference.fake import FakeEngine
from cocoon.ledger.pricing import price_request
from cocoon.proxy.server import ProxyServer
from tests.integration.inproc import ScriptedEngine, chat, network, until


def client_books(proxy: ProxyServer) -> dict:
    clients = proxy.billing.summary()["clients"]
    assert len(clients) <= 1
    return next(iter(clients.values()), {"requests": 0, "tokens": 0, "charged_nanoton": 0})


def completion_cost(proxy: ProxyServer, tokens: int, prompt_tokens: int = 0) -> int:
    return price_request(Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens),
                         proxy.ledger.root_params().prices, 1000).client_cost


PROMPT_TOKENS = len(chat()["messages"][0]["content"].split())  # as the fake engine counts them


async def test_a_stalled_worker_is_skipped_invisibly_charged_once_and_benched(tmp_path: Path) -> None:
    async with network() as net:
        proxy = await net.proxy(tmp_path, first_token_timeout_s=0.3,
                                selection=SelectionConfig(bench_after_failures=2, bench_s=60))
        stalled = ScriptedEngine(after=0, reply_tokens=5)
        await net.worker(proxy, stalled, name="stalled")
        await net.worker(proxy, FakeEngine(reply_tokens=5), name="good")
        await net.client([proxy])
        for _ in range(4):
            answer = await net.post(chat())
            assert answer.status == 200 and answer.done and answer.content_chunks() == 5
        books = client_books(proxy)
        assert books["requests"] == 4  # one charge per request, retries included
        assert books["tokens"] == 4 * answer.events()[-1]["usage"]["total_tokens"]
        assert set(proxy.billing.summary()["workers"]) == {w.key for w in proxy.registry.workers() if w.name == "good"}
        rep = {r.name: r for r in proxy.reputations.summaries(time.monotonic())}
        assert rep["stalled"].failed == 2 and rep["stalled"].benched_s > 0 and rep["good"].answered == 4
        assert stalled.cancelled.is_set()  # the proxy's timeout stopped the generation on the worker
        metrics = generate_latest(proxy.metrics.registry).decode()
        assert 'cocoon_proxy_worker_failed_total{key="' in metrics and 'worker="stalled"} 2.0' in metrics
        assert 'cocoon_proxy_retries_total{reason="first_token_timeout"} 2.0' in metrics


async def test_a_worker_dying_mid_stream_ends_it_with_an_error_and_charges_what_was_delivered(
        tmp_path: Path) -> None:
    async with network() as net:
        proxy = await net.proxy(tmp_path)
        engine = ScriptedEngine(after=3, reply_tokens=10)
        worker = await net.worker(proxy, engine)
        engine.then = lambda: worker.dialer.stop("test kills the worker")
        client = await net.client([proxy])
        answer = await net.post(chat())
        assert answer.status == 200 and not answer.done
        assert answer.content_chunks() == 3
        error = answer.events()[-1]["error"]
        assert error["code"] == "worker_failed" and "after 3 tokens" in error["message"]
        books = client_books(proxy)  # the prompt was all processed: it is charged with the delivered tokens
        assert books["requests"] == 1 and books["tokens"] == PROMPT_TOKENS + 3
        assert books["charged_nanoton"] == completion_cost(proxy, 3, PROMPT_TOKENS) == client.api.stats.charged_nanoton


async def test_a_non_streamed_request_survives_its_worker_dying_mid_generation(tmp_path: Path) -> None:
    async with network() as net:
        proxy = await net.proxy(tmp_path)
        dying = ScriptedEngine(after=2, reply_tokens=6)
        worker = await net.worker(proxy, dying, name="dying")

        async def replace_then_die() -> None:
            await net.worker(proxy, FakeEngine(reply_tokens=6), name="spare")
            await worker.dialer.stop("test kills the worker")

        dying.then = replace_then_die
        await net.client([proxy])
        answer = await net.post(chat(stream=False))
        assert answer.status == 200 and answer.json()["usage"]["completion_tokens"] == 6
        assert client_books(proxy)["requests"] == 1
        # sealed to the dying worker only (the spare joined later): the proxy cannot move it, so it says so and the
        # client seals it again to the workers linked now, invisibly, under the same id (charged once, above)
        assert proxy.forwarder.outcomes == {"seal_keys_stale": 1, "ok": 1}


async def test_idle_and_total_timeouts_end_streams_with_their_own_codes(tmp_path: Path) -> None:
    async with network() as net:
        proxy = await net.proxy(tmp_path, idle_timeout_s=0.3, total_timeout_s=1.0)
        pausing = ScriptedEngine(after=2, reply_tokens=10)
        await net.worker(proxy, pausing, region="pause")
        await net.worker(proxy, FakeEngine(reply_tokens=100, tokens_per_s=10), region="slow")
        await net.client([proxy])
        idle = await net.post(chat(), {"cocoon-region": "pause"})
        assert idle.content_chunks() == 2 and idle.events()[-1]["error"]["code"] == "idle_timeout"
        assert "sent nothing for 0.3s" in idle.events()[-1]["error"]["message"]
        await asyncio.wait_for(pausing.cancelled.wait(), 2)
        started = time.monotonic()
        late = await net.post(chat(), {"cocoon-region": "slow"})
        assert 0.9 < time.monotonic() - started < 3
        assert late.events()[-1]["error"]["code"] == "request_timeout"
        delivered = idle.content_chunks() + late.content_chunks()
        assert client_books(proxy)["tokens"] == delivered + 2 * PROMPT_TOKENS and client_books(proxy)["requests"] == 2
        bad = await net.post(chat(), {"cocoon-region": "x" * 65})
        assert bad.status == 400 and bad.json()["error"]["code"] == "invalid_region"
        gone = await net.post(chat(), {"cocoon-region": "mars"})
        assert gone.status == 503 and gone.json()["error"]["code"] == "no_worker_available"
        assert "in region `mars`" in gone.json()["error"]["message"]


async def test_busy_workers_queue_requests_then_answer_503_with_retry_after(tmp_path: Path) -> None:
    async with network() as net:
        proxy = await net.proxy(tmp_path, queue_depth=1, queue_timeout_s=5)
        await net.worker(proxy, FakeEngine(reply_tokens=8, tokens_per_s=40), max_active_requests=1)
        await net.client([proxy])
        first = asyncio.create_task(net.post(chat()))
        await until(lambda: proxy.selector.active(proxy.registry.workers()[0]) == 1)
        queued = asyncio.create_task(net.post(chat()))
        await until(lambda: len(proxy.backlog) == 1)
        refused = await net.post(chat())
        assert refused.status == 503 and refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await first).done and (await queued).done  # the queued one got the slot when it freed


async def test_tokens_per_minute_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    async with network() as net:
        proxy = await net.proxy(tmp_path, client_tokens_per_minute=20)
        await net.worker(proxy, FakeEngine(reply_tokens=30))
        await net.client([proxy])
        assert (await net.post(chat(stream=False))).status == 200  # overdraws this minute's 20 tokens
        limited = await net.post(chat(stream=False))
        assert limited.status == 429 and limited.json()["error"]["code"] == "tokens_per_minute_exceeded"
        assert int(limited.headers["Retry-After"]) > 30


async def test_the_client_fails_over_to_the_next_proxy_and_in_flight_requests_fail_fast(tmp_path: Path) -> None:
    async with network() as net:
        first = await net.proxy(tmp_path / "p1")
        second = await net.proxy(tmp_path / "p2")
        slow = FakeEngine(reply_tokens=200, tokens_per_s=20)
        await net.worker(first, slow)
        await net.worker(second, FakeEngine(reply_tokens=4))
        client = await net.client([first, second], connect_timeout_s=5)
        in_flight = asyncio.create_task(net.post(chat()))
        await until(lambda: slow.generated_tokens >= 3)  # the answer is streaming to the client
        started = time.monotonic()
        await first.stop()
        broken = await in_flight
        assert time.monotonic() - started < 2
        assert broken.status == 200 and broken.events()[-1]["error"]["code"] == "proxy_link_lost"
        answer = await net.post(chat(stream=False))
        assert answer.status == 200 and client.dialer.address == f"127.0.0.1:{second.port}"
        assert client_books(second)["requests"] == 1
