"""Chaos through real processes: workers SIGKILLed and one restarted under load. Requests still succeed,
failures are clean OpenAI errors, and the proxy's books match the tokens the client received.

Only a stream already past its first token may fail (by design: it ends with an error event). A killed
worker holds at most 4 requests, so two kills break at most 8 streams: under 1% of the load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.netutil import Net, get_json, localnet

REQUESTS = 1000
CONCURRENCY = 16


@dataclass
class Outcome:
    ok: bool
    clean: bool  # a failure came as an OpenAI error object (HTTP body or final SSE event)
    tokens: int  # what the client received and must be charged for


def openai_error(doc: object) -> bool:
    error = doc.get("error") if isinstance(doc, dict) else None
    return isinstance(error, dict) and {"message", "type", "code"} <= error.keys() and bool(error["message"])


async def one(session: aiohttp.ClientSession, url: str, i: int) -> Outcome:
    stream = i % 2 == 0
    body = {"model": "fake-model", "messages": [{"role": "user", "content": f"chaos request {i}"}],
            "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
    async with session.post(url + "/chat/completions", json=body) as resp:
        raw = await resp.read()
    if resp.status != 200:
        return Outcome(False, openai_error(json.loads(raw)), 0)
    if not stream:
        return Outcome(True, True, json.loads(raw)["usage"]["total_tokens"])
    events = [json.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    if raw.rstrip().endswith(b"data: [DONE]"):
        return Outcome(True, True, events[-1]["usage"]["total_tokens"])
    delivered = sum(1 for e in events for c in e.get("choices", []) if c.get("delta", {}).get("content"))
    # broken after its first token: its prompt is charged too (the fake engine counts words)
    prompt = len(body["messages"][0]["content"].split()) if delivered else 0
    return Outcome(False, openai_error(events[-1]) if events else False, delivered + prompt)


async def load_with_chaos(net: Net, state: Path) -> tuple[list[Outcome], subprocess.Popen[bytes]]:
    workers = {w["name"]: w for w in net.by_role("worker")}
    outcomes: list[Outcome] = []
    todo = iter(range(REQUESTS))
    restarted: list[subprocess.Popen[bytes]] = []

    def chaos(done: int) -> None:
        if done == 150:
            os.kill(workers["worker-1"]["pid"], signal.SIGKILL)
        elif done == 300:
            os.kill(workers["worker-2"]["pid"], signal.SIGKILL)
        elif done == 350:  # worker-1 comes back with its own config file
            log = (state / "worker-1-restarted.log").open("wb")
            restarted.append(subprocess.Popen([sys.executable, "-m", "cocoon", "worker", "--config",
                                               workers["worker-1"]["config"]], stdout=log, stderr=subprocess.STDOUT))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def lane() -> None:
            for i in todo:
                outcomes.append(await one(session, net.api_url, i))
                chaos(len(outcomes))

        await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
    return outcomes, restarted[0]


def test_workers_killed_and_restarted_under_load(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with localnet(state, engine="fake", workers=4, options=("reply_tokens=16", "tokens_per_s=400")) as net:
        outcomes, restarted = asyncio.run(load_with_chaos(net, state))
        try:
            proxy = wait_for_workers(net, ["worker-1", "worker-3", "worker-4"])
        finally:
            restarted.terminate()
            restarted.wait(15)
    ok = sum(o.ok for o in outcomes)
    assert len(outcomes) == REQUESTS and ok >= 0.99 * REQUESTS, f"{REQUESTS - ok} failed"
    assert all(o.clean for o in outcomes if not o.ok)
    (client_books,) = proxy["books"]["clients"].values()
    assert client_books["tokens"] == sum(o.tokens for o in outcomes)
    assert client_books["requests"] == ok + sum(1 for o in outcomes if not o.ok and o.tokens)
    assert proxy["requests"].get("ok", 0) == ok
    records = [r for r in proxy["reputation"] if r["name"] in ("worker-1", "worker-2")]
    by_name = {r["name"]: r for r in records}
    assert len(records) == 2  # the restarted worker-1 came back under its sealed key: one record, not two
    assert not by_name["worker-2"]["connected"] and by_name["worker-2"]["failed"] > 0
    # worker-1's failures from before its kill are remembered across the restart
    assert by_name["worker-1"]["connected"] and by_name["worker-1"]["failed"] > 0


def wait_for_workers(net: Net, names: list[str], timeout: float = 20.0) -> dict:
    """The proxy's stats once exactly `names` are connected (the restarted worker may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = get_json(net.node("proxy-1")["stats_url"] + "/jsonstats")
        if sorted(w["name"] for w in stats["workers"]) == names or time.monotonic() > deadline:
            assert sorted(w["name"] for w in stats["workers"]) == names
            return stats
        time.sleep(0.2)
