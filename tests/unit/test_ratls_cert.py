"""RA-TLS certificates: building identities and refusing every kind of bad peer certificate."""

from __future__ import annotations

import datetime
import hashlib
import stat
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from cocoon.attest.backends import get_backend
from cocoon.attest.collateral import FixedCollateral
from cocoon.attest.fake import FakeBackend, fake_image_hash
from cocoon.attest.policy import DEV_POLICY, TDX_ANY_POLICY, Policy, RolePolicy, with_image_hashes
from cocoon.attest.types import AttestationError
from cocoon.ratls.cert import (
    OID_CLAIMS,
    OID_QUOTE,
    CertVerifier,
    Claims,
    decode_claims,
    load_identity,
    make_identity,
    save_identity,
    signer,
)
from tests.tdxdata import INSIDE_WINDOW, SAMPLE_COLLATERAL, SAMPLE_QUOTE

NOW = 1_700_000_000.0
DAY = 86400
ALL_ROLES = ("client", "proxy", "worker")
FAKE = FakeBackend("img-a")


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC)


def _good_extensions(claims_key: Ed25519PrivateKey, *, role: str = "worker") -> list[x509.Extension]:
    """The two RA-TLS extensions a correct node would build for `claims_key`, quoted by FAKE."""
    encoded = Claims(public_key=_raw(claims_key), role=role, kind="fake", issued_at=int(NOW)).encode()
    quote = FAKE.quote(hashlib.sha512(encoded).digest())
    return [
        x509.Extension(OID_QUOTE, True, x509.UnrecognizedExtension(OID_QUOTE, quote)),
        x509.Extension(OID_CLAIMS, True, x509.UnrecognizedExtension(OID_CLAIMS, encoded)),
    ]


def _forge(
    subject_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
    extensions: list[x509.Extension],
    *,
    signer: Ed25519PrivateKey | ec.EllipticCurvePrivateKey | None = None,
    issuer_cn: str = "cocoon-worker",
) -> bytes:
    """A certificate of `subject_key` with arbitrary extensions, signed by `signer` (default: itself)."""
    signer = signer or subject_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cocoon-worker")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(NOW - 60))
        .not_valid_after(_utc(NOW + DAY))
    )
    for ext in extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    algorithm = None if isinstance(signer, Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm).public_bytes(serialization.Encoding.DER)


def _refused(der: bytes, match: str, *, policy: Policy = DEV_POLICY, now: float = NOW) -> None:
    with pytest.raises(AttestationError, match=match):
        CertVerifier(policy, ALL_ROLES).verify(der, now=now)


def test_good_certificate_is_accepted() -> None:
    identity = make_identity("worker", FAKE, now=NOW)
    peer = CertVerifier(DEV_POLICY, ["worker"]).verify(identity.cert_der, now=NOW + 10)
    assert peer.role == "worker"
    assert peer.kind == "fake"
    assert peer.public_key == identity.public_key == identity.claims.public_key
    assert peer.image_hash == fake_image_hash("img-a")
    assert peer.cert_sha256 == hashlib.sha256(identity.cert_der).digest()
    assert peer.not_after == NOW + DAY


def test_identity_certificate_has_the_promised_shape() -> None:
    identity = make_identity("proxy", FAKE, now=NOW, lifetime_s=3600)
    cert = identity.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cocoon-proxy"
    assert cert.not_valid_before_utc == _utc(NOW - 60)
    assert cert.not_valid_after_utc == _utc(NOW + 3600)
    assert [(e.oid, e.critical) for e in cert.extensions] == [(OID_QUOTE, True), (OID_CLAIMS, True)]
    claims_bytes = cert.extensions.get_extension_for_oid(OID_CLAIMS).value.public_bytes()
    assert msgspec.msgpack.decode(claims_bytes, type=Claims) == identity.claims
    assert identity.claims == Claims(
        public_key=identity.public_key, role="proxy", kind="fake", issued_at=int(NOW)
    )


