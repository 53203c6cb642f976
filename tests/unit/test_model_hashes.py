"""Model hashes (issue 11 item 3): the SHA-256 of the weights a worker serves, hashed once per file, carried in its
claims (measured, or declared for engines it cannot read), and the policy that takes allowed hashes per model from
the root registry."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from cocoon.attest.fake import FakeBackend
from cocoon.attest.policy import PRODUCTION_POLICY, Policy, RolePolicy
from cocoon.attest.registry import RegistryImages
from cocoon.attest.types import AttestationError
from cocoon.config import Prices
from cocoon.inference import weights
from cocoon.inference.fake import FakeEngine
from cocoon.inference.openai_upstream import OpenAIUpstreamEngine
from cocoon.inference.weights import ModelHash, declared_hash, file_sha256
from cocoon.ledger.base import RootParams, engine_entry, model_entry
from cocoon.ledger.local import LocalLedger
from cocoon.ratls.cert import CertVerifier, make_identity

NOW = 1_700_000_000.0
FAKE = frozenset({"fake"})
H1, H2 = hashlib.sha256(b"weights one").hexdigest(), hashlib.sha256(b"weights two").hexdigest()


def _policy(model_hashes: str = "registry") -> Policy:
    return Policy(name="models", production_safe=False, roles={
        "proxy": RolePolicy(kinds=FAKE),
        "worker": RolePolicy(kinds=FAKE, model_hashes=model_hashes),  # type: ignore[arg-type]
    })


def _worker_cert(model_hash: str = "", declared: bool = False) -> bytes:
    return make_identity("worker", FakeBackend("worker-img"), now=NOW, model_hash=bytes.fromhex(model_hash),
                         model_hash_declared=declared).cert_der


def test_a_file_is_hashed_once_and_again_only_when_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    gguf, cache = tmp_path / "model.gguf", tmp_path / "state" / "weights.json"
    gguf.write_bytes(b"GGUF" + os.urandom(4096))
    cache.parent.mkdir()
    reads: list[str] = []
    real_open = open

    def counting_open(path: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if str(path) == str(gguf.resolve()):
            reads.append("read")
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", counting_open)
    expected = hashlib.sha256(gguf.read_bytes()).hexdigest()
    reads.clear()
    assert file_sha256(gguf, cache) == expected and reads == ["read"]
    assert file_sha256(gguf, cache) == expected and reads == ["read"]  # the process remembers it
    weights._memory.clear()  # a restart: the state dir's cache answers
    assert file_sha256(gguf, cache) == expected and reads == ["read"]
    gguf.write_bytes(b"GGUF" + os.urandom(4097))  # other weights at the same path: size and mtime moved
    changed = file_sha256(gguf, cache)
    assert changed == hashlib.sha256(gguf.read_bytes()).hexdigest() != expected and reads == ["read", "read"]


def test_a_corrupt_cache_costs_a_rehash_not_a_wrong_hash(tmp_path: Path) -> None:
    gguf, cache = tmp_path / "m.gguf", tmp_path / "weights.json"
    gguf.write_bytes(b"abc")
    cache.write_text("{not json")
    weights._memory.clear()
    assert file_sha256(gguf, cache) == hashlib.sha256(b"abc").hexdigest()
    st = gguf.stat()
    cache.write_text(json.dumps({str(gguf.resolve()): {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                        "sha256": "zz" * 32}}))
    weights._memory.clear()
    assert file_sha256(gguf, cache) == hashlib.sha256(b"abc").hexdigest()  # a malformed entry is not believed


def test_engines_without_readable_weights_carry_what_their_operator_declares() -> None:
    assert FakeEngine().weights() is None
    assert FakeEngine(model_hash=H1).weights() == ModelHash(H1, declared=True)
    assert OpenAIUpstreamEngine("http://127.0.0.1:9/v1", model_hash=H2).weights() == ModelHash(H2, declared=True)
    for bad in ("ABC", "g" * 64, H1.upper(), 12):
        with pytest.raises(ValueError, match="model_hash"):
            declared_hash(bad)  # type: ignore[arg-type]


def test_the_claims_carry_the_model_hash_and_the_peer_identity_shows_it() -> None:
    peer = CertVerifier(_policy("any"), {"worker"}).verify(_worker_cert(H1, declared=True), NOW)
    assert (peer.model_hash.hex(), peer.model_hash_declared) == (H1, True)
    with pytest.raises(ValueError, match="model_hash has 3 bytes"):
        make_identity("worker", FakeBackend("w"), model_hash=b"abc")


def test_registry_model_hashes_pass_only_for_the_listed_model_and_weights(tmp_path: Path) -> None:
    policy = _policy()
    assert policy.needs_registry
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        verifier = CertVerifier(policy, {"worker"}, registry=RegistryImages(ledger))
        peer = verifier.verify(_worker_cert(H1), NOW)
        with pytest.raises(AttestationError, match=rf"model hash {H1} is not listed in the root registry \(version "
                                                   r"1\) for model\(s\) \['m1'\]"):
            verifier.check_engine_models(peer, ["m1"])
        params = ledger.allow_model("m1", H1)
        assert params.allows_model("m1", H1) and not params.allows_model("m1", H2) and not params.allows_model("m2", H1)
        assert params.model_hashes == {model_entry("m1", H1)} and model_entry("m1", H1) != engine_entry("m1", H1)
        verifier.check_engine_models(peer, ["m1"])
        with pytest.raises(AttestationError, match=r"model\(s\) \['m2'\]"):  # another model under the same weights
            verifier.check_engine_models(peer, ["m1", "m2"])
        other = verifier.verify(_worker_cert(H2), NOW)  # other weights under the listed name: refused
        with pytest.raises(AttestationError, match=f"model hash {H2} is not listed"):
            verifier.check_engine_models(other, ["m1"])
        none = verifier.verify(_worker_cert(), NOW)
        with pytest.raises(AttestationError, match="states no model hash"):
            verifier.check_engine_models(none, ["m1"])
        ledger.allow_model("m1", H1, allowed=False)
        with pytest.raises(AttestationError, match="is not listed"):  # removed: refused at the next re-check
            verifier.check_engine_models(peer, ["m1"])
    finally:
        ledger.close()
    CertVerifier(_policy("any"), {"worker"}).check_engine_models(peer, ["m1", "m2"])
    with pytest.raises(AttestationError, match="no registry is connected"):
        _policy().check_engine_models("worker", "", ["m1"], None, model_hash=bytes.fromhex(H1))


def test_production_takes_model_hashes_from_the_registry_and_ranks_a_peer_that_does_not_as_weaker() -> None:
    assert PRODUCTION_POLICY.rules_for("worker").model_hashes == "registry"
    registry = RootParams(version=1, prices=Prices())
    assert _policy().weakness(_policy("any"), registry) == \
        "for workers it admits model hashes the root registry does not list"
    assert _policy().weakness(_policy(), registry) is None
    assert _policy("any").weakness(_policy(), registry) is None
