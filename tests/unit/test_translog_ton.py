"""The registry log over the `ton` backend: read with the same get-methods (the liteserver answers of a chain), and
the owner's signed head sent as a wallet v4r2 external message carrying exactly the `sign_head` body."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import VerifyKey
from pytoniq_core import Address

from cocoon.ledger import layouts
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.ton import TonLedger
from cocoon.ledger.translog import RegistryLog
from tests.unit.test_ledger_ton import NOW, RecordedChain, _unwrap


@pytest.fixture
def chains(tmp_path: Path) -> Iterator[tuple[LocalLedger, TonLedger, RecordedChain]]:
    local = LocalLedger(tmp_path / "l.sqlite")
    local.set_allowed_images("worker", ["ab" * 32])
    chain = RecordedChain(local)
    ledger = TonLedger(local.root, chain, sync_s=3600, clock=lambda: NOW)
    yield local, ledger, chain
    ledger.close()
    local.close()


def test_the_log_reads_the_same_through_the_ton_backend(chains: tuple[LocalLedger, TonLedger, RecordedChain]
                                                        ) -> None:
    local, ledger, _ = chains
    over_ton, over_local = RegistryLog.read(ledger), RegistryLog.read(local)
    assert over_ton.head == over_local.head and over_ton.head is not None
    assert [c.hash for c in over_ton.cells] == [c.hash for c in over_local.cells]
    assert over_ton.check_trusted("ab" * 32).index == 1
    assert ledger.root_params().log_signed_size == 2


def test_the_owner_signs_the_head_through_its_wallet(chains: tuple[LocalLedger, TonLedger, RecordedChain]) -> None:
    local, ledger, chain = chains
    owner = local.owner
    chain.wallets.add(owner.address)
    assert ledger.sign_registry_head(owner).fees is None  # sent, not yet executed
    sent = _unwrap(chain.sent[-1], owner)
    log = RegistryLog.read(local)
    assert log.head is not None
    body = sent.body.begin_parse()
    assert body.load_uint(32) == 0x52000007 and body.load_uint(64) == 0
    size, root_hash, signature = body.load_uint(64), body.load_bytes(32), body.load_ref().begin_parse().load_bytes(64)
    assert (size, root_hash) == (log.head.size, log.head.root_hash)
    signed = layouts.tree_head_cell(ledger.global_id(), Address(ledger.root), size, root_hash).hash
    VerifyKey(owner.public_key).verify(signed, signature)
    assert sent.body.hash == layouts.sign_head(size, root_hash, signature).hash
