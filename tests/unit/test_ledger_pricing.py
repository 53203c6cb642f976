"""Pricing: integer nanoTON, each amount rounded once, down; reservations cover any answer."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from cocoon.config import Prices
from cocoon.core.usage import Usage
from cocoon.ledger.pricing import Bounds, Charge, max_cost, price_request, weighted_tokens

counts = st.integers(0, 100_000)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    prompt, completion = draw(counts), draw(counts)
    return Usage(prompt_tokens=prompt, cached_tokens=draw(st.integers(0, prompt)), completion_tokens=completion,
                 reasoning_tokens=draw(st.integers(0, completion)))


@st.composite
def price_lists(draw: st.DrawFn) -> Prices:
    price = draw(st.integers(0, 10_000))
    mult = st.integers(0, 10_000)
    return Prices(price_per_token=price, worker_fee_per_token=draw(st.integers(0, price)),
                  prompt_multiplier=draw(mult), cached_multiplier=draw(mult), completion_multiplier=draw(mult),
                  reasoning_multiplier=draw(mult))


def test_a_known_request() -> None:
    # 100 prompt tokens (40 cached), 50 completion tokens (10 of them reasoning), worker coefficient 1.5
    usage = Usage(prompt_tokens=100, cached_tokens=40, completion_tokens=50, reasoning_tokens=10)
    prices = Prices(price_per_token=20, worker_fee_per_token=16, prompt_multiplier=1000, cached_multiplier=100,
                    completion_multiplier=4000, reasoning_multiplier=5000)
    assert weighted_tokens(usage, prices) == 60 * 1000 + 40 * 100 + 40 * 4000 + 10 * 5000
    charge = price_request(usage, prices, 1500)
    assert charge == (274_000 * 1500 * 20 // 10**6, 274_000 * 1500 * 16 // 10**6) == (8220, 6576)
    assert charge.commission == 1644


def test_a_fully_cached_prompt_pays_the_cached_rate_only() -> None:
    prices = Prices(prompt_multiplier=1000, cached_multiplier=100, completion_multiplier=4000,
                    reasoning_multiplier=4000)
    assert weighted_tokens(Usage(prompt_tokens=100, cached_tokens=100), prices) == 100 * 100
    # more cached than prompt tokens (usage as a peer reports it): no negative uncached count lowers the cost
    assert weighted_tokens(Usage(prompt_tokens=10, cached_tokens=100), prices) == 100 * 100


@given(usages(), price_lists(), st.integers(0, 5000))
def test_each_amount_is_the_exact_price_rounded_down_once_and_the_commission_is_never_negative(
        usage: Usage, prices: Prices, coefficient: int) -> None:
    exact = Fraction(weighted_tokens(usage, prices) * coefficient, 10**6)
    charge = price_request(usage, prices, coefficient)
    assert charge.client_cost == int(exact * prices.price_per_token)  # floor: positive values
    assert charge.worker_fee == int(exact * prices.worker_fee_per_token)
    assert 0 <= exact * prices.price_per_token - charge.client_cost < 1
    assert charge.commission >= 0


@given(usages(), price_lists(), st.integers(0, 5000), st.integers(0, 1000), st.integers(0, 1000))
def test_the_reservation_covers_any_answer_within_its_bounds(usage: Usage, prices: Prices, coefficient: int,
                                                               more_prompt: int, more_completion: int) -> None:
    reserved = max_cost(Bounds(usage.prompt_tokens + more_prompt, usage.completion_tokens + more_completion), prices,
                        coefficient)
    assert price_request(usage, prices, coefficient).client_cost <= reserved
    exact = Fraction((usage.prompt_tokens + more_prompt) * max(prices.prompt_multiplier, prices.cached_multiplier)
                     + (usage.completion_tokens + more_completion)
                     * max(prices.completion_multiplier, prices.reasoning_multiplier),
                     10**6) * coefficient * prices.price_per_token
    assert 0 <= reserved - exact < 1  # rounded up, once


any_count = st.integers(0, 10**12)


@given(st.builds(Usage, prompt_tokens=any_count, cached_tokens=any_count, completion_tokens=any_count,
                 reasoning_tokens=any_count),
       st.builds(Bounds, counts, counts), price_lists(), st.integers(0, 5000))
def test_any_report_held_to_the_bounds_costs_no_more_than_the_reservation(usage: Usage, bounds: Bounds,
                                                                          prices: Prices, coefficient: int) -> None:
    """Issue 15 item 2: whatever a worker reports (details beyond their wholes included), the held usage is priced
    within what was reserved, and a report within the bounds is left exactly as it was."""
    held, beyond = bounds.hold(usage)
    assert price_request(held, prices, coefficient).client_cost <= max_cost(bounds, prices, coefficient)
    assert held.prompt_tokens <= bounds.prompt_tokens and held.completion_tokens <= bounds.completion_tokens
    assert held.cached_tokens <= held.prompt_tokens and held.reasoning_tokens <= held.completion_tokens
    assert (held == usage) == (beyond == ())
    assert all(getattr(held, name) < getattr(usage, name) for name in beyond)


def test_a_report_beyond_its_bounds_names_what_went_beyond() -> None:
    bounds = Bounds(prompt_tokens=300, completion_tokens=20)
    assert bounds.hold(Usage(prompt_tokens=50_000_000, completion_tokens=20)) == \
        (Usage(prompt_tokens=300, completion_tokens=20), ("prompt_tokens",))
    assert bounds.hold(Usage(prompt_tokens=10, cached_tokens=11, completion_tokens=5, reasoning_tokens=6)) == \
        (Usage(prompt_tokens=10, cached_tokens=10, completion_tokens=5, reasoning_tokens=5),
         ("cached_tokens", "reasoning_tokens"))
    within = Usage(prompt_tokens=300, cached_tokens=300, completion_tokens=20, reasoning_tokens=20)
    assert bounds.hold(within) == (within, ())


def test_media_is_priced_per_second_of_input_exactly() -> None:
    prices = Prices(price_per_media_second=20_000, worker_fee_per_media_second=16_000)
    assert price_request(Usage(media_ms=2000), prices, 1000) == Charge(40_000, 32_000)
    assert price_request(Usage(media_ms=1), prices, 1500) == Charge(30, 24)  # 1 ms at 1.5x
    assert price_request(Usage(media_ms=1), Prices(price_per_media_second=999, worker_fee_per_media_second=1),
                         1000) == Charge(0, 0)  # rounded down, once
    bounds = Bounds(prompt_tokens=0, completion_tokens=0, media_ms=1500)
    held, beyond = bounds.hold(Usage(media_ms=2000))
    assert held == Usage(media_ms=1500) and beyond == ("media_ms",)
    assert bounds.hold(Usage(media_ms=1500)) == (Usage(media_ms=1500), ())
    assert max_cost(bounds, prices, 1000) == 30_000
    assert max_cost(Bounds(0, 0, media_ms=1), Prices(price_per_media_second=1), 1000) == 1  # rounded up
