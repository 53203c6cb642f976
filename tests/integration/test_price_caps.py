"""Worker prices through a real proxy, workers and clients in one event loop: a request goes only to workers
within its price cap (the client's default one included), and a cap that is no price at all is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cocoon.core.usage import Usage
from cocoon.inference.fake import FakeEngine
from cocoon.ledger.pricing import price_request
from tests.integration.inproc import chat, network


def _usage(u: dict[str, Any]) -> Usage:
    return Usage(prompt_tokens=u["prompt_tokens"], completion_tokens=u["completion_tokens"])


async def test_requests_go_only_to_workers_within_the_clients_cap(tmp_path: Path) -> None:
    async with network() as net:
        proxy = await net.proxy(tmp_path)
        cheap = await net.worker(proxy, FakeEngine(reply_tokens=4), name="cheap", coefficient=1000)
        dear = await net.worker(proxy, FakeEngine(reply_tokens=4), name="dear", coefficient=2500)
        await net.client([proxy])  # the default cap: 2000, twice the list price
        usages = []
        for i in range(4):
            answer = await net.post(chat(stream=i % 2 == 0))
            assert answer.status == 200
            usages.append(answer.events()[-1]["usage"] if i % 2 == 0 else answer.json()["usage"])
        assert (cheap.jsonstats()["served"], dear.jsonstats()["served"]) == (4, 0)
        prices = proxy.ledger.root_params().prices
        assert [u["cost_nanoton"] for u in usages] == [price_request(_usage(u), prices, 1000).client_cost
                                                       for u in usages]
        (books,) = proxy.billing.summary()["clients"].values()
        assert books["charged_nanoton"] == sum(u["cost_nanoton"] for u in usages)


async def test_a_cap_at_or_below_zero_is_refused_and_one_above_the_registry_maximum_means_the_maximum(
        tmp_path: Path) -> None:
    async with network() as net:
        assert net.session is not None
        proxy = await net.proxy(tmp_path)
        top = proxy.ledger.root_params().prices.max_coefficient
        await net.worker(proxy, FakeEngine(reply_tokens=3), name="at-the-maximum", coefficient=top)
        # a config file refuses such a cap; a peer speaking the wire itself may still send one
        await net.client([proxy], default_max_coefficient=0)
        answer = await net.post(chat(stream=False))
        assert answer.status == 400
        error = answer.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "max_coefficient")
        assert "max_coefficient must be positive" in error["message"]
        generous = await net.client([proxy], default_max_coefficient=10 * top)
        async with net.session.post(f"http://127.0.0.1:{generous.api_port}/v1/chat/completions",
                                    json=chat(stream=False)) as resp:
            assert resp.status == 200
            usage = (await resp.json())["usage"]
        assert usage["cost_nanoton"] == price_request(_usage(usage), proxy.ledger.root_params().prices,
                                                      top).client_cost
