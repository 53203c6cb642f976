"""Attestation backends (fake, none, tdx placeholder) and policies."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cocoon.attest.backends import get_backend, verifier_for
from cocoon.attest.fake import FAKE_QUOTE_LEN, FakeBackend, fake_image_hash, fake_measurements
from cocoon.attest.none import NoneBackend
from cocoon.attest.policy import (
    DEV_POLICY,
    PRODUCTION_POLICY,
    TDX_ANY_POLICY,
    Policy,
    PolicyError,
    RolePolicy,
    load_policy,
    with_image_hashes,
)
from cocoon.attest.tdx import TdxBackend
from cocoon.attest.tsm import TsmQuoter
from cocoon.attest.types import DEFAULT_TCB_STATUSES, AttestationError, VerifiedQuote
from tests.tdxdata import SAMPLE_QUOTE

NOW = 1_700_000_000.0
REPORT_DATA = hashlib.sha512(b"some claims").digest()


def test_fake_quote_round_trip() -> None:
    quote = FakeBackend("img-a").quote(REPORT_DATA)
    assert len(quote) == FAKE_QUOTE_LEN
    verified = verifier_for("fake").verify(quote, NOW)
    assert verified.kind == "fake"
    assert verified.report_data == REPORT_DATA
    assert verified.measurements == fake_measurements("img-a")
    assert verified.image_hash == fake_image_hash("img-a")


def test_fake_measurements_follow_the_documented_derivation() -> None:
    m = fake_measurements("img-a")
    assert m.mrtd == hashlib.sha384(b"cocoon-fake-mrtd:img-a").digest()
    assert m.rtmr[2] == hashlib.sha384(b"cocoon-fake-rtmr2:img-a").digest()
    assert m.mrconfigid == m.mrowner == m.mrownerconfig == bytes(48)


def test_fake_quote_rejects_wrong_report_data_length() -> None:
    with pytest.raises(ValueError, match="63 bytes, expected 64"):
        FakeBackend("img-a").quote(bytes(63))


@pytest.mark.parametrize("position", [0, 10, 200, FAKE_QUOTE_LEN - 65, FAKE_QUOTE_LEN - 1])
def test_fake_quote_with_a_tampered_byte_is_refused(position: int) -> None:
    quote = bytearray(FakeBackend("img-a").quote(REPORT_DATA))
    quote[position] ^= 0x01
    with pytest.raises(AttestationError, match="signature does not verify"):
        verifier_for("fake").verify(bytes(quote), NOW)


def test_fake_quote_of_wrong_length_is_refused() -> None:
    quote = FakeBackend("img-a").quote(REPORT_DATA)
    with pytest.raises(AttestationError, match=f"has {FAKE_QUOTE_LEN + 1} bytes, expected {FAKE_QUOTE_LEN}"):
        verifier_for("fake").verify(quote + b"\0", NOW)


def test_image_hash_is_stable_and_differs_per_image() -> None:
    assert fake_image_hash("img-a") == fake_image_hash("img-a")
    assert len(fake_image_hash("img-a")) == 32
    assert fake_image_hash("img-a") != fake_image_hash("img-b")
    assert get_backend("fake", image="img-b").quote(REPORT_DATA) == FakeBackend("img-b").quote(REPORT_DATA)


def test_none_backend() -> None:
    backend = get_backend("none")
    assert isinstance(backend, NoneBackend)
    assert backend.kind == "none"
    assert backend.quote(REPORT_DATA) == b""
    verified = verifier_for("none").verify(b"", NOW)
    assert (verified.kind, verified.report_data, verified.image_hash) == ("none", b"", None)
    with pytest.raises(AttestationError, match="must carry an empty quote, got 3 bytes"):
        verifier_for("none").verify(b"abc", NOW)


def test_tdx_backend_and_unknown_kinds(tmp_path: Path) -> None:
    backend = get_backend("tdx")
    assert isinstance(backend, TdxBackend)
    assert backend.kind == "tdx"
    missing = TdxBackend(backend.verifier, TsmQuoter(tmp_path / "no-tsm"))
    with pytest.raises(AttestationError, match="cannot produce a TDX quote: the Linux TSM interface"):
        missing.quote(REPORT_DATA)
    # Without collateral configured, a TDX quote is refused with a reason naming the missing setting.
    with pytest.raises(AttestationError, match="no PCCS is configured"):
        verifier_for("tdx").verify(SAMPLE_QUOTE.read_bytes(), NOW)
    with pytest.raises(AttestationError, match="unknown attestation kind 'sgx'"):
        get_backend("sgx")
    with pytest.raises(AttestationError, match="unknown attestation kind 'sgx'"):
        verifier_for("sgx")


def test_dev_policy() -> None:
    policy = load_policy("dev")
    assert policy is DEV_POLICY
    assert not policy.production_safe
    assert policy.rules_for("worker").kinds == {"fake", "tdx"}
    assert policy.rules_for("proxy").kinds == {"fake", "tdx"}
    assert policy.rules_for("client").kinds == {"none", "fake", "tdx"}
    assert policy.rules_for("worker").image_hashes is None


def test_builtin_tdx_policies() -> None:
    tdx_any, production = load_policy("tdx-any"), load_policy("production")
    assert (tdx_any, production) == (TDX_ANY_POLICY, PRODUCTION_POLICY)
    for policy in (tdx_any, production):
        assert policy.rules_for("worker").kinds == policy.rules_for("proxy").kinds == {"tdx"}
        assert policy.rules_for("worker").tcb_statuses == DEFAULT_TCB_STATUSES
        assert policy.rules_for("client").kinds == {"none", "tdx"}
    assert tdx_any.rules_for("worker").image_hashes is None and not tdx_any.production_safe
    assert not tdx_any.needs_registry
    assert production.rules_for("worker").image_hashes == production.rules_for("proxy").image_hashes == "registry"
    assert production.production_safe and production.needs_registry


def test_registry_policy_without_a_registry_refuses_instead_of_accepting() -> None:
    verified = VerifiedQuote(kind="tdx", report_data=bytes(64), measurements=fake_measurements("img-a"),
                             tcb_status="UpToDate")
    with pytest.raises(AttestationError, match="from the root registry, but no registry is connected"):
        PRODUCTION_POLICY.check_quote("worker", verified)


def test_production_safe_policy_must_restrict_tee_images() -> None:
    with pytest.raises(ValueError, match="must restrict the image hashes of role 'worker'"):
        Policy(name="x", roles={"worker": RolePolicy(kinds=frozenset({"tdx"}))}, production_safe=True)
    with pytest.raises(ValueError, match="cannot allow kinds \\['fake', 'none'\\] for role 'client'"):
        Policy(name="x", roles={"client": RolePolicy(kinds=frozenset({"none", "fake"}))}, production_safe=True)
    with pytest.raises(ValueError, match="role 'client' cannot take image hashes from the registry"):
        Policy(name="x", roles={"client": RolePolicy(kinds=frozenset({"tdx"}), image_hashes="registry")},
               production_safe=False)


def test_certificate_ages_must_be_positive_and_skews_not_negative() -> None:
    tdx = frozenset({"tdx"})
    for bad in ({"max_cert_age_s": 0}, {"max_cert_age_s": -1}, {"max_skew_s": -1}, {"max_skew_s": -0.5}):
        with pytest.raises(ValueError, match="max_cert_age_s must be positive and max_skew_s not negative"):
            RolePolicy(kinds=tdx, **bad)  # type: ignore[arg-type]
    rules = RolePolicy(kinds=tdx, max_cert_age_s=0.5, max_skew_s=0)
    assert (rules.max_cert_age_s, rules.max_skew_s) == (0.5, 0)


def test_policies_cannot_be_changed_in_place() -> None:
    """The built-in policies are shared by every verifier in a process: one changed in place would change them
    all."""
    with pytest.raises(AttributeError):
        DEV_POLICY.production_safe = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        DEV_POLICY.rules_for("worker").image_hashes = None  # type: ignore[misc]
    assert DEV_POLICY == load_policy("dev") and not DEV_POLICY.production_safe


def test_policy_refuses_an_absent_role(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('name = "only-workers"\nproduction_safe = false\n[roles.worker]\nkinds = ["fake"]\n')
    with pytest.raises(AttestationError, match="policy 'only-workers' refuses peers of role 'proxy'"):
        load_policy(str(path)).rules_for("proxy")


def test_policy_loads_from_toml(tmp_path: Path) -> None:
    good = "ab" * 32
    path = tmp_path / "prod.toml"
    path.write_text(
        f"""