def test_client_with_kind_none_is_accepted_and_has_no_image_hash() -> None:
    identity = make_identity("client", get_backend("none"), now=NOW)
    peer = CertVerifier(DEV_POLICY, ["client"]).verify(identity.cert_der, now=NOW)
    assert (peer.role, peer.kind, peer.image_hash) == ("client", "none", None)


def test_identity_can_reuse_a_given_key() -> None:
    key = Ed25519PrivateKey.generate()
    identity = make_identity("worker", FAKE, now=NOW, private_key=key)
    assert identity.public_key == _raw(key)


def test_save_and_load_identity(tmp_path: Path) -> None:
    identity = make_identity("worker", FAKE, now=NOW)
    save_identity(identity, tmp_path / "id")
    assert stat.S_IMODE((tmp_path / "id" / "key.pem").stat().st_mode) == 0o600
    loaded = load_identity(tmp_path / "id")
    assert loaded.cert_der == identity.cert_der
    assert loaded.public_key == identity.public_key
    assert loaded.claims == identity.claims
    save_identity(make_identity("worker", FAKE, now=NOW), tmp_path / "id")  # overwriting works
    assert load_identity(tmp_path / "id").public_key != identity.public_key


def test_load_identity_refuses_a_mismatched_key(tmp_path: Path) -> None:
    save_identity(make_identity("worker", FAKE, now=NOW), tmp_path)
    other = make_identity("worker", FAKE, now=NOW)
    (tmp_path / "key.pem").write_bytes(other.key_pem)
    with pytest.raises(ValueError, match="does not match the key"):
        load_identity(tmp_path)


def test_quote_made_for_another_key_is_refused() -> None:
    key_a, key_b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    # A genuine quote and claims for key A, transplanted into a certificate of key B.
    _refused(_forge(key_b, _good_extensions(key_a)), "claims are bound to another key")


def test_claims_rewritten_for_the_new_key_do_not_match_the_quote() -> None:
    key_a, key_b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    stolen_quote = _good_extensions(key_a)[0]
    own_claims = _good_extensions(key_b)[1]
    _refused(
        _forge(key_b, [stolen_quote, own_claims]), "quote report_data does not match SHA-512 of the claims"
    )


def test_disallowed_image_hash_is_refused() -> None:
    policy = with_image_hashes(DEV_POLICY, "worker", [fake_image_hash("img-b")])
    der = make_identity("worker", FAKE, now=NOW).cert_der
    _refused(
        der, f"image hash {fake_image_hash('img-a').hex()} is not allowed for role 'worker'", policy=policy
    )
    allowed = with_image_hashes(DEV_POLICY, "worker", [fake_image_hash("img-a")])
    assert CertVerifier(allowed, ["worker"]).verify(der, now=NOW).image_hash == fake_image_hash("img-a")


def test_image_hash_restriction_refuses_kind_none() -> None:
    policy = with_image_hashes(DEV_POLICY, "client", [fake_image_hash("img-a")])
    der = make_identity("client", get_backend("none"), now=NOW).cert_der
    _refused(
        der, "requires an image hash for role 'client', but kind 'none' has no measurements", policy=policy
    )


def test_disallowed_kind_is_refused() -> None:
    tdx_only = Policy(
        name="tdx-only", roles={"worker": RolePolicy(kinds=frozenset({"tdx"}))}, production_safe=False
    )
    der = make_identity("worker", FAKE, now=NOW).cert_der
    _refused(der, "kind 'fake' is not allowed for role 'worker' by policy 'tdx-only'", policy=tdx_only)


def test_role_not_accepted_by_the_verifier_is_refused() -> None:
    der = make_identity("client", get_backend("none"), now=NOW).cert_der
    with pytest.raises(AttestationError, match="peer role 'client' is not accepted here"):
        CertVerifier(DEV_POLICY, ["worker", "proxy"]).verify(der, now=NOW)


def test_role_absent_from_the_policy_is_refused() -> None:
    workers_only = Policy(
        name="w", roles={"worker": RolePolicy(kinds=frozenset({"fake"}))}, production_safe=False
    )
    der = make_identity("proxy", FAKE, now=NOW).cert_der
    _refused(der, "policy 'w' refuses peers of role 'proxy'", policy=workers_only)


