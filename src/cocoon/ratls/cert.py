"""RA-TLS certificates: building the local identity and verifying a peer's certificate against a policy.

The certificate is self-signed (Ed25519) and carries two critical private extensions: the quote and the
msgpack-encoded `Claims`. The quote's report_data is SHA-512 of the exact claim bytes, and the claims
name the certificate's key, so a quote copied from a good machine is useless with any other key.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from nacl.signing import SigningKey

from cocoon.attest.backends import AttestationBackend, verifier_for
from cocoon.attest.collateral import CollateralSource
from cocoon.attest.policy import Policy
from cocoon.attest.registry import RegistryImages
from cocoon.attest.trustconfig import TrustConfig
from cocoon.attest.types import KINDS, ROLES, AttestationError, PeerIdentity
from cocoon.core.errors import DECODE_ERRORS
from cocoon.fsutil import SECRET_MODE, private_dir, write_atomically
from cocoon.ledger.base import RootParams

# A private arc for cocoon; both extensions are critical so that generic X.509 code refuses to treat an
# RA-TLS certificate as an ordinary one.
OID_QUOTE = x509.ObjectIdentifier("1.3.6.1.4.1.58000.1.1")
OID_CLAIMS = x509.ObjectIdentifier("1.3.6.1.4.1.58000.1.2")

_BACKDATE_S = 60  # tolerates peers whose clocks run slightly behind ours


class Claims(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What the certificate's owner asserts; bound to the quote through report_data.

    Optional fields are left out of the encoding when empty, so claims without them decode on older nodes.
    """

    public_key: bytes  # raw Ed25519 public key, 32 bytes
    role: str
    kind: str
    issued_at: int  # unix seconds
    gpu_evidence: bytes = b""
    hpke_public_key: bytes = b""  # raw X25519 key that sealed keys are encrypted to (cocoon.ratls.sealing)
    # What the node runs with (cocoon.attest.trustconfig): the hash of its trust-deciding configuration, and in
    # clear what peers' policies read: its own policy, a worker's engine kind and origin.
    config_hash: bytes = b""
    policy: Policy | None = None
    engine: str = ""
    engine_origin: str = ""
    voucher_key: bytes = b""  # a proxy's raw Ed25519 voucher key, as the root registry lists it with its endpoint
    # a worker's: the SHA-256 of the weights it serves (inference/weights.py), measured in its image, or declared by
    # its operator for an engine it cannot read (`model_hash_declared`)
    model_hash: bytes = b""
    model_hash_declared: bool = False

    def __post_init__(self) -> None:
        if len(self.public_key) != 32:
            raise ValueError(f"claims public_key has {len(self.public_key)} bytes, expected 32 (Ed25519)")
        for name in ("hpke_public_key", "config_hash", "voucher_key", "model_hash"):
            value = getattr(self, name)
            if value and len(value) != 32:
                raise ValueError(f"claims {name} has {len(value)} bytes, expected 32")
        if self.role not in ROLES:
            raise ValueError(f"claims role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.kind not in KINDS:
            raise ValueError(f"claims kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @staticmethod
    def report_data_for(encoded: bytes) -> bytes:
        """The 64 bytes a quote must carry for these encoded claims."""
        return hashlib.sha512(encoded).digest()


_CLAIMS_DECODER = msgspec.msgpack.Decoder(Claims)


def _raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signer(key: Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    """Signs with `key` through libsodium: Ed25519 is deterministic, so the signatures are OpenSSL's byte for byte,
    at a third of the cost here (14 vs 43 µs): what signs a receipt per answer."""
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    sodium = SigningKey(seed)
    return lambda data: sodium.sign(data).signature


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC)


@dataclasses.dataclass(frozen=True)
class Identity:
    """The local party: its key, its RA-TLS certificate and the claims inside it."""

    private_key: Ed25519PrivateKey
    certificate: x509.Certificate
    claims: Claims
    hpke_key: X25519PrivateKey | None = None  # matches claims.hpke_public_key; kept in memory only

    @property
    def public_key(self) -> bytes:
        return _raw_public_key(self.private_key.public_key())

    @property
    def cert_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def lifetime_s(self) -> float:
        return self.certificate.not_valid_after_utc.timestamp() - self.claims.issued_at

    def current(self) -> Identity:
        """A fixed identity is its own source (tests, one-shot tools); nodes use an IdentityIssuer."""
        return self


class IdentityIssuer:
    """A node's identity over time: one long-lived key, and a freshly quoted certificate whenever the last
    one has used up `reissue_fraction` of its lifetime, so a node that runs for weeks never presents (or
    dials with) an expired certificate."""

    def __init__(self, role: str, backend: AttestationBackend, *, lifetime_s: int = 86400,
                 reissue_fraction: float = 1 / 24, private_key: Ed25519PrivateKey | None = None,
                 hpke_key: X25519PrivateKey | None = None, config: TrustConfig | None = None,
                 voucher_key: bytes = b"", model_hash: bytes = b"", model_hash_declared: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.role = role
        self.backend = backend
        self.lifetime_s = lifetime_s
        self.reissue_after_s = lifetime_s * reissue_fraction
        self.private_key = private_key or Ed25519PrivateKey.generate()
        self.hpke_key = hpke_key
        self.config = config
        self.voucher_key = voucher_key
        self.model_hash = model_hash
        self.model_hash_declared = model_hash_declared
        self.clock = clock
        self._identity = self._issue()

    def _issue(self) -> Identity:
        return make_identity(self.role, self.backend, lifetime_s=self.lifetime_s, now=self.clock(),
                             private_key=self.private_key, hpke_key=self.hpke_key, config=self.config,
                             voucher_key=self.voucher_key, model_hash=self.model_hash,
                             model_hash_declared=self.model_hash_declared)

    def current(self) -> Identity:
        if self.clock() - self._identity.claims.issued_at >= self.reissue_after_s:
            self._identity = self._issue()
        return self._identity

    @property
    def public_key(self) -> bytes:
        return _raw_public_key(self.private_key.public_key())


IdentitySource = Identity | IdentityIssuer


def make_identity(
    role: str,
    backend: AttestationBackend,
    *,
    lifetime_s: int = 86400,
    now: float | None = None,
    private_key: Ed25519PrivateKey | None = None,
    gpu_evidence: bytes = b"",
    hpke_key: X25519PrivateKey | None = None,
    config: TrustConfig | None = None,
    voucher_key: bytes = b"",
    model_hash: bytes = b"",
    model_hash_declared: bool = False,
) -> Identity:
    """A fresh RA-TLS certificate for `role`, quoted by `backend` (a new key unless one is given).

    With `hpke_key`, the claims carry its public half, so that a key service can seal keys to this node. With
    `config`, they carry its hash and what peers read in clear (policy, engine); a proxy names its `voucher_key`,
    a worker the `model_hash` of its weights.
    """
    now = time.time() if now is None else now
    key = private_key or Ed25519PrivateKey.generate()
    claims = Claims(
        public_key=_raw_public_key(key.public_key()),
        role=role,
        kind=backend.kind,
        issued_at=int(now),
        gpu_evidence=gpu_evidence,
        hpke_public_key=hpke_key.public_key().public_bytes_raw() if hpke_key else b"",
        config_hash=config.digest() if config else b"",
        policy=config.policy if config else None,
        engine=config.engine if config else "",
        engine_origin=config.engine_origin if config else "",
        voucher_key=voucher_key,
        model_hash=model_hash,
        model_hash_declared=model_hash_declared,
    )
    encoded = claims.encode()
    quote = backend.quote(Claims.report_data_for(encoded))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cocoon-{role}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - _BACKDATE_S))
        .not_valid_after(_utc(now + lifetime_s))
        .add_extension(x509.UnrecognizedExtension(OID_QUOTE, quote), critical=True)
        .add_extension(x509.UnrecognizedExtension(OID_CLAIMS, encoded), critical=True)
        .sign(key, None)
    )
    return Identity(private_key=key, certificate=cert, claims=claims, hpke_key=hpke_key)


