"""A deterministic engine with a fixed token rate: tests and benchmarks without a model."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

from cocoon.inference.local import GenRequest, LocalEngine, Tally

_WORDS = (
    "amber", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
    "kelp", "lagoon", "meadow", "nectar", "obsidian", "pebble", "quartz", "river", "saffron", "tundra",
    "umber", "valley", "willow", "xenon", "yarrow", "zephyr", "cocoon", "lantern", "orbit", "signal",
)


class FakeEngine(LocalEngine):
    """Answers every prompt with `reply_tokens` words chosen by a hash of the prompt.

    `token_bytes` > 0 makes every piece exactly that many bytes; `tokens_per_s` > 0 paces the pieces on a
    fixed schedule (the first one after one interval). `echo` answers with the prompt's words instead, each written
    backwards, in turn: an answer that holds text of the prompt's making but never the prompt's own (tests of who
    can read answers put a marker in the prompt and look for both). `sample` draws the words at random, run by run,
    for a request with a `temperature` above 0 and no `seed`, as a sampling engine's answers differ (tests of spot
    checks); otherwise every answer depends on the prompt alone.
    """

    name = "fake"

    def __init__(self, model: str = "fake-model", reply_tokens: int = 16, token_bytes: int = 0,
                 tokens_per_s: float = 0.0, model_hash: str | None = None,
                 echo: bool = False, sample: bool = False) -> None:
        if reply_tokens < 0 or token_bytes < 0 or tokens_per_s < 0:
            raise ValueError("reply_tokens, token_bytes and tokens_per_s must not be negative")
        self.model_id = model
        self.reply_tokens = reply_tokens
        self.token_bytes = token_bytes
        self.tokens_per_s = tokens_per_s
        self.declare(model_hash)  # a fake engine has no weights: what its operator says is all there is
        self.echo = echo
        self.sample = sample
        self.generated_tokens = 0  # every token ever produced: lets tests see that cancellation stopped work

    async def generate(self, req: GenRequest, usage: Tally) -> AsyncIterator[str]:
        text = req.text()
        usage.prompt_tokens = len(text.split())
        limit = self.reply_tokens if req.max_tokens is None else min(req.max_tokens, self.reply_tokens)
        sampled = self.sample and req.temperature > 0 and req.seed is None
        rng = random.Random() if sampled else random.Random(hashlib.blake2b(text.encode(), digest_size=8).digest())
        echoed = [w[::-1] for w in text.split()] or ["."]
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(limit):
            # sleep(0) still hands control back, so a fast fake engine cannot starve the event loop
            delay = start + (i + 1) / self.tokens_per_s - loop.time() if self.tokens_per_s else 0.0
            await asyncio.sleep(max(delay, 0.0))
            word = echoed[i % len(echoed)] if self.echo else rng.choice(_WORDS)
            piece = word if i == 0 else " " + word
            if self.token_bytes:
                piece = (piece + (" " + word) * self.token_bytes)[: self.token_bytes]
            usage.completion_tokens += 1
            self.generated_tokens += 1
            yield piece
        usage.finish_reason = "length" if limit < self.reply_tokens else "stop"