def test_expired_certificate_is_refused() -> None:
    der = make_identity("worker", FAKE, now=NOW, lifetime_s=3600).cert_der
    _refused(der, "peer certificate expired at", now=NOW + 3600 + 301)
    # Within the allowed clock skew it still passes.
    CertVerifier(DEV_POLICY, ALL_ROLES).verify(der, now=NOW + 3600 + 299)


def test_certificate_from_the_future_is_refused() -> None:
    der = make_identity("worker", FAKE, now=NOW + 3600).cert_der
    _refused(der, "peer certificate is not valid before", now=NOW)


def test_claims_issued_in_the_future_are_refused() -> None:
    # The certificate window is already open, but the claims say they were issued later than now + skew.
    key = Ed25519PrivateKey.generate()
    encoded = Claims(public_key=_raw(key), role="worker", kind="fake", issued_at=int(NOW + 1000)).encode()
    quote = FAKE.quote(hashlib.sha512(encoded).digest())
    der = _forge(
        key,
        [
            x509.Extension(OID_QUOTE, True, x509.UnrecognizedExtension(OID_QUOTE, quote)),
            x509.Extension(OID_CLAIMS, True, x509.UnrecognizedExtension(OID_CLAIMS, encoded)),
        ],
    )
    _refused(der, "RA-TLS claims are issued in the future")


def test_certificate_older_than_the_policy_allows_is_refused() -> None:
    der = make_identity("worker", FAKE, now=NOW, lifetime_s=10 * DAY).cert_der
    _refused(der, "issued 259200 s ago, more than the policy's maximum of 172800 s", now=NOW + 3 * DAY)


def test_ecdsa_key_is_refused() -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    extensions = _good_extensions(Ed25519PrivateKey.generate())
    _refused(_forge(ecdsa, extensions), "key is ECDSA secp256r1, expected Ed25519")


def test_unknown_critical_extension_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.58000.9.9")
    extra = x509.Extension(oid, True, x509.UnrecognizedExtension(oid, b"\x05\x00"))
    _refused(
        _forge(key, [*_good_extensions(key), extra]), "unhandled critical extension 1.3.6.1.4.1.58000.9.9"
    )


def test_unknown_non_critical_extension_is_tolerated() -> None:
    key = Ed25519PrivateKey.generate()
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.58000.9.9")
    extra = x509.Extension(oid, False, x509.UnrecognizedExtension(oid, b"\x05\x00"))
    assert CertVerifier(DEV_POLICY, ALL_ROLES).verify(_forge(key, [*_good_extensions(key), extra]), now=NOW)


def test_non_critical_ratls_extension_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    quote, claims = _good_extensions(key)
    lax = x509.Extension(OID_CLAIMS, False, claims.value)
    _refused(_forge(key, [quote, lax]), f"RA-TLS extension {OID_CLAIMS.dotted_string} must be critical")


def test_certificate_signed_by_another_key_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    der = _forge(key, _good_extensions(key), signer=Ed25519PrivateKey.generate())
    _refused(der, "signature does not verify with its own key")


def test_certificate_with_another_issuer_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    der = _forge(key, _good_extensions(key), issuer_cn="some-ca")
    _refused(der, "not self-signed: issuer 'CN=some-ca' differs from subject 'CN=cocoon-worker'")


@pytest.mark.parametrize(("index", "what"), [(0, "quote"), (1, "claims")])
def test_missing_extension_is_refused(index: int, what: str) -> None:
    key = Ed25519PrivateKey.generate()
    extensions = _good_extensions(key)
    del extensions[index]
    _refused(_forge(key, extensions), f"lacks the RA-TLS {what} extension")


def test_undecodable_claims_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    quote = _good_extensions(key)[0]
    junk = x509.Extension(OID_CLAIMS, True, x509.UnrecognizedExtension(OID_CLAIMS, b"\xc1"))
    _refused(_forge(key, [quote, junk]), "RA-TLS claims do not decode")


