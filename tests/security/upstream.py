"""An OpenAI-compatible server on 127.0.0.1 that a worker fronts with `engine = "openai:URL"`, for attacks that need
an engine honouring `n`, `best_of` and prompt arrays, or reporting whatever usage it is told to.

Run as a script (`python upstream.py PORT`). Every choice of every prompt generates `max_tokens` words. The usage
it reports is honest (prompt words, generated words) unless the prompt holds `USAGE=<json object>`: then that object
is reported as is. Like vLLM, it puts the usage so far in every streamed chunk when asked to
(`stream_options.continuous_usage_stats`). A prompt holding `PACE=<seconds>` streams one chunk every that many
seconds. GET /stats says how many generation requests it served and how many tokens it generated.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from typing import Any

from aiohttp import web

MODEL = "upstream-model"
_USAGE = re.compile(r"USAGE=(\{[^}]*\})")
_PACE = re.compile(r"PACE=([0-9.]+)")
served = {"requests": 0, "generated": 0}


def _prompts(endpoint: str, body: dict[str, Any]) -> list[str]:
    if endpoint == "chat":
        return [" ".join(str(m.get("content")) for m in body["messages"])]
    prompt = body["prompt"]
    if isinstance(prompt, list) and any(isinstance(p, str | list) for p in prompt):
        return [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt]
    return [prompt if isinstance(prompt, str) else " ".join(map(str, prompt))]


def _usage(prompts: list[str], generated: int) -> dict[str, Any]:
    told = _USAGE.search(" ".join(prompts))
    if told:
        return json.loads(told.group(1))
    prompt_tokens = sum(len(p.split()) for p in prompts)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated}


async def generate(request: web.Request) -> web.StreamResponse:
    endpoint = "chat" if request.path.endswith("/chat/completions") else "completions"
    body = await request.json()
    prompts = _prompts(endpoint, body)
    per_prompt = max(int(body.get("n") or 1), int(body.get("best_of") or 1))
    returned = int(body.get("n") or 1)
    length = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    served["requests"] += 1
    served["generated"] += len(prompts) * per_prompt * length
    usage = _usage(prompts, len(prompts) * per_prompt * length)
    head = {"id": "cmpl-upstream", "created": int(time.time()), "model": MODEL}
    choices = [(p * returned + c) for p in range(len(prompts)) for c in range(returned)]
    if not body.get("stream"):
        text = " ".join(["word"] * length)
        items = [{"index": i, "finish_reason": "length",
                  **({"message": {"role": "assistant", "content": text}} if endpoint == "chat" else {"text": text})}
                 for i in choices]
        kind = "chat.completion" if endpoint == "chat" else "text_completion"
        return web.json_response({**head, "object": kind, "choices": items, "usage": usage})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    options = body.get("stream_options") or {}
    pace = _PACE.search(" ".join(prompts))
    for step in range(length):
        for i in choices:
            piece = {"delta": {"content": "word "}} if endpoint == "chat" else {"text": "word "}
            chunk = {**head, "object": kind, "choices": [{"index": i, **piece, "finish_reason": None}]}
            if options.get("continuous_usage_stats"):  # the usage so far, as vLLM reports it
                chunk["usage"] = _usage(prompts, (step + 1) * len(choices))
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if pace:
            await asyncio.sleep(float(pace.group(1)))
    if options.get("include_usage"):
        final = {**head, "object": kind, "choices": [], "usage": usage}
        await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(served)


def main() -> None:
    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
