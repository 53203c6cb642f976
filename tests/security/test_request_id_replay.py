"""Issue 15, item 1: free inference by replaying a request id.

A client speaking the wire protocol sent several requests with the same id and got every answer in full, while the
books saw a duplicate and recorded nothing (the worker was not paid either); concurrent requests with one id shared
one reservation; an empty id fell back to per-link call ids that repeat after a reconnect.

Here a genuine client node with its own paying channel (in this process) writes its requests itself to a real
`cocoon up` proxy and worker: an id in flight or answered before is refused (409 `duplicate_request_id`) before any
work, across reconnects and a proxy killed and restarted; an empty id is refused (400); every answer relayed is in
the books exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

from cocoon.wire.messages import ResponseEnd
from tests.netutil import Net, localnet, pid_alive
from tests.security.procs import role_process, wait_stats
from tests.security.wire import Answer, ask, refusal, wire_client

BODY = {"model": "fake-model", "max_tokens": 4, "messages": [{"role": "user", "content": "something for free"}]}


def refused(answer: Answer) -> tuple[int, str | None]:
    return refusal(answer)[:2]


def cost(answer: Answer) -> int:
    last = answer[-1]
    assert isinstance(last, ResponseEnd) and last.cost_nanoton > 0, answer
    return last.cost_nanoton


def served(net: Net) -> int:
    return net.stats("worker-1")["served"]


async def replay_on_one_link(net: Net) -> int:
    async with wire_client(net) as mallory:
        paid = cost(await ask(mallory, BODY, request_id="r1"))
        assert refused(await ask(mallory, BODY, request_id="r1")) == (409, "duplicate_request_id")
        assert refused(await ask(mallory, {**BODY, "stream": True}, request_id="r1")) == (409, "duplicate_request_id")
        together = await asyncio.gather(*(ask(mallory, BODY, request_id="r2") for _ in range(4)))
        answered = [a for a in together if isinstance(a[-1], ResponseEnd)]
        assert len(answered) == 1 and all(refused(a) == (409, "duplicate_request_id") for a in together
                                          if a not in answered)
        paid += cost(answered[0])
        assert refused(await ask(mallory, BODY, request_id="")) == (400, "invalid_request")
    return paid


async def replay_after_reconnect(net: Net) -> int:
    async with wire_client(net) as mallory:  # the same key and channel, a new link
        assert refused(await ask(mallory, BODY, request_id="r1")) == (409, "duplicate_request_id")
        assert refused(await ask(mallory, BODY, request_id="r2")) == (409, "duplicate_request_id")
        return cost(await ask(mallory, BODY, request_id="r3"))


def test_a_request_id_is_answered_once_across_links_and_proxy_restarts(tmp_path: Path) -> None:
    with localnet(tmp_path / "state", engine="fake", workers=1) as net:
        paid = asyncio.run(replay_on_one_link(net))
        assert served(net) == 2
        paid += asyncio.run(replay_after_reconnect(net))
        assert served(net) == 3
        proxy = net.node("proxy-1")
        os.kill(proxy["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(proxy["pid"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        log = tmp_path / "proxy-restarted.log"
        with role_process("proxy", Path(proxy["config"]), log) as restarted:
            wait_stats(int(proxy["stats_url"].rsplit(":", 1)[1]), restarted, log)
            deadline = time.monotonic() + 30
            while not net.stats("proxy-1")["workers"]:
                assert time.monotonic() < deadline, "the worker did not come back to the restarted proxy"
                time.sleep(0.1)
            for rid in ("r1", "r2", "r3"):  # answered before the proxy was killed: still refused
                async def again(rid: str = rid) -> Answer:
                    async with wire_client(net) as mallory:
                        return await ask(mallory, BODY, request_id=rid)
                assert refused(asyncio.run(again())) == (409, "duplicate_request_id")
        assert served(net) == 3  # no replay reached the worker
        books = sqlite3.connect(net.node_dir("proxy-1") / "proxy-books.sqlite")
        (requests, charged), = books.execute("SELECT requests, charged FROM clients WHERE client IN "
                                             "(SELECT DISTINCT client FROM requests WHERE request_id = 'r3')")
        assert (requests, charged) == (3, paid)  # each answer relayed is in the books, once
