"""Sealed keys: bound to the verified image hash, delivered only to attested requesters, HPKE-encrypted."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.attest.fake import FakeBackend, fake_image_hash
from cocoon.attest.none import NoneBackend
from cocoon.attest.policy import DEV_POLICY, with_image_hashes
from cocoon.attest.types import AttestationError
from cocoon.ratls.cert import CertVerifier, Identity, make_identity
from cocoon.ratls.sealing import SealedKeyService, local_platform_secret, open_sealed_key


def requester(image: str, role: str = "worker") -> Identity:
    return make_identity(role, FakeBackend(image), hpke_key=X25519PrivateKey.generate())


@pytest.fixture
def service(tmp_path: Path) -> SealedKeyService:
    return SealedKeyService(local_platform_secret(tmp_path), CertVerifier(DEV_POLICY, {"worker", "proxy"}))


def test_same_image_gets_the_same_key_across_restarts(tmp_path: Path, service: SealedKeyService) -> None:
    first = service.request(requester("img-a"), "wallet")
    assert len(first) == 32
    # A restarted node: a new certificate and new keys, the same image and platform secret.
    restarted = SealedKeyService(local_platform_secret(tmp_path), CertVerifier(DEV_POLICY, {"worker"}))
    assert restarted.request(requester("img-a"), "wallet") == first


def test_another_image_or_name_or_platform_gets_another_key(tmp_path: Path, service: SealedKeyService) -> None:
    wallet_a = service.request(requester("img-a"), "wallet")
    assert service.request(requester("img-b"), "wallet") != wallet_a
    assert service.request(requester("img-a"), "voucher-signing") != wallet_a
    other_platform = SealedKeyService(local_platform_secret(tmp_path / "other"), CertVerifier(DEV_POLICY, {"worker"}))
    assert other_platform.request(requester("img-a"), "wallet") != wallet_a


def test_platform_secret_file_is_private_and_stable(tmp_path: Path) -> None:
    secret = local_platform_secret(tmp_path)
    path = tmp_path / "platform-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) == 32 and local_platform_secret(tmp_path) == secret
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="has 5 bytes, expected 32"):
        local_platform_secret(tmp_path)


def test_only_the_requester_opens_the_envelope(service: SealedKeyService) -> None:
    alice, mallory = requester("img-a"), requester("img-a")
    envelope = service.seal_for(alice.cert_der, "wallet")
    assert open_sealed_key(envelope, alice, "wallet") == service.request(alice, "wallet")
    with pytest.raises(AttestationError, match="does not open with this identity's HPKE key"):
        open_sealed_key(envelope, mallory, "wallet")  # same image, other process: not its envelope
    with pytest.raises(AttestationError, match="does not open"):
        open_sealed_key(envelope, alice, "voucher-signing")  # the name is bound too
    tampered = bytearray(envelope)
    tampered[-1] ^= 0x01
    with pytest.raises(AttestationError, match="does not open"):
        open_sealed_key(bytes(tampered), alice, "wallet")


def test_requesters_that_fail_attestation_get_nothing(tmp_path: Path) -> None:
    only_a = SealedKeyService(local_platform_secret(tmp_path),
                              CertVerifier(with_image_hashes(DEV_POLICY, "worker", [fake_image_hash("img-a")]),
                                           {"worker", "client"}))
    with pytest.raises(AttestationError, match=f"image hash {fake_image_hash('img-b').hex()} is not allowed"):
        only_a.seal_for(requester("img-b").cert_der, "wallet")
    unattested = make_identity("client", NoneBackend(), hpke_key=X25519PrivateKey.generate())
    with pytest.raises(AttestationError, match="kind 'none' has no image hash"):
        only_a.seal_for(unattested.cert_der, "wallet")
    without_hpke = make_identity("worker", FakeBackend("img-a"))
    with pytest.raises(AttestationError, match="carry no HPKE public key"):
        only_a.seal_for(without_hpke.cert_der, "wallet")
    with pytest.raises(ValueError, match="no HPKE key"):
        open_sealed_key(b"\0" * 80, without_hpke, "wallet")


@pytest.mark.parametrize("name", ["", "x" * 256])
def test_key_names_are_bounded(service: SealedKeyService, name: str) -> None:
    with pytest.raises(ValueError, match="must be 1 to 255 bytes"):
        service.request(requester("img-a"), name)
