"""ledger/translog.py over a real local chain (the compiled root contract in the TVM): every registry change is a
log entry, the owner's signed head covers it, inclusion and consistency proofs hold, and anything else is refused
with its reason."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from cocoon.config import Prices
from cocoon.core.merkle import MerkleLog, leaf_hash
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.translog import HeadStore, InclusionProof, LogError, RegistryLog, TreeHead

IMAGE_A, IMAGE_B = "ab" * 32, "cd" * 32


@pytest.fixture
def ledger(tmp_path: Path) -> LocalLedger:
    return LocalLedger(tmp_path / "ledger.sqlite")


def test_every_registry_change_is_an_entry_under_the_owners_signed_head(ledger: LocalLedger) -> None:
    log = RegistryLog.read(ledger)
    assert [(e.version, e.op) for e in log.entries] == [(1, "set_params")]  # the genesis
    assert log.head is not None and log.head.size == 1 and log.head.key == ledger.owner.public_key
    ledger.set_allowed_images("worker", [IMAGE_A, IMAGE_B])
    ledger.set_prices(Prices(price_per_token=30, worker_fee_per_token=20))
    ledger.allow_engine("m", "http://127.0.0.1:9")
    address = ledger.register_proxy(ledger.owner.address, b"\x07" * 32, "127.0.0.1:9999")
    ledger.set_allowed_images("worker", [IMAGE_B])
    log = RegistryLog.read(ledger, log)
    assert [e.op for e in log.entries] == ["set_params", "set_hash", "set_hash", "set_params", "set_hash",
                                           "register_proxy", "set_hash"]
    assert [e.version for e in log.entries] == list(range(1, 8)) == list(range(1, ledger.refresh().version + 1))
    assert log.head is not None and log.head.size == 7  # each change was signed in the same chain operation
    assert log.entries[3].change["price_per_token"] == 30
    assert log.entries[5].change == {"owner": ledger.owner.address, "pubkey": "07" * 32, "endpoint": "127.0.0.1:9999"}
    assert log.entries[6].change == {"kind": "worker_image", "hash": IMAGE_A, "present": False}
    assert ledger.proxies()[0].address == address
    # the contract's root is the RFC 6962 root over the entries' cell hashes
    assert MerkleLog([c.hash for c in log.cells]).root() == log.head.root_hash
    assert log.entries[1].leaf == leaf_hash(log.cells[1].hash)


def test_inclusion_of_trusted_hashes_and_refusal_of_removed_or_unknown_ones(ledger: LocalLedger) -> None:
    ledger.set_allowed_images("worker", [IMAGE_A, IMAGE_B])
    ledger.set_allowed_images("worker", [IMAGE_B])
    log = RegistryLog.read(ledger)
    assert log.check_trusted(IMAGE_B).change["present"] is True
    with pytest.raises(LogError, match="removes it"):
        log.check_trusted(IMAGE_A)
    assert log.check_trusted(IMAGE_A, present=False).index == 3
    with pytest.raises(LogError, match="no entry"):
        log.check_trusted("ef" * 32)
    proof = log.prove(log.find(IMAGE_B).index)
    assert log.head is not None
    proof.verify(log.head)
    # a proof for another tree (an older head), a tampered path, another leaf: each refused with the reason
    older = RegistryLog.read(ledger).prove(0)
    ledger.allow_engine("m", "http://127.0.0.1:9")
    newer = RegistryLog.read(ledger)
    assert newer.head is not None
    with pytest.raises(LogError, match="an inclusion proof for another tree"):
        older.verify(newer.head)
    bad_path = msgspec.structs.replace(newer.prove(0), path=[b"\x00" * 32, *newer.prove(0).path[1:]])
    with pytest.raises(LogError, match="does not hold"):
        bad_path.verify(newer.head)
    with pytest.raises(LogError, match="does not hold"):
        msgspec.structs.replace(newer.prove(0), leaf=newer.tree.leaves[1]).verify(newer.head)
    short = InclusionProof(0, newer.head.size, newer.tree.leaves[0], newer.head.root_hash, [b"x"])
    with pytest.raises(LogError, match="bytes"):
        short.verify(newer.head)


def test_a_head_signed_by_another_key_or_not_matching_the_entries_is_refused(ledger: LocalLedger) -> None:
    log = RegistryLog.read(ledger)
    head = log.head
    assert head is not None
    forged = msgspec.structs.replace(head, signature=bytes(64))
    with pytest.raises(LogError, match="not signed by the registry's log key"):
        forged.verify()
    with pytest.raises(LogError, match="not signed"):
        msgspec.structs.replace(head, global_id=head.global_id + 1).verify()  # signed for another network
    with pytest.raises(LogError, match="do not hash to the signed head"):
        RegistryLog(head, [log.cells[0].refs[0]])
    with pytest.raises(LogError, match="covers 1 entries"):
        RegistryLog(head, [])


def test_heads_are_saved_and_a_new_one_must_extend_the_last_one_seen(ledger: LocalLedger, tmp_path: Path) -> None:
    store = HeadStore(tmp_path / "head.json")
    first = RegistryLog.read(ledger)
    assert store.advance(first) == first.head
    ledger.set_allowed_images("proxy", [IMAGE_A])
    ledger.set_allowed_images("worker", [IMAGE_B])
    grown = RegistryLog.read(ledger, first)
    assert store.advance(grown) == grown.head
    assert store.load() == grown.head
    # another chain's log (another root), and the same root's log rewritten: both refused, the saved head kept
    other = LocalLedger(tmp_path / "other.sqlite")
    with pytest.raises(LogError, match="the log of root"):
        store.advance(RegistryLog.read(other))
    assert first.head is not None and grown.head is not None
    rewritten = TreeHead(grown.head.root_contract, grown.head.global_id, first.head.size, b"\x01" * 32,
                         grown.head.key, ledger.owner.sign(b"x"))
    store.path.write_bytes(msgspec.json.encode(rewritten))
    with pytest.raises(LogError, match="not signed"):
        store.advance(grown)
    forked = TreeHead(grown.head.root_contract, grown.head.global_id, 2, b"\x01" * 32, grown.head.key, b"")
    forked = msgspec.structs.replace(forked, signature=ledger.owner.sign(forked.signed_hash()))
    store.path.write_bytes(msgspec.json.encode(forked))
    with pytest.raises(LogError, match="does not extend the head seen before"):
        store.advance(grown)
    store.path.write_bytes(b"not json")
    with pytest.raises(LogError, match="holds no tree head"):
        store.advance(grown)
