"""The root registry's image allow-lists on the local ledger, and the provider that attestation reads."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cocoon.attest.fake import FakeBackend, fake_image_hash
from cocoon.attest.policy import DEV_POLICY, PRODUCTION_POLICY, Policy, RolePolicy
from cocoon.attest.registry import RegistryImages
from cocoon.attest.types import AttestationError
from cocoon.config import Prices
from cocoon.ledger.local import LocalLedger
from cocoon.ratls.cert import CertVerifier, make_identity

NOW = 1_700_000_000.0
IMG_A, IMG_B = fake_image_hash("img-a"), fake_image_hash("img-b")


def test_allowed_images_start_empty_and_every_change_bumps_the_version(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    start = ledger.root_params()
    assert start.allowed_images("worker") == start.allowed_images("proxy") == frozenset()
    after = ledger.set_allowed_images("worker", [IMG_A, IMG_B.hex()])
    assert after.version == start.version + 2  # the root contract counts one change per hash
    assert after.allowed_images("worker") == {IMG_A.hex(), IMG_B.hex()}
    assert after.allowed_images("proxy") == frozenset()
    assert after.allowed_images("client") == frozenset()
    assert ledger.set_allowed_images("proxy", [IMG_B]).version == start.version + 3
    repriced = ledger.set_prices(Prices(price_per_token=7, worker_fee_per_token=5))
    assert repriced.allowed_images("worker") == {IMG_A.hex(), IMG_B.hex()}
    ledger.close()
    reopened = LocalLedger(tmp_path / "ledger.sqlite")
    params = reopened.root_params()
    assert params.version == start.version + 4
    assert params.allowed_images("proxy") == {IMG_B.hex()}
    assert params.prices.price_per_token == 7
    reopened.close()


def test_invalid_image_changes_are_refused(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    with pytest.raises(ValueError, match="not 64 lowercase hex"):
        ledger.set_allowed_images("worker", ["AB" * 32])
    with pytest.raises(ValueError, match="not 'client'"):
        ledger.set_allowed_images("client", [IMG_A])
    assert ledger.root_params().version == 1
    ledger.close()


def test_refresh_sees_changes_made_by_another_process(tmp_path: Path) -> None:
    node, owner = LocalLedger(tmp_path / "l.sqlite"), LocalLedger(tmp_path / "l.sqlite")
    owner.set_allowed_images("worker", [IMG_A])
    assert node.root_params().allowed_images("worker") == frozenset()  # cached view
    assert node.refresh().allowed_images("worker") == {IMG_A.hex()}
    assert node.root_params().version == owner.root_params().version
    node.close()
    owner.close()


def test_provider_reports_registry_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = LocalLedger(tmp_path / "l.sqlite")
    images = RegistryImages(ledger)
    before = images.current()
    with caplog.at_level(logging.INFO, logger="cocoon.attest.registry"):
        ledger.set_allowed_images("proxy", [IMG_A])
        assert images.current().version == before.version + 1
    assert "root registry changed" in caplog.text
    ledger.close()


def test_verifier_follows_the_registry_without_waiting_for_its_cache(tmp_path: Path) -> None:
    policy = Policy(name="registry-workers",
                    roles={"worker": RolePolicy(kinds=frozenset({"fake"}), image_hashes="registry")},
                    production_safe=False)
    ledger = LocalLedger(tmp_path / "l.sqlite")
    verifier = CertVerifier(policy, ["worker"], registry=RegistryImages(ledger))
    der = make_identity("worker", FakeBackend("img-a"), now=NOW).cert_der
    with pytest.raises(AttestationError, match=f"image hash {IMG_A.hex()} is not allowed .*not in the root "
                                               r"registry \(version 1\)"):
        verifier.verify(der, now=NOW)
    ledger.set_allowed_images("worker", [IMG_A])
    assert verifier.verify(der, now=NOW).image_hash == IMG_A
    assert verifier.verify(der, now=NOW + 1).image_hash == IMG_A  # cached
    ledger.set_allowed_images("worker", [IMG_B])
    with pytest.raises(AttestationError, match=r"not in the root registry \(version 4\)"):  # -A +B
        verifier.verify(der, now=NOW + 2)
    ledger.close()


def test_registry_policy_needs_a_registry() -> None:
    with pytest.raises(ValueError, match="policy 'production' takes image hashes from the root registry"):
        CertVerifier(PRODUCTION_POLICY, ["worker"])
    CertVerifier(DEV_POLICY, ["worker"])  # a fixed policy needs none
