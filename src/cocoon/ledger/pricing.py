"""What a request costs the client and earns the worker, in integer nanoTON.

cost = Σ_kind tokens_kind × multiplier_kind (‰) × price_per_token × coefficient (‰) / 10⁶
The division floors once, at the end, for the client charge and the worker fee alike, so rounding never
compounds across token kinds; the proxy's commission is the exact difference of the two.
"""

from __future__ import annotations

from typing import NamedTuple

from cocoon.config import Prices
from cocoon.wire.messages import Usage


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
    return Charge(
        client_cost=weighted * prices.price_per_token // 1_000_000,
        worker_fee=weighted * prices.worker_fee_per_token // 1_000_000,
    )