name = "prod"
production_safe = true
refuse_weaker_peers = true

[roles.worker]
kinds = ["tdx"]
image_hashes = ["{good}"]
max_cert_age_s = 3600
config_hashes = ["{"12" * 32}"]
remote_engines = "refuse"

[roles.client]
kinds = ["none"]

[roles.proxy]
kinds = ["tdx"]
image_hashes = "registry"
mrtds = ["{"cd" * 48}"]
tcb_statuses = ["UpToDate", "OutOfDate"]

[roles.proxy.rtmrs]
rtmr1 = ["{"ef" * 48}"]
"""
    )
    policy = load_policy(str(path))
    assert policy.name == "prod"
    assert policy.production_safe
    assert policy.rules_for("worker") == RolePolicy(
        kinds=frozenset({"tdx"}), image_hashes=frozenset({good}), max_cert_age_s=3600.0,
        config_hashes=frozenset({"12" * 32}), remote_engines="refuse",
    )
    assert policy.refuse_weaker_peers
    assert policy.rules_for("client").max_skew_s == 300
    assert policy.rules_for("proxy") == RolePolicy(
        kinds=frozenset({"tdx"}), image_hashes="registry", mrtds=frozenset({"cd" * 48}),
        rtmrs={"rtmr1": frozenset({"ef" * 48})}, tcb_statuses=frozenset({"UpToDate", "OutOfDate"}),
    )
    assert policy.needs_registry


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'name = "x"\nproduction_safe = false\n[roles.worker]\nkinds = ["sgx"]\n',
            "unknown attestation kinds",
        ),
        (
            'name = "x"\nproduction_safe = false\n[roles.worker]\nkinds = ["tdx"]\nimage_hashes = ["ABCD"]\n',
            "'ABCD' is not 64 lowercase hex",
        ),
        (
            'name = "x"\nproduction_safe = false\n[roles.admin]\nkinds = ["tdx"]\n',
            "unknown roles \\['admin'\\]",
        ),
        ('name = "x"\nproduction_safe = true\n[roles.worker]\nkinds = ["fake"]\n', "production_safe policy"),
        ('name = "x"\nproduction_safe = true\n[roles.proxy]\nkinds = ["none"]\n', "production_safe policy"),
        ('name = "x"\n[roles.worker]\nkinds = ["tdx"]\n', "missing required field `production_safe`"),
        ('name = "x"\nproduction_safe = false\nextra = 1\n', "unknown field `extra`"),
        (  # a misspelled key in a role table would otherwise leave that role's images unrestricted
            f'name = "x"\nproduction_safe = false\n[roles.worker]\nkinds = ["tdx"]\nimage_hash = ["{"ab" * 32}"]\n',
            r"\[roles.worker\]: Object contains unknown field `image_hash`",
        ),
        (
            'name = "x"\nproduction_safe = false\n[roles.worker]\nkinds = "tdx"\n',
            r"\[roles.worker\]: Expected `array`, got `str`",
        ),
        ('name = = "x"\n', "is not valid TOML"),
        (
            'name = "x"\nproduction_safe = false\n[roles.worker]\nkinds = ["tdx"]\ntcb_statuses = ["Revoked"]\n',
            "must be a non-empty subset of",
        ),
        (
            'name = "x"\nproduction_safe = false\n[roles.worker]\nkinds = ["tdx"]\nmrtds = ["abcd"]\n',
            "'abcd' is not 96 lowercase hex",
        ),
        (
            'name = "x"\nproduction_safe = false\n[roles.worker]\nkinds = ["tdx"]\n[roles.worker.rtmrs]\n'
            f'rtmr4 = ["{"00" * 48}"]\n',
            "unknown registers \\['rtmr4'\\]",
        ),
        (
            'name = "x"\nproduction_safe = false\n[roles.worker]\nkinds = ["tdx"]\nimage_hashes = "ledger"\n',
            "Invalid enum value 'ledger'",
        ),
    ],
)
def test_policy_file_errors_are_precise(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(PolicyError, match=message) as info:
        load_policy(str(path))
    assert str(path) in str(info.value)


def test_missing_policy_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read policy file .*nope\.toml"):
        load_policy(str(tmp_path / "nope.toml"))


def test_with_image_hashes_restricts_one_role() -> None:
    policy = with_image_hashes(DEV_POLICY, "worker", [fake_image_hash("img-a"), "cd" * 32])
    assert policy.rules_for("worker").image_hashes == {fake_image_hash("img-a").hex(), "cd" * 32}
    assert policy.rules_for("worker").kinds == DEV_POLICY.rules_for("worker").kinds
    assert policy.rules_for("proxy").image_hashes is None
    assert DEV_POLICY.rules_for("worker").image_hashes is None
    with pytest.raises(ValueError, match="not 64 lowercase hex"):
        with_image_hashes(DEV_POLICY, "worker", [b"short"])
    only_workers = with_image_hashes(policy, "worker", [])
    with pytest.raises(PolicyError, match="no rules for role 'admin'"):
        with_image_hashes(only_workers, "admin", [])