def save_identity(identity: Identity, directory: str | os.PathLike[str]) -> None:
    """Writes cert.pem and key.pem (mode 0600) into `directory`, replacing any previous identity."""
    path = private_dir(directory)
    write_atomically(path / "key.pem", identity.key_pem, SECRET_MODE)
    write_atomically(path / "cert.pem", identity.cert_pem, 0o644)


def load_identity(directory: str | os.PathLike[str]) -> Identity:
    """Reads an identity written by `save_identity`; ValueError if the key does not match the certificate."""
    path = Path(directory)
    cert = x509.load_pem_x509_certificate((path / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((path / "key.pem").read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path / 'key.pem'} is not an Ed25519 private key")
    claims = _CLAIMS_DECODER.decode(cert.extensions.get_extension_for_oid(OID_CLAIMS).value.public_bytes())
    if claims.public_key != _raw_public_key(key.public_key()):
        raise ValueError(f"{path / 'key.pem'} does not match the key in {path / 'cert.pem'}")
    return Identity(private_key=key, certificate=cert, claims=claims)


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return type(key).__name__


class CertVerifier:
    """Checks peers' RA-TLS certificates against a policy; successes are cached by certificate hash.

    A cached verdict holds until the certificate, the claims' allowed age or the quote's evidence (TDX
    collateral) runs out, and only while the root registry stays at the version it was reached with.
    """

    def __init__(self, policy: Policy, accept_roles: Iterable[str], *, registry: RegistryImages | None = None,
                 collateral: CollateralSource | None = None, cache_size: int = 4096) -> None:
        self.policy = policy
        self.accept_roles = frozenset(accept_roles)
        unknown = sorted(self.accept_roles - set(ROLES))
        if unknown:
            raise ValueError(f"unknown roles {unknown}; expected some of {list(ROLES)}")
        if policy.needs_registry and registry is None:
            raise ValueError(f"policy {policy.name!r} takes image hashes from the root registry: "
                             "the verifier needs the registry")
        self.registry = registry
        self.collateral = collateral
        self._quote_verifiers = {kind: verifier_for(kind, collateral=collateral) for kind in KINDS}
        self._cache_size = cache_size
        # cert SHA-256 -> (peer, first and last instant at which the verdict holds, registry version)
        self._cache: OrderedDict[bytes, tuple[PeerIdentity, float, float, int]] = OrderedDict()

    def verify(self, der: bytes, now: float | None = None) -> PeerIdentity:
        """The peer's identity, or AttestationError with the precise reason for refusing it."""
        now = time.time() if now is None else now
        registry = self.registry.current() if self.registry else None
        version = registry.version if registry else 0
        digest = hashlib.sha256(der).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            peer, valid_from, valid_until, seen_version = cached
            if valid_from <= now <= valid_until and seen_version == version:
                self._cache.move_to_end(digest)
                return peer
            # Outside its window, or the registry changed: the full check below gives the precise verdict.
            del self._cache[digest]
        peer, valid_from, valid_until = self._check(der, digest, now, registry)
        self._cache[digest] = (peer, valid_from, valid_until, version)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return peer

    def _check(self, der: bytes, digest: bytes, now: float, registry: RootParams | None
               ) -> tuple[PeerIdentity, float, float]:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as e:
            raise AttestationError(f"peer certificate is not valid DER X.509: {e}") from None
        try:
            key = cert.public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:  # a key type cryptography does not know
            raise AttestationError(f"peer certificate key cannot be loaded: {e}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise AttestationError(f"peer certificate key is {_describe_key(key)}, expected Ed25519")
        self._check_self_signed(cert, key)
        quote, encoded_claims = read_ratls_extensions(cert)
        claims = decode_claims(encoded_claims)
        cert_key = _raw_public_key(key)
        if claims.public_key != cert_key:
            raise AttestationError(
                f"RA-TLS claims are bound to another key: claims name {claims.public_key.hex()[:16]}…, "
                f"certificate key is {cert_key.hex()[:16]}…"
            )
        if claims.role not in self.accept_roles:
            accepted = ", ".join(sorted(self.accept_roles))
            raise AttestationError(f"peer role {claims.role!r} is not accepted here (accepted: {accepted})")
        rules = self.policy.check_kind(claims.role, claims.kind)

        skew = rules.max_skew_s
        not_before = cert.not_valid_before_utc.timestamp()
        not_after = cert.not_valid_after_utc.timestamp()
        if now < not_before - skew:
            raise AttestationError(f"peer certificate is not valid before {_utc(not_before).isoformat()}")
        if now > not_after + skew:
            raise AttestationError(f"peer certificate expired at {_utc(not_after).isoformat()}")
        if claims.issued_at > now + skew:
            raise AttestationError(
                f"RA-TLS claims are issued in the future ({_utc(claims.issued_at).isoformat()})"
            )
        age = now - claims.issued_at
        if age > rules.max_cert_age_s:
            raise AttestationError(
                f"RA-TLS claims were issued {age:.0f} s ago, more than the policy's maximum of "
                f"{rules.max_cert_age_s:.0f} s"
            )

        verified = self._quote_verifiers[claims.kind].verify(quote, now)
        # A "none" quote is empty by construction (its verifier checks that): there is nothing to bind.
        if claims.kind != "none" and verified.report_data != Claims.report_data_for(encoded_claims):
            raise AttestationError(
                "quote report_data does not match SHA-512 of the claims: the quote was made for other claims"
            )
        self.policy.check_quote(claims.role, verified, registry)
        self.policy.check_configuration(claims.role, config_hash=claims.config_hash,
                                        engine_origin=claims.engine_origin, peer_policy=claims.policy,
                                        registry=registry)

        peer = PeerIdentity(
            role=claims.role,
            kind=claims.kind,
            public_key=cert_key,
            image_hash=verified.image_hash,
            cert_sha256=digest,
            not_after=not_after,
            hpke_public_key=claims.hpke_public_key,
            config_hash=claims.config_hash,
            policy_name=claims.policy.name if claims.policy else "",
            engine=claims.engine,
            engine_origin=claims.engine_origin,
            voucher_key=claims.voucher_key,
            model_hash=claims.model_hash,
            model_hash_declared=claims.model_hash_declared,
        )
        valid_from = max(not_before, claims.issued_at) - skew
        valid_until = min(not_after + skew, claims.issued_at + rules.max_cert_age_s)
        if verified.valid_until is not None:
            valid_until = min(valid_until, verified.valid_until)
        return peer, valid_from, valid_until

    def check_engine_models(self, peer: PeerIdentity, models: Iterable[str]) -> None:
        """Refuses (AttestationError) a peer serving `models` from an engine outside its image, or from weights,
        that the policy and the current root registry do not allow; run when the models are announced and at every
        re-check."""
        registry = self.registry.current() if self.registry else None
        self.policy.check_engine_models(peer.role, peer.engine_origin, models, registry, model_hash=peer.model_hash)

    @staticmethod
    def _check_self_signed(cert: x509.Certificate, key: Ed25519PublicKey) -> None:
        if cert.issuer != cert.subject:
            raise AttestationError(
                f"peer certificate is not self-signed: issuer {cert.issuer.rfc4514_string()!r} "
                f"differs from subject {cert.subject.rfc4514_string()!r}"
            )
        if cert.signature_algorithm_oid != SignatureAlgorithmOID.ED25519:
            raise AttestationError(
                f"peer certificate signature algorithm is {cert.signature_algorithm_oid.dotted_string}, "
                "expected Ed25519"
            )
        try:
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        except InvalidSignature:
            raise AttestationError(
                "peer certificate is not self-signed: its signature does not verify with its own key"
            ) from None


def read_ratls_extensions(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """(quote, encoded claims); refuses unknown critical extensions and non-critical RA-TLS ones."""
    try:
        extensions = list(cert.extensions)
    except (ValueError, x509.DuplicateExtension) as e:
        raise AttestationError(f"peer certificate extensions are malformed: {e}") from None
    found: dict[x509.ObjectIdentifier, bytes] = {}
    for ext in extensions:
        if ext.oid in (OID_QUOTE, OID_CLAIMS):
            if not ext.critical:
                raise AttestationError(f"RA-TLS extension {ext.oid.dotted_string} must be critical")
            # For an unrecognized extension, public_bytes() is the raw extension value.
            found[ext.oid] = ext.value.public_bytes()
        elif ext.critical:
            raise AttestationError(
                f"peer certificate has an unhandled critical extension {ext.oid.dotted_string}"
            )
    for oid, what in ((OID_QUOTE, "quote"), (OID_CLAIMS, "claims")):
        if oid not in found:
            raise AttestationError(
                f"peer certificate lacks the RA-TLS {what} extension ({oid.dotted_string})"
            )
    return found[OID_QUOTE], found[OID_CLAIMS]


def decode_claims(encoded: bytes) -> Claims:
    try:
        return _CLAIMS_DECODER.decode(encoded)
    except DECODE_ERRORS as e:
        raise AttestationError(f"RA-TLS claims do not decode: {e}") from None
