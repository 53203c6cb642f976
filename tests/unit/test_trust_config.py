"""Attested configuration (issue 15, item 10): engine origins, the config hash, and the policy decisions that read
them (pinned hashes, remote engines, weaker peers), through certificates as a peer verifies them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from cocoon.attest.engines import engine_site, origin_of, runs_outside
from cocoon.attest.fake import FakeBackend
from cocoon.attest.policy import (
    DEV_POLICY,
    PRODUCTION_POLICY,
    TDX_ANY_POLICY,
    Policy,
    PolicyError,
    RolePolicy,
    load_policy,
)
from cocoon.attest.registry import RegistryImages, check_registered_proxy
from cocoon.attest.trustconfig import TrustConfig, trust_config
from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.config import ClientConfig, Prices, ProxyConfig, WorkerConfig
from cocoon.ledger.base import RootParams, engine_entry
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.wallet import Wallet
from cocoon.ratls.cert import CertVerifier, make_identity

NOW = 1_700_000_000.0
REMOTE = "https://operator-host:443"
FAKE_ONLY = frozenset({"fake"})


def strict(**worker: object) -> Policy:
    """A production-like policy for machines without TDX: fake attestation, but everything else enforced."""
    rules = {"remote_engines": "refuse", **worker}
    return Policy(name="strict", production_safe=False, refuse_weaker_peers=True, roles={
        "proxy": RolePolicy(kinds=FAKE_ONLY),
        "worker": RolePolicy(kinds=FAKE_ONLY, **rules),  # type: ignore[arg-type]
        "client": RolePolicy(kinds=frozenset({"none"})),
    })


def worker_config(policy: Policy, engine: str = "fake", **fields: object) -> TrustConfig:
    cfg = WorkerConfig(**{"name": "w", "engine": engine, **fields})  # type: ignore[arg-type]
    return trust_config("worker", cfg, policy)


def worker_cert(config: TrustConfig | None) -> bytes:
    return make_identity("worker", FakeBackend("worker-img"), now=NOW, config=config).cert_der


def verify(policy: Policy, der: bytes, registry: RegistryImages | None = None) -> PeerIdentity:
    return CertVerifier(policy, {"worker", "proxy"}, registry=registry).verify(der, now=NOW)


# ---- engines -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "site", "outside"), [
    ("embedded", ("embedded", ""), False),
    ("fake", ("fake", ""), False),
    ("openai:http://127.0.0.1:8000/v1", ("openai", "http://127.0.0.1:8000"), False),
    ("openai:http://localhost/v1", ("openai", "http://localhost:80"), False),
    ("openai:http://[::1]:9/v1", ("openai", "http://[::1]:9"), False),
    ("openai:http://[::ffff:127.0.0.1]:9/v1", ("openai", "http://[::ffff:127.0.0.1]:9"), False),
    ("openai:https://user:secret@Operator-Host/v1?x=1", ("openai", REMOTE), True),
    ("openai:http://10.0.0.7:8000/v1", ("openai", "http://10.0.0.7:8000"), True),
    ("openai:http://0.0.0.0:8000/v1", ("openai", "http://0.0.0.0:8000"), True),
    ("openai:http://localhost.evil.example/v1", ("openai", "http://localhost.evil.example:80"), True),
])
def test_engine_site_names_where_prompts_go(spec: str, site: tuple[str, str], outside: bool) -> None:
    assert engine_site(spec) == site
    assert runs_outside(site[1]) is outside


@pytest.mark.parametrize(("spec", "message"), [
    ("vllm", "unknown engine 'vllm'"),
    ("openai:ftp://host/v1", "must be http:// or https:// with a host"),
    ("openai:http:///v1", "must be http:// or https:// with a host"),
    ("openai:http://host:99999/v1", "is malformed"),
])
def test_unusable_engines_are_named(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine_site(spec)


def test_origins_drop_what_does_not_say_where_prompts_go() -> None:
    assert origin_of("HTTPS://Host.Example/v1/") == origin_of("https://k:s@host.example:443/other?q") == \
        "https://host.example:443"


# ---- the config hash ------------------------------------------------------------------------------------------
def test_the_config_hash_is_the_same_in_every_process_and_covers_each_trust_deciding_field() -> None:
    base = worker_config(DEV_POLICY)
    code = ("from cocoon.attest.trustconfig import trust_config; from cocoon.attest.policy import DEV_POLICY; "
            "from cocoon.config import WorkerConfig; "
            "print(trust_config('worker', WorkerConfig(name='w', engine='fake'), DEV_POLICY).digest().hex())")
    for seed in ("1", "2"):  # set iteration order differs with the hash seed; the encoding must not
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin",
                                  "PYTHONPATH": ":".join(sys.path)})
        assert out.stdout.strip() == base.digest().hex()
    # names, ports, limits: not trust-deciding
    assert worker_config(DEV_POLICY, name="other", max_active_requests=9, region="eu").digest() == base.digest()
    changed = [
        worker_config(PRODUCTION_POLICY),
        worker_config(DEV_POLICY, payments=True),
        worker_config(DEV_POLICY, coefficient=1001),
        worker_config(DEV_POLICY, engine="openai:http://127.0.0.1:8000/v1"),
        worker_config(DEV_POLICY, engine="openai:http://127.0.0.1:8001/v1"),
        worker_config(DEV_POLICY, engine="embedded"),
        trust_config("proxy", WorkerConfig(name="w", engine="fake"), DEV_POLICY),
    ]
    assert len({c.digest() for c in [base, *changed]}) == len(changed) + 1
    proxy = trust_config("proxy", ProxyConfig(name="p"), DEV_POLICY)
    assert proxy.prices == Prices() and proxy.engine == "" and proxy.coefficient is None
    assert trust_config("proxy", ProxyConfig(name="p", prices=Prices(price_per_token=21)), DEV_POLICY).digest() \
        != proxy.digest()
    assert trust_config("client", ClientConfig(name="c"), DEV_POLICY).prices is None


def test_a_trust_config_names_every_field_and_cannot_change_once_made() -> None:
    config = worker_config(DEV_POLICY)
    digest = config.digest()
    with pytest.raises(AttributeError):
        config.payments = False  # type: ignore[misc]
    assert config.digest() == digest
    with pytest.raises(TypeError):
        TrustConfig("worker", DEV_POLICY, True)  # type: ignore[misc]  # a flag out of place would change the hash


def test_claims_carry_the_configuration_and_the_peer_identity_shows_it() -> None:
    config = worker_config(DEV_POLICY, engine="openai:https://operator-host/v1")
    identity = make_identity("proxy", FakeBackend("p"), now=NOW, config=config, voucher_key=b"\x07" * 32)
    claims = identity.claims
    assert (claims.config_hash, claims.policy, claims.engine, claims.engine_origin, claims.voucher_key) == (
        config.digest(), DEV_POLICY, "openai", REMOTE, b"\x07" * 32)
    peer = verify(DEV_POLICY, identity.cert_der)
    assert (peer.config_hash, peer.policy_name, peer.engine, peer.engine_origin, peer.voucher_key) == (
        config.digest(), "dev", "openai", REMOTE, b"\x07" * 32)
    bare = verify(DEV_POLICY, worker_cert(None))
    assert (bare.config_hash, bare.policy_name, bare.engine_origin, bare.voucher_key) == (b"", "", "", b"")


# ---- pinned configurations ---------------------------------------------------------------------------------
def test_a_policy_pins_configuration_hashes_per_role() -> None:
    honest = worker_config(strict())
    rogue = worker_config(strict(), engine="openai:http://127.0.0.1:8000/v1")  # in the image, but not pinned
    policy = strict(config_hashes=frozenset({honest.digest().hex()}))
    # One policy file serves every node: its pins stay out of the hash (the weaker-peer check reads them), so a
    # worker running the very policy that pins its hash has that hash.
    assert worker_config(policy).digest() == honest.digest()
    assert verify(policy, worker_cert(worker_config(policy))).role == "worker"
    with pytest.raises(AttestationError, match=f"configuration hash {rogue.digest().hex()} is not allowed for "
                                               "role 'worker' by policy 'strict'"):
        verify(policy, worker_cert(worker_config(policy, engine="openai:http://127.0.0.1:8000/v1")))
    with pytest.raises(AttestationError, match=r"configuration hash \(none claimed\) is not allowed"):
        verify(policy, worker_cert(None))


def test_pinned_hashes_must_be_sha256_hex(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('name = "x"\nproduction_safe = false\n[roles.worker]\nkinds = ["fake"]\nconfig_hashes = ["AB"]\n')
    with pytest.raises(PolicyError, match=r"\[roles.worker\]: config hash 'AB' is not 64 lowercase hex"):
        load_policy(str(path))
    path.write_text('name = "x"\nproduction_safe = false\n[roles.worker]\nkinds = ["fake"]\nremote_engines = "ok"\n')
    with pytest.raises(PolicyError, match="remote_engines"):
        load_policy(str(path))


# ---- remote engines ----------------------------------------------------------------------------------------
def test_refused_remote_engines_are_refused_at_the_handshake_loopback_ones_are_not() -> None:
    policy = strict()
    with pytest.raises(AttestationError, match=f"engine at {REMOTE} runs outside the measured image: refused for "
                                               "role 'worker' by policy 'strict'"):
        verify(policy, worker_cert(worker_config(policy, engine="openai:https://operator-host/v1")))
    local = verify(policy, worker_cert(worker_config(policy, engine="openai:http://127.0.0.1:8000/v1")))
    assert local.engine_origin == "http://127.0.0.1:8000"
    CertVerifier(policy, {"worker"}).check_engine_models(local, ["any-model"])
    # and when the models are announced (a link renewed under a policy that now refuses them)
    with pytest.raises(AttestationError, match=f"engine at {REMOTE} runs outside the measured image: refused"):
        policy.check_engine_models("worker", REMOTE, ["any-model"], None)


def test_registry_listed_remote_engines_pass_only_for_the_listed_models(tmp_path: Path) -> None:
    policy = strict(remote_engines="registry")
    assert policy.needs_registry
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        verifier = CertVerifier(policy, {"worker"}, registry=RegistryImages(ledger))
        peer = verifier.verify(worker_cert(worker_config(policy, engine="openai:https://operator-host/v1")), NOW)
        with pytest.raises(AttestationError, match=rf"engine at {REMOTE} runs outside the measured image, and the "
                                                   r"root registry \(version 1\) does not list it for model\(s\) "
                                                   r"\['m1', 'm2'\]"):
            verifier.check_engine_models(peer, ["m1", "m2"])
        params = ledger.allow_engine("m1", REMOTE)
        assert params.allows_engine("m1", REMOTE) and not params.allows_engine("m1", "https://other:443")
        assert params.model_hashes == {engine_entry("m1", REMOTE)}
        verifier.check_engine_models(peer, ["m1"])
        with pytest.raises(AttestationError, match=r"model\(s\) \['m2'\]"):
            verifier.check_engine_models(peer, ["m1", "m2"])
        assert not ledger.allow_engine("m1", REMOTE, allowed=False).allows_engine("m1", REMOTE)
        with pytest.raises(AttestationError, match=r"\['m1'\]"):
            verifier.check_engine_models(peer, ["m1"])
        in_image = verifier.verify(worker_cert(worker_config(policy)), NOW)
        verifier.check_engine_models(in_image, ["m2"])
    finally:
        ledger.close()
    loose = strict(remote_engines="any")
    CertVerifier(loose, {"worker"}).check_engine_models(peer, ["m1", "m2"])
    unconnected = Policy(name="u", production_safe=False, roles={"worker": RolePolicy(
        kinds=FAKE_ONLY, remote_engines="registry")})
    with pytest.raises(AttestationError, match="but no registry is connected"):
        unconnected.check_engine_models("worker", REMOTE, ["m1"], None)


# ---- weaker peers ------------------------------------------------------------------------------------------
def test_a_peer_running_a_weaker_policy_is_refused_and_an_equal_one_accepted() -> None:
    policy = strict()
    assert verify(policy, worker_cert(worker_config(policy))).policy_name == "strict"
    with pytest.raises(AttestationError, match="the worker's policy 'dev' is weaker than 'strict': it does not "
                                               "refuse weaker peers"):
        verify(policy, worker_cert(worker_config(DEV_POLICY)))
    with pytest.raises(AttestationError, match="the peer states no policy of its own"):
        verify(policy, worker_cert(None))
    proxy = make_identity("proxy", FakeBackend("p"), now=NOW,
                          config=trust_config("proxy", ProxyConfig(name="p"), DEV_POLICY))
    with pytest.raises(AttestationError, match="the proxy's policy 'dev' is weaker"):
        verify(policy, proxy.cert_der)
    # clients handle no one's prompts but their own: their policy is theirs to choose
    client = make_identity("client", FakeBackend("c"), now=NOW,
                           config=trust_config("client", ClientConfig(name="c"), DEV_POLICY))
    lenient = Policy(name="l", production_safe=False, refuse_weaker_peers=True,
                     roles={"client": RolePolicy(kinds=FAKE_ONLY)})
    assert CertVerifier(lenient, {"client"}).verify(client.cert_der, NOW).policy_name == "dev"


def _rules(**fields: object) -> RolePolicy:
    return RolePolicy(**{"kinds": FAKE_ONLY, **fields})  # type: ignore[arg-type]


def _with(worker: RolePolicy, *, refuse: bool = True, name: str = "peer") -> Policy:
    return Policy(name=name, production_safe=False, refuse_weaker_peers=refuse,
                  roles={"worker": worker, "proxy": _rules()})


A, B, C = ("a" * 64, "b" * 64, "c" * 64)
M1, M2 = ("1" * 96, "2" * 96)


@pytest.mark.parametrize(("mine", "theirs", "weaker"), [
    (_rules(), _rules(), None),
    (_rules(), _rules(kinds=frozenset({"fake", "tdx"})), "admits kinds ['tdx']"),
    (_rules(kinds=frozenset({"fake", "tdx"})), _rules(), None),
    (_rules(image_hashes=frozenset({A, B})), _rules(image_hashes=frozenset({A})), None),
    (_rules(image_hashes=frozenset({A})), _rules(image_hashes=frozenset({A, C})), "admits images"),
    (_rules(image_hashes=frozenset({A})), _rules(), "admits images"),
    (_rules(image_hashes="registry"), _rules(image_hashes="registry"), None),
    (_rules(image_hashes="registry"), _rules(image_hashes=frozenset({A})), None),  # A is listed
    (_rules(image_hashes="registry"), _rules(image_hashes=frozenset({C})), "admits images"),
    (_rules(image_hashes=frozenset({A, B})), _rules(image_hashes="registry"), None),
    (_rules(image_hashes=frozenset({B})), _rules(image_hashes="registry"), "admits images"),
    (_rules(mrtds=frozenset({M1})), _rules(), "admits MRTDs"),
    (_rules(mrtds=frozenset({M1})), _rules(mrtds=frozenset({M1, M2})), "admits MRTDs"),
    (_rules(mrtds=frozenset({M1, M2})), _rules(mrtds=frozenset({M2})), None),
    (_rules(mrtds=frozenset({M1})), _rules(mrtds=frozenset({M1})), None),
    (_rules(rtmrs={"rtmr1": frozenset({M1})}), _rules(), "admits RTMR1 values"),
    (_rules(rtmrs={"rtmr1": frozenset({M1})}), _rules(rtmrs={"rtmr1": frozenset({M1, M2})}), "admits RTMR1"),
    (_rules(rtmrs={"rtmr1": frozenset({M1})}), _rules(rtmrs={"rtmr1": frozenset({M1})}), None),
    (_rules(kinds=frozenset({"tdx"}), tcb_statuses=frozenset({"UpToDate"})), _rules(kinds=frozenset({"tdx"})),
     "admits TCB statuses ['SWHardeningNeeded']"),
    (_rules(tcb_statuses=frozenset({"UpToDate"})), _rules(), None),  # no tdx admitted: no TCB to judge
    (_rules(config_hashes=frozenset({A})), _rules(), "admits configurations"),
    (_rules(config_hashes=frozenset({A})), _rules(config_hashes=frozenset({A, B})), "admits configurations"),
    (_rules(config_hashes=frozenset({A, B})), _rules(config_hashes=frozenset({B})), None),
    (_rules(remote_engines="registry"), _rules(remote_engines="any"), "admits remote engines 'any'"),
    (_rules(remote_engines="refuse"), _rules(remote_engines="registry"), "admits remote engines 'registry'"),
    (_rules(remote_engines="registry"), _rules(remote_engines="refuse"), None),
])
def test_weakness_compares_every_admission_rule(mine: RolePolicy, theirs: RolePolicy, weaker: str | None) -> None:
    registry = RootParams(version=5, prices=Prices(), worker_image_hashes=frozenset({A, B}))
    reason = _with(mine, name="mine").weakness(_with(theirs), registry)
    if weaker is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(f"for workers it {weaker}")


def test_weakness_ignores_roles_either_side_has_no_rules_for_and_needs_a_registry_to_compare_lists() -> None:
    mine = Policy(name="mine", production_safe=False, roles={"proxy": _rules(image_hashes="registry")})
    only_workers = Policy(name="peer", production_safe=False, roles={"worker": _rules(kinds=frozenset({"tdx"}))})
    assert mine.weakness(only_workers, None) is None  # we never meet workers; it admits no proxies
    listed = Policy(name="peer", production_safe=False, roles={"proxy": _rules(image_hashes=frozenset({A}))})
    assert mine.weakness(listed, None) == "for proxies it admits images this policy refuses"  # cannot tell
    assert mine.weakness(listed, RootParams(version=1, prices=Prices(), proxy_image_hashes=frozenset({A}))) is None


def test_the_built_in_policies_rank_as_expected() -> None:
    assert PRODUCTION_POLICY.weakness(PRODUCTION_POLICY, None) is None
    assert PRODUCTION_POLICY.weakness(DEV_POLICY, None) == "it does not refuse weaker peers"
    assert PRODUCTION_POLICY.weakness(msgspec.structs.replace(TDX_ANY_POLICY, refuse_weaker_peers=True), None) \
        == "for proxies it admits images this policy refuses"
    assert DEV_POLICY.weakness(PRODUCTION_POLICY, None) is None  # dev refuses no one for being weaker, anyway


def test_production_safe_policies_refuse_weaker_peers_and_restrict_remote_engines() -> None:
    tdx = frozenset({"tdx"})
    worker = RolePolicy(kinds=tdx, image_hashes="registry", remote_engines="registry")
    Policy(name="ok", production_safe=True, refuse_weaker_peers=True, roles={"worker": worker})
    with pytest.raises(ValueError, match="must refuse weaker peers"):
        Policy(name="x", production_safe=True, roles={"worker": worker})
    with pytest.raises(ValueError, match="must restrict the remote engines of workers"):
        Policy(name="x", production_safe=True, refuse_weaker_peers=True,
               roles={"worker": RolePolicy(kinds=tdx, image_hashes="registry")})
    assert PRODUCTION_POLICY.rules_for("worker").remote_engines == "registry" and PRODUCTION_POLICY.needs_registry


# ---- the proxy registered on chain -------------------------------------------------------------------------
def test_a_proxy_is_accepted_only_with_the_voucher_key_registered_at_its_endpoint(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        operator, genuine, impostor = (Wallet(os.urandom(32)) for _ in range(3))
        ledger.fund(operator, 10**12)
        ledger.register_proxy(operator.address, genuine.public_key, "127.0.0.1:1000")
        ledger.register_proxy(operator.address, impostor.public_key, "127.0.0.1:2000")

        def peer(voucher_key: bytes) -> PeerIdentity:
            identity = make_identity("proxy", FakeBackend("p"), now=NOW, voucher_key=voucher_key)
            return CertVerifier(DEV_POLICY, {"proxy"}).verify(identity.cert_der, NOW)

        check_registered_proxy(ledger, "127.0.0.1:1000", peer(genuine.public_key))
        with pytest.raises(AttestationError, match=f"the proxy at 127.0.0.1:1000 claims voucher key "
                                                   f"{impostor.public_key.hex()[:16]}…, but root .* registers "
                                                   f"{genuine.public_key.hex()[:16]}… at that endpoint"):
            check_registered_proxy(ledger, "127.0.0.1:1000", peer(impostor.public_key))
        with pytest.raises(AttestationError, match="claims voucher key none"):
            check_registered_proxy(ledger, "127.0.0.1:1000", peer(b""))
        with pytest.raises(AttestationError, match=r"no proxy is registered at 127\.0\.0\.1:3000"):
            check_registered_proxy(ledger, "127.0.0.1:3000", peer(genuine.public_key))
    finally:
        ledger.close()