def test_tampered_quote_in_certificate_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    quote, claims = _good_extensions(key)
    bad = bytearray(quote.value.public_bytes())
    bad[20] ^= 0xFF
    tampered = x509.Extension(OID_QUOTE, True, x509.UnrecognizedExtension(OID_QUOTE, bytes(bad)))
    _refused(_forge(key, [tampered, claims]), "fake quote signature does not verify")


def test_garbage_is_refused() -> None:
    _refused(b"not a certificate", "not valid DER X.509")


def test_cache_returns_the_same_verdict_but_not_after_expiry() -> None:
    verifier = CertVerifier(DEV_POLICY, ALL_ROLES)
    der = make_identity("worker", FAKE, now=NOW, lifetime_s=3600).cert_der
    first = verifier.verify(der, now=NOW)
    assert verifier.verify(der, now=NOW + 1) is first  # served from the cache
    with pytest.raises(AttestationError, match="peer certificate expired at"):
        verifier.verify(der, now=NOW + 2 * 3600)
    with pytest.raises(AttestationError, match="not valid before"):
        verifier.verify(der, now=NOW - 3600)


def test_cache_honours_the_policy_maximum_age() -> None:
    verifier = CertVerifier(DEV_POLICY, ALL_ROLES)
    der = make_identity("worker", FAKE, now=NOW, lifetime_s=10 * DAY).cert_der
    verifier.verify(der, now=NOW)
    with pytest.raises(AttestationError, match="more than the policy's maximum"):
        verifier.verify(der, now=NOW + 3 * DAY)


def test_cache_is_bounded() -> None:
    verifier = CertVerifier(DEV_POLICY, ALL_ROLES, cache_size=2)
    ders = [make_identity("worker", FAKE, now=NOW).cert_der for _ in range(3)]
    peers = [verifier.verify(der, now=NOW) for der in ders]
    assert verifier.verify(ders[2], now=NOW) is peers[2]
    assert verifier.verify(ders[0], now=NOW) is not peers[0]  # evicted, verified afresh
    assert verifier.verify(ders[0], now=NOW) == peers[0]


def test_the_cache_evicts_the_least_recently_used_verdict() -> None:
    verifier = CertVerifier(DEV_POLICY, ALL_ROLES, cache_size=2)
    a, b, c = (make_identity("worker", FAKE, now=NOW).cert_der for _ in range(3))
    peer_a, peer_b = verifier.verify(a, now=NOW), verifier.verify(b, now=NOW)
    assert verifier.verify(a, now=NOW) is peer_a and verifier.verify(b, now=NOW) is peer_b  # both fit
    assert verifier.verify(a, now=NOW) is peer_a  # a used last: b is the one to go
    verifier.verify(c, now=NOW)
    assert verifier.verify(a, now=NOW) is peer_a
    assert verifier.verify(b, now=NOW) is not peer_b


def test_a_cached_verdict_holds_exactly_as_long_as_the_full_check_would_accept() -> None:
    # valid from max(not_before, issued_at) - skew = NOW - 300, until not_after + skew = NOW + 3900 (before the
    # policy's maximum age)
    verifier = CertVerifier(DEV_POLICY, ALL_ROLES)
    der = make_identity("worker", FAKE, now=NOW, lifetime_s=3600).cert_der
    first = verifier.verify(der, now=NOW)
    assert verifier.verify(der, now=NOW - 300) is first
    assert verifier.verify(der, now=NOW + 3900) is first
    with pytest.raises(AttestationError, match="peer certificate expired at"):
        verifier.verify(der, now=NOW + 3901)


