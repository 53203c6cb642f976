"""Nodes trust the registry as far as its transparency log proves it (attest/registry.py over ledger/translog.py): a
hash only once its entry is included under the owner's signed head, a new head only when it extends the last one
seen (kept across restarts), a proxy registration only when the log includes it; a log that does not verify leaves
nothing trusted."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from cocoon.attest.fake import FakeBackend
from cocoon.attest.policy import DEV_POLICY
from cocoon.attest.registry import RegistryImages, registered_proxy_check
from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.ledger import layouts
from cocoon.ledger.contracts import HashKind
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.onchain import Message
from cocoon.ledger.translog import HeadStore
from cocoon.ledger.wallet import Wallet
from cocoon.ratls.cert import CertVerifier, make_identity

NOW = 1_700_000_000.0
IMAGE_A, IMAGE_B = "ab" * 32, "cd" * 32


def unsigned_change(ledger: LocalLedger, image: str) -> None:
    """A registry change the owner did not (yet) vouch for: the contract logs it, but no signed head covers it."""
    ledger.submit(ledger.owner, Message("set_hash", ledger.root, 10**8,
                                        layouts.set_hash(HashKind.WORKER_IMAGE, bytes.fromhex(image), True)))


def forge_head(store: HeadStore, ledger: LocalLedger, size: int) -> None:
    """A head of the same root, signed by its log key, for a log that differs from the one on chain (a fork)."""
    head = store.load()
    assert head is not None
    forked = msgspec.structs.replace(head, size=size, root_hash=b"\x01" * 32)
    forked = msgspec.structs.replace(forked, signature=ledger.owner.sign(forked.signed_hash()))
    store.path.write_bytes(msgspec.json.encode(forked))


def test_a_hash_is_trusted_once_its_entry_is_under_a_signed_head(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    images = RegistryImages(ledger, HeadStore(tmp_path / "head.json"))
    ledger.set_allowed_images("worker", [IMAGE_A])
    assert images.current().worker_image_hashes == {IMAGE_A}
    unsigned_change(ledger, IMAGE_B)
    assert ledger.refresh().worker_image_hashes == {IMAGE_A, IMAGE_B}  # the registry holds it...
    assert images.current().worker_image_hashes == {IMAGE_A}  # ...its log does not prove it yet
    ledger.sign_registry_head(ledger.owner)
    assert images.current().worker_image_hashes == {IMAGE_A, IMAGE_B}
    saved = HeadStore(tmp_path / "head.json").load()
    assert saved is not None and saved.size == ledger.refresh().log_signed_size == 3
    ledger.close()


def test_a_forked_log_leaves_nothing_trusted(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    ledger.set_allowed_images("worker", [IMAGE_A])
    store = HeadStore(tmp_path / "head.json")
    images = RegistryImages(ledger, store)
    assert images.current().worker_image_hashes == {IMAGE_A}
    forge_head(store, ledger, size=2)  # what this node saw before differs from the chain's log at that size
    ledger.set_allowed_images("worker", [IMAGE_A, IMAGE_B])
    trusted = images.current()
    assert trusted.worker_image_hashes == trusted.proxy_image_hashes == trusted.model_hashes == frozenset()
    # and a restarted node, reading the same saved head, trusts nothing either
    assert RegistryImages(ledger, store).current().worker_image_hashes == frozenset()
    ledger.close()


def test_a_proxy_registration_must_be_in_the_log(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    operator, voucher_key = Wallet(os.urandom(32)), Wallet(os.urandom(32))
    ledger.fund(operator, 10**12)
    ledger.register_proxy(operator.address, voucher_key.public_key, "127.0.0.1:1000")
    identity = make_identity("proxy", FakeBackend("p"), now=NOW, voucher_key=voucher_key.public_key)
    peer: PeerIdentity = CertVerifier(DEV_POLICY, {"proxy"}).verify(identity.cert_der, NOW)
    store = tmp_path / "client.registry-head.json"
    check = registered_proxy_check(ledger, store)
    check("127.0.0.1:1000", peer)
    assert HeadStore(store).load() is not None
    forge_head(HeadStore(store), ledger, size=1)
    with pytest.raises(AttestationError, match=r"transparency log does not verify: .*does not extend the head seen"):
        registered_proxy_check(ledger, store)("127.0.0.1:1000", peer)
    ledger.close()
