"""A Merkle log hashed as in RFC 6962 / RFC 9162 §2.1, without any I/O: tree heads, inclusion and consistency
proofs, and the RFC 9162 algorithms that verify them.

Leaves are hashed `SHA-256(0x00 ‖ data)`, interior nodes `SHA-256(0x01 ‖ left ‖ right)`, the empty tree is
`SHA-256("")`. A tree of n > 1 leaves splits at k, the largest power of two below n. `Frontier` is the same tree
kept as the roots of its perfect subtrees (at most one per bit of n): what an append-only party (the root
contract) stores to compute the next root from the previous one and one new leaf.

Every `verify_*` raises `ProofError` with the reason; nothing here returns a bare False, so a caller cannot
forget to look.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof does not hold (or is malformed): the reason says which."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """k: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (already hashed with `leaf_hash`)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) (RFC 9162 §2.1.3.1) over leaf hashes."""
    if not 0 <= index < len(leaves):
        raise ProofError(f"leaf {index} is not in a tree of {len(leaves)} leaves")
    return _path(index, leaves)


def _path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, d[:k]), root_of(d[k:])]
    return [*_path(m - k, d[k:]), root_of(d[:k])]


def consistency_proof(leaves: Sequence[bytes], first: int) -> list[bytes]:
    """PROOF(first, D[n]) (RFC 9162 §2.1.4.1): empty when first is 0 or n."""
    n = len(leaves)
    if not 0 <= first <= n:
        raise ProofError(f"a tree of {n} leaves has no prefix of {first}")
    if first in (0, n):
        return []
    return _subproof(first, leaves, True)


def _subproof(m: int, d: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if whole else [root_of(d)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, d[:k], whole), root_of(d[k:])]
    return [*_subproof(m - k, d[k:], False), root_of(d[:k])]


def _check_hashes(what: str, *hashes: bytes) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what}: a hash of {len(h)} bytes, not {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` leads to from leaf hash `leaf` at `index` in a tree of `size` (RFC 9162
    §2.1.3.2, steps 1-4); ProofError when the proof cannot belong to a tree of that size."""
    _check_hashes("inclusion proof", leaf, *proof)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of {size} leaves")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"the inclusion proof is longer than a tree of {size} leaves allows")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"the inclusion proof is shorter than a tree of {size} leaves needs")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless leaf hash `leaf` sits at `index` of the tree of `size` leaves whose root is
    `root`."""
    _check_hashes("tree head", root)
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError(f"the inclusion proof for leaf {index} leads to another root than the tree head's "
                         f"(a proof for another tree, or another leaf)")


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Raise ProofError unless the tree of `second` leaves with root `second_root` extends the tree of `first`
    leaves with root `first_root` (RFC 9162 §2.1.4.2)."""
    _check_hashes("consistency proof", first_root, second_root, *proof)
    if first < 0 or first > second:
        raise ProofError(f"a tree of {second} leaves cannot extend one of {first}: logs only grow")
    if first == second:
        if proof:
            raise ProofError("two heads of the same size need an empty consistency proof")
        if first_root != second_root:
            raise ProofError(f"two different roots for the same tree size {first}: the log forked")
        return
    if first == 0:
        if proof:
            raise ProofError("every tree extends the empty one: its consistency proof is empty")
        if first_root != EMPTY_ROOT:
            raise ProofError("a tree of 0 leaves has the empty root")
        return
    if not proof:
        raise ProofError("an empty consistency proof between trees of different sizes")
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the first tree is itself a node of the second
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"the consistency proof is longer than trees of {first} and {second} leaves allow")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"the consistency proof is shorter than trees of {first} and {second} leaves need")
    if fr != first_root:
        raise ProofError(f"the consistency proof does not lead to the first head's root (size {first})")
    if sr != second_root:
        raise ProofError(f"the consistency proof does not lead to the second head's root (size {second})")


class Frontier:
    """The roots of the perfect subtrees that make up a tree of `size` leaves, the largest (leftmost) first: enough
    to append leaves and compute the root without the leaves themselves (what the root contract stores)."""

    __slots__ = ("nodes", "size")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if len(nodes) != size.bit_count():
            raise ProofError(f"a tree of {size} leaves has {size.bit_count()} frontier nodes, not {len(nodes)}")
        _check_hashes("frontier", *nodes)
        self.size = size
        self.nodes = list(nodes)

    @classmethod
    def of(cls, leaves: Sequence[bytes]) -> Frontier:
        frontier = cls()
        for leaf in leaves:
            frontier.append(leaf)
        return frontier

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash: it merges with every subtree of its height, like a carry in binary addition."""
        _check_hashes("leaf", leaf)
        h, n = leaf, self.size
        while n & 1:
            h = node_hash(self.nodes.pop(), h)
            n >>= 1
        self.nodes.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            r = node_hash(node, r)
        return r


class MerkleLog:
    """An append-only list of entries and the tree over them: the whole log, as whoever holds every leaf keeps
    it."""

    def __init__(self, entries: Sequence[bytes] = ()) -> None:
        self.entries: list[bytes] = []
        self.leaves: list[bytes] = []
        for entry in entries:
            self.append(entry)

    def __len__(self) -> int:
        return len(self.leaves)

    def append(self, entry: bytes) -> int:
        """Add an entry; its index."""
        self.entries.append(entry)
        self.leaves.append(leaf_hash(entry))
        return len(self.leaves) - 1

    def root(self, size: int | None = None) -> bytes:
        return root_of(self.leaves[: len(self.leaves) if size is None else size])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self.leaves[: len(self.leaves) if size is None else size], index)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        return consistency_proof(self.leaves[: len(self.leaves) if second is None else second], first)

    def index_of(self, leaf: bytes) -> int:
        """The first index holding leaf hash `leaf`; ProofError when none does."""
        try:
            return self.leaves.index(leaf)
        except ValueError:
            raise ProofError("no entry of the log has this leaf hash") from None
