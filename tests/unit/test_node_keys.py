"""A node's key survives restarts, bound to its image and name (fake platform: a secret in the state dir)."""

from __future__ import annotations

from pathlib import Path

from cocoon.config import ClientConfig, WorkerConfig
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
