"""core/merkle.py: RFC 6962/9162 hashing, proofs and their verification.

Known vectors are those of transparency-dev/merkle (proof/verify_test.go, the RFC 6962 reference tests): eight
leaves, the roots of each prefix, and inclusion and consistency proofs between them."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.core.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleLog,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                      "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
# (leaf index, tree size, proof)
INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


def test_known_roots() -> None:
    log = MerkleLog(LEAVES)
    assert log.root(0) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    for size, want in enumerate(ROOTS, start=1):
        assert log.root(size) == want
        assert Frontier.of(log.leaves[:size]).root() == want


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_known_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    log = MerkleLog(LEAVES)
    want = [bytes.fromhex(p) for p in proof]
    assert log.inclusion_proof(index, size) == want
    verify_inclusion(index, size, leaf_hash(LEAVES[index]), want, ROOTS[size - 1])
    for wrong_size in (size * 2, size // 2):  # the reference tests' "wrong tree height"
        with pytest.raises(ProofError):
            verify_inclusion(index, wrong_size, leaf_hash(LEAVES[index]), want, ROOTS[size - 1])


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY)
def test_known_consistency_proofs(first: int, second: int, proof: list[str]) -> None:
    log = MerkleLog(LEAVES)
    want = [bytes.fromhex(p) for p in proof]
    assert log.consistency_proof(first, second) == want
    verify_consistency(first, second, ROOTS[first - 1], ROOTS[second - 1], want)


def test_trivial_consistency() -> None:
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[4], [])
    verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    with pytest.raises(ProofError, match="forked"):
        verify_consistency(3, 3, ROOTS[2], ROOTS[3], [])
    with pytest.raises(ProofError, match="only grow"):
        verify_consistency(4, 3, ROOTS[3], ROOTS[2], [ROOTS[0]])
    with pytest.raises(ProofError, match="empty consistency proof"):
        verify_consistency(1, 2, ROOTS[0], ROOTS[1], [])


def test_bad_shapes_are_refused_with_a_reason() -> None:
    with pytest.raises(ProofError, match="outside"):
        verify_inclusion(3, 3, leaf_hash(b"x"), [], ROOTS[2])
    with pytest.raises(ProofError, match="bytes"):
        verify_inclusion(0, 1, b"short", [], ROOTS[0])
    with pytest.raises(ProofError, match="frontier nodes"):
        Frontier(3, [ROOTS[0]])
    with pytest.raises(ProofError, match="not in a tree"):
        inclusion_proof([leaf_hash(b"a")], 1)
    with pytest.raises(ProofError, match="no prefix"):
        consistency_proof([leaf_hash(b"a")], 2)


entries = st.lists(st.binary(max_size=8), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(entries, st.data())
def test_every_inclusion_proof_verifies_and_any_tampering_fails(items: list[bytes], data: st.DataObject) -> None:
    log = MerkleLog(items)
    size = data.draw(st.integers(1, len(log)))
    index = data.draw(st.integers(0, size - 1))
    root = log.root(size)
    proof = log.inclusion_proof(index, size)
    leaf = log.leaves[index]
    verify_inclusion(index, size, leaf, proof, root)
    assert Frontier.of(log.leaves[:size]).root() == root
    # another leaf, another index, another size, another root, a flipped bit, a dropped or an extra node
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf_hash(b"not an entry"), proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, proof, node_hash(root, root))
    other = data.draw(st.integers(0, 2 * size).filter(lambda i: i != index))
    if other >= size or log.leaves[other] != leaf:
        with pytest.raises(ProofError):
            verify_inclusion(other, size, leaf, proof, root)
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        flipped = list(proof)
        flipped[at] = bytes(b ^ (1 << (bit % 8)) if i == bit // 8 else b for i, b in enumerate(flipped[at]))
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, flipped, root)
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, proof[:-1], root)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, [*proof, root], root)



@settings(max_examples=150, deadline=None)
@given(entries, st.data())
def test_every_consistency_proof_verifies_and_any_tampering_fails(items: list[bytes], data: st.DataObject) -> None:
    log = MerkleLog(items)
    second = data.draw(st.integers(1, len(log)))
    first = data.draw(st.integers(1, second))
    r1, r2 = log.root(first), log.root(second)
    proof = log.consistency_proof(first, second)
    verify_consistency(first, second, r1, r2, proof)
    if first == second:
        return
    with pytest.raises(ProofError):
        verify_consistency(first, second, node_hash(r1, r1), r2, proof)
    with pytest.raises(ProofError):
        verify_consistency(first, second, r1, node_hash(r2, r2), proof)
    with pytest.raises(ProofError):
        verify_consistency(first, second, r2, r1, proof)
    at = data.draw(st.integers(0, len(proof) - 1))
    flipped = list(proof)
    flipped[at] = bytes([flipped[at][0] ^ 0x10]) + flipped[at][1:]
    with pytest.raises(ProofError):
        verify_consistency(first, second, r1, r2, flipped)
    with pytest.raises(ProofError):
        verify_consistency(first, second, r1, r2, proof[:-1])
    with pytest.raises(ProofError):
        verify_consistency(first, second, r1, r2, [*proof, r2])
    # a fork: the same first tree, a second tree whose later entries differ, the first tree's proof
    forked = MerkleLog([*items[:first], *(b"fork" + e for e in items[first:second])])
    if forked.root(second) != r2:
        with pytest.raises(ProofError):
            verify_consistency(first, second, r1, forked.root(second), proof)


@settings(max_examples=100, deadline=None)
@given(entries)
def test_frontier_matches_the_whole_tree_after_every_append(items: list[bytes]) -> None:
    log, frontier = MerkleLog(), Frontier()
    for item in items:
        log.append(item)
        frontier.append(leaf_hash(item))
        assert frontier.size == len(log)
        assert frontier.root() == log.root()
        copy = Frontier(frontier.size, frontier.nodes)
        assert copy.root() == frontier.root()
