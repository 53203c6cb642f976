"""Attackers that speak the wire protocol to a real proxy, and an OpenAI-compatible engine they can script."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from cocoon.client.node import ClientNode
from cocoon.config import ClientConfig
from cocoon.ledger.base import TON
from cocoon.nodekeys import NodeKeys
from cocoon.wire.messages import Request, ResponseChunk, ResponseEnd, ResponseError, ResponseHead
from tests.netutil import Net, chain_ledger, devnet_call, free_port, get_json, serving

Answer = list[ResponseHead | ResponseChunk | ResponseEnd | ResponseError]


@contextlib.asynccontextmanager
async def wire_client(net: Net, name: str = "mallory") -> AsyncIterator[ClientNode]:
    """A genuine client node with its own funded wallet and payment channel, whose requests the test writes itself
    (`ask`) instead of its HTTP API: what any client speaking the wire protocol can send. The same `name` is the
    same wallet and channel again, over a new link (a reconnect of the same paying party)."""
    cfg = ClientConfig(name=name, state_dir=str(net.node_dir(name)),
                       proxy=f"127.0.0.1:{net.stats('proxy-1')['port']}", api_port=0, stats_port=0, policy="dev",
                       payments=True, ton_api=net.chain["api"], root=net.chain["root"])
    with contextlib.closing(chain_ledger(net.chain)) as ledger:
        wallet = NodeKeys("client", cfg).wallet()
        if ledger.balance(wallet.address) < 100 * TON:
            devnet_call(net.chain, "faucet", {"address": wallet.address, "amount": 100 * TON})
    node = ClientNode(cfg)
    await node.start()
    try:
        deadline = time.monotonic() + 30
        while not node.dialer.connected:
            assert time.monotonic() < deadline, f"{name} did not link to the proxy: {node.dialer.last_error}"
            await asyncio.sleep(0.05)
        yield node
    finally:
        await node.stop()


async def ask(node: ClientNode, body: dict[str, Any], *, request_id: str, endpoint: str = "chat",
              **fields: Any) -> Answer:
    """Send one request as written and collect its answer up to its end or error."""
    req = Request(endpoint=endpoint, model=body["model"], body=json.dumps(body).encode(),
                  stream=bool(body.get("stream")), include_usage=False, deadline=time.time() + 30,
                  request_id=request_id, **fields)
    call = await node.api.link.call(req)
    answer: Answer = []
    while not answer or not isinstance(answer[-1], ResponseEnd | ResponseError):
        answer.append(await call.next(30))  # type: ignore[arg-type]
    return answer


def refusal(answer: Answer) -> tuple[int, str | None, str | None]:
    """The status, code and param of an answer that must be a refusal before any work: no head, no token."""
    kinds = [type(m).__name__ for m in answer]
    assert kinds == ["ResponseError"], f"answered instead of refused before any work: {kinds}"
    last = answer[0]
    assert isinstance(last, ResponseError)
    return last.status, last.code, last.param


@contextlib.contextmanager
def upstream(log_dir: Path) -> Iterator[str]:
    """tests/security/upstream.py on a free port of 127.0.0.1; yields its base URL (…/v1)."""
    port = free_port()
    with serving([sys.executable, str(Path(__file__).with_name("upstream.py")), str(port)], port,
                 log_dir / "upstream.log", within_s=30):
        yield f"http://127.0.0.1:{port}/v1"


def upstream_stats(url: str) -> dict[str, int]:
    return get_json(url.removesuffix("/v1") + "/stats")
