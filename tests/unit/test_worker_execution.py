"""One request on the engine, as the worker runs it: held to what the proxy reserved, and the prompt reported at
the head of a stream (issue 15 items 4 and 5)."""

from __future__ import annotations

import json
from typing import Any

from cocoon.core.usage import Usage
from cocoon.inference.fake import FakeEngine
from cocoon.openai.schema import OpenAIRequest
from cocoon.wire.messages import Message, Request, ResponseEnd, ResponseError, ResponseHead
from cocoon.worker.execution import Execution


class Recording(FakeEngine):
    def __init__(self) -> None:
        super().__init__(reply_tokens=50)
        self.requests: list[OpenAIRequest] = []

    async def complete(self, req: OpenAIRequest) -> bytes:
        self.requests.append(req)
        return await super().complete(req)


async def run(body: dict[str, Any], *, engine: FakeEngine | None = None, stream: bool = False,
              endpoint: str = "chat", **fields: Any) -> list[Message]:
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    req = Request(call_id=7, endpoint=endpoint, model="fake-model", body=json.dumps(body).encode(), stream=stream,
                  include_usage=False, deadline=0, request_id="r", **fields)
    await Execution(engine or FakeEngine(), req, send).run()
    return sent


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "three word prompt"}], **extra}


async def test_a_body_asking_for_more_choices_than_reserved_is_refused_before_the_engine_runs() -> None:
    engine = Recording()
    for body, endpoint, declared, param, asked in [
            (chat(n=4), "chat", 1, "n", 4),
            ({"model": "fake-model", "prompt": "p", "best_of": 3}, "completions", 2, "best_of", 3),
            ({"model": "fake-model", "prompt": ["a", "b"]}, "completions", 1, "prompt", 2)]:
        (refused,) = await run(body, engine=engine, endpoint=endpoint, max_tokens=5, choices=declared)
        assert isinstance(refused, ResponseError)
        assert (refused.status, refused.code, refused.param) == (400, "invalid_value", param)
        assert f"ask for {asked} choices, but the request was reserved for {declared}" in refused.message
    assert engine.requests == []


async def test_the_engine_is_held_to_the_cap_reserved_for() -> None:
    engine = Recording()
    for cap_field in ({"max_tokens": 9000}, {"max_completion_tokens": 9000}, {"max_tokens": 3}, {}):
        sent = await run(chat(**cap_field), engine=engine, max_tokens=5)
        end = sent[-1]
        assert isinstance(end, ResponseEnd) and end.usage.completion_tokens == min(5, cap_field.get("max_tokens", 5))
    assert [r.max_tokens for r in engine.requests] == [5, 5, 3, 5]


async def test_a_stream_head_carries_the_prompt_the_engine_counted() -> None:
    sent = await run(chat(), stream=True, max_tokens=2)
    head = sent[0]
    assert isinstance(head, ResponseHead) and head.usage == Usage(prompt_tokens=3)
    end = sent[-1]
    assert isinstance(end, ResponseEnd) and end.usage == Usage(prompt_tokens=3, completion_tokens=2)
