"""TDX: parsing real quotes, DCAP verification against real collateral, the collateral cache, TSM errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from cocoon.attest.collateral import Collateral, CollateralCache, FixedCollateral
from cocoon.attest.fake import fake_measurements
from cocoon.attest.policy import TDX_ANY_POLICY, Policy, RolePolicy
from cocoon.attest.tdx import TdxVerifier, parse_tdx_quote
from cocoon.attest.tsm import TsmQuoter
from cocoon.attest.types import AttestationError
from tests.tdxdata import (
    INSIDE_WINDOW,
    REAL_QUOTE,
    SAMPLE_COLLATERAL,
    SAMPLE_FMSPC,
    SAMPLE_QUOTE,
    SIGNED_LEN,
    fake_pccs,
    quote_with_fmspc,
)

# TD report 1.0 layout inside a v4 quote (48-byte header first): offsets of each 48-byte register.
_REPORT = 48
_OFFSETS = {"mrtd": 136, "mrconfigid": 184, "mrowner": 232, "mrownerconfig": 280,
            "rtmr0": 328, "rtmr1": 376, "rtmr2": 424, "rtmr3": 472}
TD_ATTRIBUTES_AT = _REPORT + 120


def _register(raw: bytes, name: str) -> bytes:
    start = _REPORT + _OFFSETS[name]
    return raw[start:start + 48]


@pytest.fixture(scope="module")
def sample_collateral() -> Collateral:
    return Collateral.from_json(SAMPLE_COLLATERAL.read_text())


def verifier(collateral: Collateral, **kwargs: object) -> TdxVerifier:
    return TdxVerifier(FixedCollateral(collateral), **kwargs)  # type: ignore[arg-type]


def test_real_quote_parses_to_its_measurements() -> None:
    raw = REAL_QUOTE.read_bytes()
    quote = parse_tdx_quote(raw)
    m = quote.measurements
    assert quote.version == 4
    assert m.mrtd.hex() == ("7357a10d2e2724dffe68813e3cc4cfcde6814d749f2fb62e3953e54f6e0b50a2"
                            "19786afe2cd478f684b52c61837e1114")
    assert m.rtmr[0].hex() == ("251a7f3cfc68006349444307c686485986beea461740437dae618e22a7aaac4e"
                               "c0233ae0190eb1ce92ab8e9966563acc")
    assert m.rtmr[2].hex().startswith("aaccda38cf2bdee9")
    assert m.rtmr[3] == bytes(48)
    # The same bytes the TDX module put at the documented offsets: the parser reads the real registers.
    for name in ("mrtd", "mrconfigid", "mrowner", "mrownerconfig"):
        assert getattr(m, name) == _register(raw, name)
    assert m.rtmr == tuple(_register(raw, f"rtmr{i}") for i in range(4))
    assert quote.report_data == raw[_REPORT + 520:_REPORT + 584]
    assert quote.fmspc == "90C06F000000"
    assert not quote.debug


def test_image_hash_is_one_layout_for_tdx_and_fake() -> None:
    raw = REAL_QUOTE.read_bytes()
    expected = hashlib.sha256(b"".join(_register(raw, n) for n in _OFFSETS)).digest()
    assert parse_tdx_quote(raw).measurements.image_hash() == expected
    fake = fake_measurements("img")
    assert fake.image_hash() == hashlib.sha256(
        fake.mrtd + fake.mrconfigid + fake.mrowner + fake.mrownerconfig + b"".join(fake.rtmr)).digest()


@pytest.mark.parametrize("data", [b"", b"\x04\x00" * 100, bytes(700)])
def test_garbage_is_not_a_tdx_quote(data: bytes) -> None:
    with pytest.raises(AttestationError, match="TDX quote does not parse"):
        parse_tdx_quote(data)


def test_collateral_window_is_the_intersection_of_its_parts(sample_collateral: Collateral) -> None:
    assert sample_collateral.fmspc == SAMPLE_FMSPC
    # QE identity issued 2025-06-19T10:32:27Z; PCK CRL's next update 2025-07-19T10:00:35Z.
    assert sample_collateral.not_before == 1750329147
    assert sample_collateral.not_after == 1752919235
    assert sample_collateral.valid_at(INSIDE_WINDOW)


def test_sample_quote_verifies_inside_the_collateral_window(sample_collateral: Collateral) -> None:
    raw = SAMPLE_QUOTE.read_bytes()
    verified = verifier(sample_collateral).verify(raw, INSIDE_WINDOW)
    assert verified.kind == "tdx"
    assert verified.tcb_status == "UpToDate"
    assert verified.measurements == parse_tdx_quote(raw).measurements
    assert verified.report_data == raw[_REPORT + 520:_REPORT + 584]
    assert verified.valid_until == sample_collateral.not_after


def test_sample_quote_fails_today(sample_collateral: Collateral) -> None:
    raw = SAMPLE_QUOTE.read_bytes()
    with pytest.raises(AttestationError, match=r"valid from 2025-06-19T10:32:27Z to 2025-07-19T10:00:35Z, not at"):
        verifier(sample_collateral).verify(raw, time.time())
    # And DCAP itself refuses expired collateral, even if our window check were wrong.
    widened = dataclasses.replace(sample_collateral, not_after=float("inf"))
    with pytest.raises(AttestationError, match=r"does not verify \(DCAP\).*(Expired|expired)"):
        verifier(widened).verify(raw, time.time())


def test_every_flipped_byte_of_the_signed_report_is_refused(sample_collateral: Collateral) -> None:
    raw = SAMPLE_QUOTE.read_bytes()
    check = verifier(sample_collateral)
    for position in range(SIGNED_LEN):
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        with pytest.raises(AttestationError):
            check.verify(bytes(tampered), INSIDE_WINDOW)


def test_flipped_report_data_fails_the_signature(sample_collateral: Collateral) -> None:
    tampered = bytearray(SAMPLE_QUOTE.read_bytes())
    tampered[_REPORT + 530] ^= 0x80
    with pytest.raises(AttestationError, match=r"does not verify \(DCAP\).*signature is invalid"):
        verifier(sample_collateral).verify(bytes(tampered), INSIDE_WINDOW)


def test_collateral_of_another_platform_is_refused(sample_collateral: Collateral) -> None:
    other_platform_quote = REAL_QUOTE.read_bytes()  # FMSPC 90C06F000000; the collateral is for B0C06F000000
    with pytest.raises(AttestationError, match="collateral is for platform FMSPC B0C06F000000, but the quote "
                                               "comes from FMSPC 90C06F000000"):
        verifier(sample_collateral).verify(other_platform_quote, INSIDE_WINDOW)
    # DCAP refuses it too when our own check is bypassed.
    relabelled = dataclasses.replace(sample_collateral, fmspc="90C06F000000")
    with pytest.raises(AttestationError, match="does not verify \\(DCAP\\)"):
        verifier(relabelled).verify(other_platform_quote, INSIDE_WINDOW)


def test_unknown_intel_root_key_is_refused(sample_collateral: Collateral) -> None:
    with pytest.raises(AttestationError, match=r"unknown root key .*not Intel's SGX root CA"):
        verifier(sample_collateral, root_key_ids=frozenset({bytes(48)})).verify(
            SAMPLE_QUOTE.read_bytes(), INSIDE_WINDOW)


def test_debug_td_is_refused_by_default(sample_collateral: Collateral) -> None:
    debug = bytearray(SAMPLE_QUOTE.read_bytes())
    debug[TD_ATTRIBUTES_AT] |= 0x01
    assert parse_tdx_quote(bytes(debug)).debug
    with pytest.raises(AttestationError, match="debug TD"):
        verifier(sample_collateral).verify(bytes(debug), INSIDE_WINDOW)
    # Allowing debug TDs lets it reach DCAP, which refuses this one only because we flipped a signed bit.
    with pytest.raises(AttestationError, match="does not verify \\(DCAP\\)"):
        verifier(sample_collateral, allow_debug=True).verify(bytes(debug), INSIDE_WINDOW)


def _policy(**worker_rules: object) -> Policy:
    return Policy(name="p", roles={"worker": RolePolicy(kinds=frozenset({"tdx"}), **worker_rules)},  # type: ignore[arg-type]
                  production_safe=False)


def test_policy_judges_tcb_status_and_registers(sample_collateral: Collateral) -> None:
    raw = SAMPLE_QUOTE.read_bytes()
    verified = verifier(sample_collateral).verify(raw, INSIDE_WINDOW)
    m = verified.measurements
    assert m is not None
    TDX_ANY_POLICY.check_quote("worker", verified)
    with pytest.raises(AttestationError, match="TCB status 'UpToDate' is not accepted for role 'worker'"):
        _policy(tcb_statuses=frozenset({"OutOfDate"})).check_quote("worker", verified)
    with pytest.raises(AttestationError, match=f"MRTD {m.mrtd.hex()} is not allowed"):
        _policy(mrtds=frozenset({"00" * 48})).check_quote("worker", verified)
    with pytest.raises(AttestationError, match=f"RTMR2 {m.rtmr[2].hex()} is not allowed"):
        _policy(rtmrs={"rtmr2": frozenset({"00" * 48})}).check_quote("worker", verified)
    _policy(mrtds=frozenset({m.mrtd.hex()}), rtmrs={"rtmr2": frozenset({m.rtmr[2].hex()})},
            image_hashes=frozenset({m.image_hash().hex()})).check_quote("worker", verified)


def test_no_collateral_and_no_pccs_is_a_precise_refusal() -> None:
    with pytest.raises(AttestationError, match="no cached collateral, and no PCCS is configured \\(set pccs_url\\)"):
        TdxVerifier(CollateralCache(None, None)).verify(SAMPLE_QUOTE.read_bytes(), INSIDE_WINDOW)


def test_collateral_is_fetched_once_cached_as_json_and_refetched_after_expiry(tmp_path: Path) -> None:
    raw = SAMPLE_QUOTE.read_bytes()
    with fake_pccs() as (url, requests):
        cache = CollateralCache(tmp_path, url, block=True)
        assert TdxVerifier(cache).verify(raw, INSIDE_WINDOW).tcb_status == "UpToDate"
        assert len(requests) == 4
        assert any(f"fmspc={SAMPLE_FMSPC}" in r for r in requests)
        cached = json.loads((tmp_path / f"tdx-collateral-platform-{SAMPLE_FMSPC}.json").read_text())
        assert (cached["fmspc"], cached["ca"]) == (SAMPLE_FMSPC, "platform")
        assert (cached["not_before"], cached["not_after"]) == (1750329147, 1752919235)
        sample = json.loads(SAMPLE_COLLATERAL.read_text())
        assert {k: cached["collateral"][k] for k in sample} == sample  # plus the PCK chain dcap-qvl attaches

        TdxVerifier(cache).verify(raw, INSIDE_WINDOW + 3600)
        # A new process finds it on disk.
        TdxVerifier(CollateralCache(tmp_path, url, block=True)).verify(raw, INSIDE_WINDOW + 7200)
        assert len(requests) == 4

        # Past the window it is fetched again (the double serves the same, still expired, collateral).
        later = 1752919235 + 10
        with pytest.raises(AttestationError, match="to 2025-07-19T10:00:35Z, not at 2025-07-19T10:00:45Z"):
            TdxVerifier(cache).verify(raw, later)
        assert len(requests) == 8


def test_failed_fetch_is_reported_and_not_retried_at_once(tmp_path: Path) -> None:
    with fake_pccs() as (url, requests):
        pass  # the PCCS is gone: every fetch fails to connect
    cache = CollateralCache(tmp_path, url, fetch_timeout_s=2, retry_after_s=60, block=True)
    raw = SAMPLE_QUOTE.read_bytes()
    with pytest.raises(AttestationError, match=f"fetching it from {url} failed"):
        TdxVerifier(cache).verify(raw, INSIDE_WINDOW)
    with pytest.raises(AttestationError, match=r"last fetch from .* failed"):
        TdxVerifier(cache).verify(raw, INSIDE_WINDOW + 30)
    assert requests == []


def _settled(cache: CollateralCache) -> dict[str, int]:
    """The cache's counts once no fetch is in progress (bounded wait)."""
    deadline = time.monotonic() + 20
    while (stats := cache.stats())["fetching"]:
        assert time.monotonic() < deadline, "a collateral fetch never finished"
        time.sleep(0.01)
    return stats


