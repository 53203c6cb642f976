"""What a request costs the client and earns the worker, in integer nanoTON.

    weighted = Σ_kind tokens_kind × multiplier_kind            (multipliers in per-mille of the base price)
    cost     = ⌊weighted × coefficient × price_per_token / 10⁶⌋     (coefficient: the worker's, per-mille)
    fee      = ⌊weighted × coefficient × worker_fee_per_token / 10⁶⌋

Rounding is in nobody's favour twice: each amount is rounded once, down, after every product, so no fraction is
rounded per token kind or per step and then again. The client never pays a fraction of a nanoTON it did not
use, the worker is never paid one it did not earn, and the proxy's commission is the exact difference, never
negative because worker_fee_per_token ≤ price_per_token (the root contract refuses anything else). Per-request
amounts are what the books add up: summing per request means at most one nanoTON per request stays with the
client and one with the proxy.

Media (the media workload) is priced per second of input processed, counted in milliseconds:

    cost     = ⌊media_ms × coefficient × price_per_media_second / 10⁶⌋      (10⁶ = ms per second × per-mille)
    fee      = ⌊media_ms × coefficient × worker_fee_per_media_second / 10⁶⌋

added to the tokens' amounts before the one rounding (an answer has either, but nothing needs it to).

Reservations (`max_cost`) round up instead: they must cover any answer the request can produce. What a request
can produce is its `Bounds`, and a worker's report is held to them (`Bounds.hold`) before it is priced, so that
no report, however absurd, is charged beyond what was reserved.
"""

from __future__ import annotations

from typing import NamedTuple

from cocoon.config import Prices
from cocoon.core.usage import Usage

_PER_MILLE_SQUARED = 1_000_000


class Charge(NamedTuple):
    client_cost: int
    worker_fee: int

    @property
    def commission(self) -> int:
        return self.client_cost - self.worker_fee


def weighted_tokens(usage: Usage, prices: Prices) -> int:
    """Token count weighted by kind, in per-mille units. Cached prompt tokens are billed at the cached rate."""
    uncached_prompt = max(usage.prompt_tokens - usage.cached_tokens, 0)
    return (
        uncached_prompt * prices.prompt_multiplier
        + usage.cached_tokens * prices.cached_multiplier
        + (usage.completion_tokens - usage.reasoning_tokens) * prices.completion_multiplier
        + usage.reasoning_tokens * prices.reasoning_multiplier
    )


def price_request(usage: Usage, prices: Prices, coefficient: int) -> Charge:
    weighted = weighted_tokens(usage, prices) * coefficient
    media = usage.media_ms * coefficient
    return Charge(
        client_cost=(weighted * prices.price_per_token + media * prices.price_per_media_second) // _PER_MILLE_SQUARED,
        worker_fee=(weighted * prices.worker_fee_per_token + media * prices.worker_fee_per_media_second)
        // _PER_MILLE_SQUARED,
    )


class Bounds(NamedTuple):
    """The most tokens of each kind a request can make an honest worker count: what its reservation covers."""

    prompt_tokens: int
    completion_tokens: int
    media_ms: int = 0  # input media a job may process (its declared duration bound)

    def hold(self, usage: Usage) -> tuple[Usage, tuple[str, ...]]:
        """`usage` held to these bounds, and the names of the counts that went beyond them (cached tokens are part
        of the prompt and reasoning tokens part of the completion, so neither may exceed its whole)."""
        prompt = min(usage.prompt_tokens, self.prompt_tokens)
        completion = min(usage.completion_tokens, self.completion_tokens)
        held = Usage(prompt_tokens=prompt, cached_tokens=min(usage.cached_tokens, prompt),
                     completion_tokens=completion, reasoning_tokens=min(usage.reasoning_tokens, completion),
                     media_ms=min(usage.media_ms, self.media_ms))
        if held == usage:
            return usage, ()
        beyond = tuple(name for name in Usage.__struct_fields__ if getattr(held, name) != getattr(usage, name))
        return held, beyond


def max_cost(bounds: Bounds, prices: Prices, coefficient: int) -> int:
    """The most a request can cost: every prompt token uncached, every completion token at the dearer of the
    completion and reasoning rates; rounded up."""
    weighted = (bounds.prompt_tokens * max(prices.prompt_multiplier, prices.cached_multiplier)
                + bounds.completion_tokens * max(prices.completion_multiplier, prices.reasoning_multiplier))
    return -(-(weighted * prices.price_per_token + bounds.media_ms * prices.price_per_media_second) * coefficient
             // _PER_MILLE_SQUARED)
