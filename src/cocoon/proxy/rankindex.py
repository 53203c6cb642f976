"""Find the lowest-scored entry whose price is at most a cap, in O(log n) per operation.

A treap (a binary search tree kept balanced by random priorities) ordered by (price, arrival); every node
also remembers the lowest-scored node of its subtree. Changing a score repairs those summaries along one
root-to-node path, and a price-capped query walks one path, collecting whole left subtrees as it goes.
A score of `math.inf` means "not available now" and is never returned.
"""

from __future__ import annotations

import math
import random
from typing import Generic, TypeVar

T = TypeVar("T")

_ARRIVAL_BITS = 40  # arrivals per index before keys would collide: about 10^12


class RankNode(Generic[T]):
    __slots__ = ("best", "item", "key", "left", "prio", "right", "score")

    def __init__(self, item: T, key: int, score: float, prio: float) -> None:
        self.item = item
        self.key = key
        self.score = score
        self.prio = prio
        self.left: RankNode[T] | None = None
        self.right: RankNode[T] | None = None
        self.best: RankNode[T] = self


def _pull(node: RankNode[T]) -> None:
    best = node
    left, right = node.left, node.right
    if left is not None and left.best.score < best.score:
        best = left.best
    if right is not None and right.best.score < best.score:
        best = right.best
    node.best = best


def _insert(root: RankNode[T] | None, node: RankNode[T]) -> RankNode[T]:
    if root is None:
        return node
    if node.key < root.key:
        child = root.left = _insert(root.left, node)
        if child.prio > root.prio:  # rotate right
            root.left, child.right = child.right, root
            _pull(root)
            root = child
    else:
        child = root.right = _insert(root.right, node)
        if child.prio > root.prio:  # rotate left
            root.right, child.left = child.left, root
            _pull(root)
            root = child
    _pull(root)
    return root


def _merge(a: RankNode[T] | None, b: RankNode[T] | None) -> RankNode[T] | None:
    """Join two treaps where every key in `a` is below every key in `b`."""
    if a is None:
        return b
    if b is None:
        return a
    if a.prio > b.prio:
        a.right = _merge(a.right, b)
        _pull(a)
        return a
    b.left = _merge(a, b.left)
    _pull(b)
    return b


def _remove(root: RankNode[T] | None, key: int) -> RankNode[T] | None:
    if root is None:
        raise KeyError(key)
    if key == root.key:
        return _merge(root.left, root.right)
    if key < root.key:
        root.left = _remove(root.left, key)
    else:
        root.right = _remove(root.right, key)
    _pull(root)
    return root


class RankIndex(Generic[T]):
    def __init__(self, rng: random.Random | None = None) -> None:
        self._root: RankNode[T] | None = None
        self._arrivals = 0
        self._rng = rng or random.Random()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def insert(self, item: T, price: int, score: float) -> RankNode[T]:
        if price < 0:
            raise ValueError("price must not be negative")
        self._arrivals += 1
        node = RankNode(item, (price << _ARRIVAL_BITS) | self._arrivals, score, self._rng.random())
        self._root = _insert(self._root, node)
        self._size += 1
        return node

    def remove(self, node: RankNode[T]) -> None:
        self._root = _remove(self._root, node.key)
        self._size -= 1

    def update(self, node: RankNode[T], score: float) -> None:
        if score == node.score:
            return
        node.score = score
        path: list[RankNode[T]] = []
        cur = self._root
        while cur is not node:
            if cur is None:
                raise KeyError(node.key)
            path.append(cur)
            cur = cur.left if node.key < cur.key else cur.right
        _pull(node)
        for above in reversed(path):
            _pull(above)

    def best(self, max_price: int | None = None) -> RankNode[T] | None:
        """The lowest finite score among entries priced at most `max_price` (any price when None)."""
        root = self._root
        if root is None:
            return None
        if max_price is None:
            found = root.best
        else:
            limit = ((max_price + 1) << _ARRIVAL_BITS) - 1
            found = None
            node: RankNode[T] | None = root
            while node is not None:
                if node.key <= limit:
                    # this node and its whole left subtree are within the cap
                    if found is None or node.score < found.score:
                        found = node
                    left = node.left
                    if left is not None and left.best.score < found.score:
                        found = left.best
                    node = node.right
                else:
                    node = node.left
        return found if found is not None and found.score < math.inf else None

    def cheapest_price(self) -> int | None:
        """The lowest price present, available or not."""
        node = self._root
        if node is None:
            return None
        while node.left is not None:
            node = node.left
        return node.key >> _ARRIVAL_BITS