def test_a_node_never_waits_for_a_fetch_the_miss_is_refused_and_the_next_attempt_finds_it(tmp_path: Path) -> None:
    raw = SAMPLE_QUOTE.read_bytes()
    with fake_pccs() as (url, requests):
        cache = CollateralCache(tmp_path, url)
        with pytest.raises(AttestationError, match=f"being fetched from {url}: retry in a few seconds"):
            TdxVerifier(cache).verify(raw, INSIDE_WINDOW)
        assert _settled(cache) == {"cached": 1, "failed": 0, "fetching": 0}
        assert TdxVerifier(cache).verify(raw, INSIDE_WINDOW).tcb_status == "UpToDate"
        assert len(requests) == 4
        assert (tmp_path / f"tdx-collateral-platform-{SAMPLE_FMSPC}.json").exists()


def test_fetches_and_both_caches_stay_bounded_whatever_platforms_peers_name() -> None:
    """Issue 15, item 14: crafted quotes naming a new FMSPC each time cost at most `max_fetches` fetches at
    once, and remember at most `cache_size` platforms."""
    raw, hold = SAMPLE_QUOTE.read_bytes(), threading.Event()
    with fake_pccs(hold=hold) as (url, _requests):
        cache = CollateralCache(None, url, max_fetches=2, cache_size=3, retry_after_s=3600)
        refusals = []
        for i in range(8):
            with pytest.raises(AttestationError) as refused:
                TdxVerifier(cache).verify(quote_with_fmspc(raw, f"{i + 1:012X}"), INSIDE_WINDOW)
            refusals.append(str(refused.value))
        assert ["being fetched" in r for r in refusals] == [True] * 2 + [False] * 6
        assert all("2 collateral fetches are already in progress: retry later" in r for r in refusals[2:])
        with pytest.raises(AttestationError, match="being fetched"):  # the same platform: no second fetch
            TdxVerifier(cache).verify(quote_with_fmspc(raw, "000000000001"), INSIDE_WINDOW)
        assert cache.stats() == {"cached": 0, "failed": 0, "fetching": 2}
        hold.set()  # the PCCS answers, with another platform's collateral: both fetches fail
        assert _settled(cache) == {"cached": 0, "failed": 2, "fetching": 0}
        with pytest.raises(AttestationError, match="last fetch from .* failed: the PCCS answered with collateral "
                                                   f"for FMSPC {SAMPLE_FMSPC}"):
            TdxVerifier(cache).verify(quote_with_fmspc(raw, "000000000002"), INSIDE_WINDOW)
        for i in range(8, 16):
            with pytest.raises(AttestationError, match="being fetched"):
                TdxVerifier(cache).verify(quote_with_fmspc(raw, f"{i + 1:012X}"), INSIDE_WINDOW)
            assert _settled(cache)["failed"] <= 3
        assert cache.stats() == {"cached": 0, "failed": 3, "fetching": 0}
        # Collateral is kept for the most recent platforms too: each PCK CA of one platform is an entry.
        cache = CollateralCache(None, url, cache_size=1, block=True)
        assert cache.get(raw, SAMPLE_FMSPC, "platform", INSIDE_WINDOW).fmspc == SAMPLE_FMSPC
        assert cache.get(raw, SAMPLE_FMSPC, "processor", INSIDE_WINDOW).fmspc == SAMPLE_FMSPC
        assert cache.stats() == {"cached": 1, "failed": 0, "fetching": 0}


def test_tsm_interface_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match=f"Linux TSM interface {tmp_path / 'absent'} is missing"):
        TsmQuoter(tmp_path / "absent").quote(bytes(64))
    with pytest.raises(ValueError, match="expected 64"):
        TsmQuoter(tmp_path).quote(bytes(32))


def test_tsm_directory_that_is_not_configfs_is_refused(tmp_path: Path) -> None:
    # A plain directory creates no attribute files: the entry has no provider.
    with pytest.raises(AttestationError, match=r"TSM report entry .* failed"):
        TsmQuoter(tmp_path).quote(bytes(64))
    assert list(tmp_path.iterdir()) == []  # the entry was removed again
