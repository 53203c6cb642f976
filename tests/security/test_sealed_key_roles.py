"""Issue 15 item 11: one image serving two roles gets the other role's sealed keys.

The attack, as it worked before: the key service derived keys from the verified image and a key name the requester
chose, so an image started as a worker could ask for `proxy/proxy-1/...` and receive the proxy's identity, wallet or
voucher key. Now the service binds the role of the requester's verified certificate into the derivation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.attest.fake import FakeBackend
from cocoon.attest.policy import DEV_POLICY
from cocoon.config import ProxyConfig, WorkerConfig
from cocoon.nodekeys import NodeKeys
from cocoon.ratls.cert import CertVerifier, make_identity
from cocoon.ratls.sealed_file import SealedFileError
from cocoon.ratls.sealing import SealedKeyService, local_platform_secret

IMAGE = "one-image-two-roles"


def test_a_worker_role_request_does_not_get_the_proxy_roles_key(tmp_path: Path) -> None:
    service = SealedKeyService(local_platform_secret(tmp_path), CertVerifier(DEV_POLICY, {"worker", "proxy"}))
    as_proxy, as_worker = (make_identity(role, FakeBackend(IMAGE), hpke_key=X25519PrivateKey.generate())
                           for role in ("proxy", "worker"))
    for name in ("proxy/proxy-1/identity", "proxy-1/identity", "proxy-1/voucher-key", "proxy-1/wallet"):
        assert service.request(as_worker, name) != service.request(as_proxy, name)
    assert service.request(as_proxy, "proxy-1/wallet") == service.request(as_proxy, "proxy-1/wallet")


def test_the_same_image_as_a_worker_named_like_the_proxy_cannot_open_its_key_files(tmp_path: Path) -> None:
    state = str(tmp_path)
    proxy = NodeKeys("proxy", ProxyConfig(name="proxy-1", state_dir=state, image=IMAGE))
    impostor = NodeKeys("worker", WorkerConfig(name="proxy-1", state_dir=state, image=IMAGE))
    proxy.voucher_key()
    assert impostor.sealed_key("voucher-key") != proxy.sealed_key("voucher-key")
    assert impostor.sealed_key("identity") != proxy.sealed_key("identity")
    with pytest.raises(SealedFileError, match=r"holds key 'proxy-1/voucher-key' of a proxy, not .* of a worker"):
        impostor.voucher_key()
    # relabelling the file as a worker's does not help: the header is sealed with the key
    path = tmp_path / "proxy-1.voucher-key"
    path.write_bytes(path.read_bytes().replace(b'"role": "proxy"', b'"role": "worker"', 1))
    with pytest.raises(SealedFileError, match="does not open with the key this node gets"):
        impostor.voucher_key()
    with pytest.raises(SealedFileError, match=r"holds key 'proxy-1/voucher-key' of a worker, not .* of a proxy"):
        proxy.voucher_key()
