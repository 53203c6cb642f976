"""Issue 15 item 12 (proxy side), attack: poison bodies forwarded to workers.

A client speaking the wire protocol skips its API's schema and sends bodies no worker can serve: not JSON, a JSON
array or string, malformed JSON, a body over the proxy's size limit, an output cap (`max_tokens`, which the proxy
reserves money for and the worker holds the engine to) far above any limit. Before the fix the proxy forwarded
each one: it took a worker's slot, and a worker that choked on it (as workers did before they answered such
bodies with a 4xx) held the slot until the request's deadline or was counted as failing and benched, one honest
worker after the other. Now the proxy refuses them itself, at once, without asking any worker.

Through a real `cocoon up` proxy and worker; the attacker is a genuine client node whose requests the test writes.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from pathlib import Path

from cocoon.wire.messages import Request, ResponseError
from tests.netutil import Net, get_json, localnet
from tests.security.wire import Answer, refusal, wire_client

GOOD = {"model": "fake-model", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}
POISON: dict[str, tuple[bytes, dict[str, object], int, str]] = {
    # name: (body, envelope fields, status, code)
    "not JSON": (b"this is not JSON", {}, 400, "invalid_json"),
    "a JSON array": (b'[{"model": "fake-model"}]', {}, 400, "invalid_type"),
    "a JSON string": (b'"fake-model"', {}, 400, "invalid_type"),
    "malformed JSON": (b'{"model": "fake-model", "messages": [}', {}, 400, "invalid_json"),
    "a body over the size limit": (json.dumps({**GOOD, "pad": "x" * 2 * 1024 * 1024}).encode(), {}, 413,
                                   "request_too_large"),
    "a cap above the limit": (json.dumps(GOOD).encode(), {"max_tokens": 10**9}, 400, "max_tokens_exceeded"),
}
ANSWER_WITHIN_S = 5.0


def worker_requests(net: Net) -> float:
    """Requests the worker was given, whatever their outcome (its Prometheus counter)."""
    with urllib.request.urlopen(net.node("worker-1")["stats_url"] + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cocoon_worker_requests_total{"))


async def send_poison(net: Net) -> dict[str, Answer]:
    answers: dict[str, Answer] = {}
    async with wire_client(net) as mallory:
        for stream in (False, True):
            for name, (body, fields, _, _) in POISON.items():
                req = Request(endpoint="chat", model="fake-model", body=body, stream=stream, include_usage=False,
                              deadline=time.time() + 600, request_id=uuid.uuid4().hex, **fields)  # type: ignore[arg-type]
                call = await mallory.api.link.call(req)
                answer: Answer = [await call.next(ANSWER_WITHIN_S)]
                while not isinstance(answer[-1], ResponseError) and not call.done:
                    answer.append(await call.next(ANSWER_WITHIN_S))
                answers[f"{name} ({'streamed' if stream else 'whole'})"] = answer
    return answers


def test_the_proxy_refuses_poison_bodies_without_asking_a_worker(tmp_path: Path) -> None:
    with localnet(tmp_path / "state", engine="fake", workers=1) as net:
        answers = asyncio.run(send_poison(net))
        assert worker_requests(net) == 0  # every one refused by the proxy itself
        for name, answer in answers.items():
            status, code, _ = refusal(answer)
            expected = next(v for k, v in POISON.items() if name.startswith(k))
            assert (status, code) == expected[2:], (name, answer)
        proxy = net.stats("proxy-1")
        (worker,) = proxy["reputation"]
        assert worker["failed"] == 0 and worker["benched_s"] == 0
        # the honest worker still serves, and only the honest request reached it
        req = urllib.request.Request(net.api_url + "/chat/completions", data=json.dumps(GOOD).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200 and json.loads(resp.read())["usage"]["completion_tokens"] > 0
        assert worker_requests(net) == 1
        assert get_json(net.node("proxy-1")["stats_url"] + "/jsonstats")["requests"]["ok"] == 1