def _dated(key: Ed25519PrivateKey, *, not_before: float, not_after: float, issued_at: float) -> bytes:
    """A correct RA-TLS certificate of `key` with the given validity and claims issued at `issued_at`."""
    encoded = Claims(public_key=_raw(key), role="worker", kind="fake", issued_at=int(issued_at)).encode()
    quote = FAKE.quote(hashlib.sha512(encoded).digest())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cocoon-worker")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(_utc(not_before)).not_valid_after(_utc(not_after))
            .add_extension(x509.UnrecognizedExtension(OID_QUOTE, quote), critical=True)
            .add_extension(x509.UnrecognizedExtension(OID_CLAIMS, encoded), critical=True)
            .sign(key, None).public_bytes(serialization.Encoding.DER))


def test_each_time_limit_admits_its_last_instant_and_refuses_the_next() -> None:
    """The clock skew (300 s) and the policy's maximum age (2 days) are tolerances up to and including them."""
    key = Ed25519PrivateKey.generate()

    def check(der: bytes, now: float) -> None:
        CertVerifier(DEV_POLICY, ALL_ROLES).verify(der, now=now)  # a fresh verifier: no cached verdict

    early = _dated(key, not_before=NOW, not_after=NOW + DAY, issued_at=NOW - 1000)
    check(early, NOW - 300)
    _refused(early, "not valid before", now=NOW - 301)
    late = _dated(key, not_before=NOW - 1000, not_after=NOW, issued_at=NOW - 1000)
    check(late, NOW + 300)
    _refused(late, "expired at", now=NOW + 301)
    ahead = _dated(key, not_before=NOW - 1000, not_after=NOW + DAY, issued_at=NOW + 300)
    check(ahead, NOW)
    _refused(ahead, "issued in the future", now=NOW - 1)
    old = _dated(key, not_before=NOW - 3 * DAY, not_after=NOW + DAY, issued_at=NOW - 2 * DAY)
    check(old, NOW)
    _refused(old, "more than the policy's maximum", now=NOW + 1)


_ED25519_OID = bytes.fromhex("06032b6570")  # DER of 1.3.101.112: in the TBS, in the key, in the signature


def _replace_nth(data: bytes, old: bytes, new: bytes, n: int) -> bytes:
    at = -1
    for _ in range(n + 1):
        at = data.index(old, at + 1)
    return data[:at] + new + data[at + len(old):]


def test_a_key_of_an_unknown_type_is_refused_with_a_reason() -> None:
    key = Ed25519PrivateKey.generate()
    der = _replace_nth(_forge(key, _good_extensions(key)), _ED25519_OID, bytes.fromhex("06032b6563"), 1)
    _refused(der, "peer certificate key cannot be loaded: .*1.3.101.99")


def test_a_signature_algorithm_other_than_ed25519_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    der = _replace_nth(_forge(key, _good_extensions(key)), _ED25519_OID, bytes.fromhex("06032b6571"), 2)
    _refused(der, "signature algorithm is 1.3.101.113, expected Ed25519")


def test_a_certificate_repeating_an_extension_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    one, two = (x509.ObjectIdentifier(f"1.3.6.1.4.1.58000.9.{n}") for n in (8, 9))
    extra = [x509.Extension(oid, False, x509.UnrecognizedExtension(oid, b"\x05\x00")) for oid in (one, two)]
    der = _forge(key, [*_good_extensions(key), *extra])
    cert = x509.load_der_x509_certificate(der)
    # the first extra extension renamed to the second's OID (their DER differs in the last byte), signed again so
    # that only the repetition is wrong
    tbs = cert.tbs_certificate_bytes.replace(bytes.fromhex("83c5100908"), bytes.fromhex("83c5100909"))
    der = der.replace(cert.tbs_certificate_bytes, tbs).replace(cert.signature, key.sign(tbs))
    _refused(der, "peer certificate extensions are malformed: Duplicate 1.3.6.1.4.1.58000.9.9 extension")


