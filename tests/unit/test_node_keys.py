"""A node's keys survive restarts, bound to its role, image and name (fake platform: a secret in the state dir):
its identity key, and its wallet and voucher key stored sealed."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import msgspec
import pytest

from cocoon.config import ClientConfig, ProxyConfig, WorkerConfig, dump_config
from cocoon.ledger.wallet import Wallet
from cocoon.nodekeys import KeysUnavailable, NodeKeys, operator_keys
from cocoon.ratls.sealed_file import SealedFileError
from cocoon.runtime import make_node_identity


def key_of(cfg: WorkerConfig | ClientConfig, role: str) -> bytes:
    issuer, _ = make_node_identity(role, cfg, {"proxy"})
    assert issuer.current().public_key == issuer.public_key
    return issuer.public_key


def test_worker_key_survives_a_restart_and_is_bound_to_image_and_name(tmp_path: Path) -> None:
    worker = WorkerConfig(name="worker-1", state_dir=str(tmp_path), image="img-a")
    first = key_of(worker, "worker")
    assert key_of(worker, "worker") == first  # a restart: same state dir, same image, same name
    assert key_of(WorkerConfig(name="worker-2", state_dir=str(tmp_path), image="img-a"), "worker") != first
    assert key_of(WorkerConfig(name="worker-1", state_dir=str(tmp_path), image="img-b"), "worker") != first
    # another platform (another secret) gives another key to the very same image and name
    other = tmp_path / "elsewhere"
    assert key_of(WorkerConfig(name="worker-1", state_dir=str(other), image="img-a"), "worker") != first
    assert (tmp_path / "platform-secret").stat().st_mode & 0o777 == 0o600


def test_a_client_without_attestation_gets_no_sealed_key(tmp_path: Path) -> None:
    client = ClientConfig(name="client-1", state_dir=str(tmp_path))
    assert key_of(client, "client") != key_of(client, "client")
    assert not (tmp_path / "platform-secret").exists()


# ---- stored keys: the wallet and the voucher key (nodekeys.py) ----

def test_a_wallet_is_sealed_to_the_node_and_the_same_after_a_restart(tmp_path: Path) -> None:
    cfg = WorkerConfig(name="worker-1", state_dir=str(tmp_path / "state"), image="img-a")
    wallet = NodeKeys("worker", cfg).wallet()
    assert NodeKeys("worker", cfg).wallet().address == wallet.address  # a restart
    path = tmp_path / "state" / "worker-1.wallet"
    blob = path.read_bytes()
    assert blob.startswith(b'{"sealed": "cocoon/1", "role": "worker", "key": "worker-1/wallet"}\n')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert NodeKeys("worker", cfg).voucher_key().public_key != wallet.public_key  # one key per purpose
    other_image = WorkerConfig(name="worker-1", state_dir=str(tmp_path / "state"), image="img-b")
    with pytest.raises(SealedFileError, match="does not open with the key this node gets"):
        NodeKeys("worker", other_image).wallet()
    path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(SealedFileError, match="does not open"):
        NodeKeys("worker", cfg).wallet()
    path.write_bytes(b"not a key file at all")
    with pytest.raises(SealedFileError, match="is not a sealed key file"):
        NodeKeys("worker", cfg).wallet()


def test_a_plain_key_file_of_an_older_version_is_sealed_in_place_keeping_its_key(tmp_path: Path) -> None:
    seed = bytes(range(32))
    (tmp_path / "proxy-1.voucher-key").write_bytes(seed)  # as older versions wrote it (and with their mode)
    keys = NodeKeys("proxy", ProxyConfig(name="proxy-1", state_dir=str(tmp_path), image="img-p"))
    assert keys.voucher_key().public_key == Wallet(seed).public_key  # same key: its registration still holds
    blob = (tmp_path / "proxy-1.voucher-key").read_bytes()
    assert seed not in blob and is_sealed(blob)
    assert stat.S_IMODE((tmp_path / "proxy-1.voucher-key").stat().st_mode) == 0o600
    assert keys.voucher_key().public_key == Wallet(seed).public_key  # and it opens sealed from then on


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(b'{"sealed": "cocoon/1"')


def test_a_client_without_attestation_keeps_a_wallet_bound_to_this_machine(tmp_path: Path) -> None:
    client = ClientConfig(name="client-1", state_dir=str(tmp_path / "here"))
    keys = NodeKeys("client", client)
    assert keys.identity_key() is None  # its link key is fresh at each start
    wallet = keys.wallet()
    assert NodeKeys("client", client).wallet().address == wallet.address
    assert is_sealed((tmp_path / "here" / "client-1.wallet").read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "here" / "client-1.wallet", elsewhere)
    with pytest.raises(SealedFileError, match="does not open"):
        NodeKeys("client", ClientConfig(name="client-1", state_dir=str(elsewhere))).wallet()


def test_without_a_key_service_a_node_holds_no_stored_key(tmp_path: Path) -> None:
    keys = NodeKeys("worker", WorkerConfig(name="worker-1", state_dir=str(tmp_path), attestation="tdx"))
    assert keys.identity_key() is None
    with pytest.raises(KeysUnavailable, match="attestation 'tdx' has no key service configured"):
        keys.wallet()
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_operator_opens_a_nodes_wallet_only_with_its_config(tmp_path: Path) -> None:
    with pytest.raises(KeysUnavailable, match="no wallet"):
        operator_keys(tmp_path, "worker-1")
    cfg = WorkerConfig(name="worker-1", state_dir=str(tmp_path), image="img-a")
    wallet = NodeKeys("worker", cfg).wallet()
    with pytest.raises(KeysUnavailable, match=r"which its config tells: config file .*worker-1\.toml does not exist"):
        operator_keys(tmp_path, "worker-1")
    (tmp_path / "worker-1.toml").write_text(dump_config(msgspec.structs.replace(cfg, state_dir="/elsewhere")))
    assert operator_keys(tmp_path, "worker-1").wallet().address == wallet.address  # the dir given wins
    (tmp_path / "client-1.wallet").write_bytes(bytes(32))
    with pytest.raises(KeysUnavailable, match="plain key file of an older version: start the node"):
        operator_keys(tmp_path, "client-1")
