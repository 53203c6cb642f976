"""The rank index answers exactly what a linear scan would, through any sequence of changes."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.proxy.rankindex import RankIndex, RankNode

scores = st.one_of(st.integers(0, 50).map(float), st.just(math.inf))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.integers(0, 20), scores),
        st.tuples(st.just("remove"), st.integers(0, 10_000), st.just(0.0)),
        st.tuples(st.just("update"), st.integers(0, 10_000), scores),
        st.tuples(st.just("best"), st.one_of(st.none(), st.integers(-1, 22)), st.just(0.0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(0, 2**32))
def test_matches_a_linear_scan(operations: list[tuple[str, int | None, float]], seed: int) -> None:
    index: RankIndex[int] = RankIndex(random.Random(seed))
    live: dict[int, tuple[RankNode[int], int]] = {}  # item → (node, price)
    serial = 0
    for op, arg, score in operations:
        if op == "insert":
            assert arg is not None
            serial += 1
            live[serial] = (index.insert(serial, arg, score), arg)
        elif op in ("remove", "update") and live:
            assert arg is not None
            item = sorted(live)[arg % len(live)]
            node, _ = live[item]
            if op == "remove":
                index.remove(node)
                del live[item]
            else:
                index.update(node, score)
        elif op == "best":
            found = index.best(arg)
            eligible = [node.score for node, price in live.values()
                        if node.score < math.inf and (arg is None or price <= arg)]
            if not eligible:
                assert found is None
            else:
                assert found is not None and found.score == min(eligible)
                assert arg is None or live[found.item][1] <= arg
        assert len(index) == len(live)
        cheapest = min((price for _, price in live.values()), default=None)
        assert index.cheapest_price() == cheapest


def test_ten_thousand_entries_stay_shallow() -> None:
    index: RankIndex[int] = RankIndex(random.Random(7))
    nodes = [index.insert(i, i % 37, float(i)) for i in range(10_000)]

    def depth(node: RankNode[int] | None) -> int:
        return 0 if node is None else 1 + max(depth(node.left), depth(node.right))

    assert depth(index._root) < 60  # a balanced tree of 10^4 has depth ~14; a treap stays within a small factor
    index.update(nodes[9_999], -1.0)  # priced 9_999 % 37 == 9
    assert index.best() is nodes[9_999] and index.best(9) is nodes[9_999]
    assert index.best(8) is nodes[0]