@pytest.mark.parametrize(("fields", "reason"), [
    ({"public_key": bytes(31)}, "claims public_key has 31 bytes, expected 32"),
    ({"hpke_public_key": bytes(5)}, "claims hpke_public_key has 5 bytes, expected 32"),
    ({"config_hash": bytes(33)}, "claims config_hash has 33 bytes, expected 32"),
    ({"voucher_key": bytes(1)}, "claims voucher_key has 1 bytes, expected 32"),
    ({"role": "admin"}, "claims role 'admin' is not one of"),
    ({"kind": "sgx"}, "claims kind 'sgx' is not one of"),
])
def test_claims_with_a_malformed_field_do_not_decode(fields: dict[str, object], reason: str) -> None:
    good = {"public_key": bytes(32), "role": "worker", "kind": "fake", "issued_at": int(NOW)}
    assert decode_claims(msgspec.msgpack.encode(good)).role == "worker"
    with pytest.raises(AttestationError, match=f"RA-TLS claims do not decode: {reason}"):
        decode_claims(msgspec.msgpack.encode({**good, **fields}))


def test_unknown_accept_role_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown roles \\['admin'\\]"):
        CertVerifier(DEV_POLICY, ["admin"])


def test_hpke_key_travels_in_the_claims_and_reaches_the_peer_identity() -> None:
    hpke = X25519PrivateKey.generate()
    identity = make_identity("worker", FAKE, now=NOW, hpke_key=hpke)
    assert identity.hpke_key is hpke
    assert identity.claims.hpke_public_key == hpke.public_key().public_bytes_raw()
    peer = CertVerifier(DEV_POLICY, ["worker"]).verify(identity.cert_der, now=NOW)
    assert peer.hpke_public_key == identity.claims.hpke_public_key
    assert CertVerifier(DEV_POLICY, ["worker"]).verify(make_identity("worker", FAKE, now=NOW).cert_der,
                                                       now=NOW).hpke_public_key == b""


def test_claims_without_optional_fields_decode_on_nodes_that_predate_them() -> None:
    class OldClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        public_key: bytes
        role: str
        kind: str
        issued_at: int
        gpu_evidence: bytes = b""

    claims = make_identity("worker", FAKE, now=NOW).claims
    old = msgspec.msgpack.decode(claims.encode(), type=OldClaims)
    assert (old.public_key, old.role, old.kind, old.issued_at) == (
        claims.public_key, claims.role, claims.kind, claims.issued_at)


def test_genuine_tdx_quote_in_a_certificate_for_other_claims_is_refused() -> None:
    # A real, verifiable TDX quote (checked against real collateral) whose report_data is not ours.
    key = Ed25519PrivateKey.generate()
    encoded = Claims(public_key=_raw(key), role="worker", kind="tdx", issued_at=INSIDE_WINDOW).encode()
    extensions = [
        x509.Extension(OID_QUOTE, True, x509.UnrecognizedExtension(OID_QUOTE, SAMPLE_QUOTE.read_bytes())),
        x509.Extension(OID_CLAIMS, True, x509.UnrecognizedExtension(OID_CLAIMS, encoded)),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_utc(INSIDE_WINDOW - 60))
        .not_valid_after(_utc(INSIDE_WINDOW + DAY))
    )
    for ext in extensions:
        cert = cert.add_extension(ext.value, critical=True)
    der = cert.sign(key, None).public_bytes(serialization.Encoding.DER)
    collateral = FixedCollateral.load(SAMPLE_COLLATERAL)
    verifier = CertVerifier(TDX_ANY_POLICY, ["worker"], collateral=collateral)
    with pytest.raises(AttestationError, match="quote report_data does not match SHA-512 of the claims"):
        verifier.verify(der, now=INSIDE_WINDOW)
    # Without collateral the TDX quote itself is refused first, naming what is missing.
    with pytest.raises(AttestationError, match="no PCCS is configured"):
        CertVerifier(TDX_ANY_POLICY, ["worker"]).verify(der, now=INSIDE_WINDOW)


def test_the_fast_signer_signs_as_the_key_does() -> None:
    """Receipts are signed through libsodium (`signer`): the same deterministic Ed25519 signatures as the key's."""
    key = Ed25519PrivateKey.generate()
    sign = signer(key)
    for message in (b"", b"receipt", bytes(range(256)) * 9):
        assert sign(message) == key.sign(message)
        key.public_key().verify(sign(message), message)
