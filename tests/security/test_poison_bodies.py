"""Issue 15 item 12 (worker side), attack: poison bodies.

A peer that speaks the wire protocol skips its client's schema and sends a body that is not JSON, a JSON array,
or a message whose role is a list. Before the fix the worker's handler raised and nothing answered: a
non-streamed request held its slot until its deadline, a streamed one was counted as a worker failure after
the first-token timeout and benched honest workers one after the other. The worker now decodes every body
with the OpenAI schema and answers what fails with a 4xx at once, which the proxy never holds against it.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from cocoon.config import SelectionConfig
from cocoon.inference.fake import FakeEngine
from cocoon.wire.messages import Request, ResponseError
from tests.integration.inproc import MODEL, chat, network

POISON = {
    "not JSON": b"this is not JSON",
    "a JSON array": b'[{"model": "fake-model"}]',
    "a role that is a list": b'{"model": "fake-model", "messages": [{"role": ["user"], "content": "hi"}]}',
}
ANSWER_WITHIN_S = 5.0  # far below the 30 s first-token timeout and the request's 600 s deadline


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_poison_bodies_get_a_prompt_4xx_and_do_not_bench_the_worker(tmp_path: Path, stream: bool) -> None:
    async with network() as net:
        proxy = await net.proxy(tmp_path, selection=SelectionConfig(bench_after_failures=1, bench_s=60))
        await net.worker(proxy, FakeEngine(reply_tokens=4), name="honest")
        client = await net.client([proxy])
        for name, body in POISON.items():
            req = Request(endpoint="chat", model=MODEL, body=body, stream=stream, include_usage=False,
                          deadline=time.time() + 600, request_id=uuid.uuid4().hex)
            call = await client.api.link.call(req)
            answer = await call.next(ANSWER_WITHIN_S)
            assert isinstance(answer, ResponseError), name
            assert 400 <= answer.status < 500, (name, answer)
            assert answer.code in ("invalid_json", "invalid_type"), (name, answer)
        rep = {r.name: r for r in proxy.reputations.summaries(time.monotonic())}
        assert rep["honest"].failed == 0 and rep["honest"].benched_s == 0
        # the worker still serves, and the proxy still sends it work
        ok = await net.post(chat(stream=stream))
        assert ok.status == 200, ok.raw
