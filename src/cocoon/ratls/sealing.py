"""Sealed keys: long-lived keys (node identity, wallet, voucher signing) that survive restarts and are bound to
the image and role.

A key service holds a platform secret and derives

    key = HKDF-SHA256(ikm=platform_secret, salt="cocoon sealed key v2",
                      info=len(role) || role || len(image) || image_hash || key_name)

where role and image_hash are the requester's *verified* role and image hash (from its RA-TLS certificate), never
values it merely asks for. So the same code in the same role on the same platform gets the same key after every
restart, while other code, or the same image started in another role, gets another key: one image that can serve
as worker and as proxy never obtains the proxy's keys while it runs as a worker.
The key travels HPKE-encrypted (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
ChaCha20-Poly1305) to the X25519 key in the requester's attested claims, with the requester's certificate
hash and the key name in the HPKE info: only the attested process can open it, and only as that key.

For `fake` attestation the platform secret is a local file (mode 0600) in the state directory: it proves
nothing (as fake attestation proves nothing) but exercises the same path. A node without attestation (`none`: a
client on an ordinary server) has no image: `derive_key` binds its keys to the role and name alone under that
local secret (a machine-bound key, no key service involved).
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey, OpenError

from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.fsutil import SECRET_MODE, create_once, private_dir
from cocoon.ratls.cert import CertVerifier, Identity

SEALED_KEY_LEN = 32
PLATFORM_SECRET_FILE = "platform-secret"
_SALT = b"cocoon sealed key v2"  # v2: the role is bound too
_HPKE_INFO = b"cocoon sealed key delivery v1\0"
_SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)
_ENC_LEN = 32  # X25519 encapsulated key


def local_platform_secret(state_dir: Path) -> bytes:
    """The fake platform's secret: created once (32 random bytes, mode 0600), then read back. When two first
    starts race, both end up with the one secret that won."""
    path = private_dir(state_dir) / PLATFORM_SECRET_FILE
    secret = create_once(path, secrets.token_bytes(SEALED_KEY_LEN), SECRET_MODE)
    if len(secret) < SEALED_KEY_LEN:
        raise ValueError(f"platform secret {path} has {len(secret)} bytes, expected {SEALED_KEY_LEN}")
    return secret


def derive_key(platform_secret: bytes, role: str, image_hash: bytes | None, key_name: str) -> bytes:
    """The sealed key `key_name` of `role` running `image_hash` (None: a node without an image). Only a key
    service calls this with values it verified; every part is length-prefixed, so no two requests share an
    input."""
    name = _check_key_name(key_name)
    image = image_hash or b""
    info = bytes([len(role)]) + role.encode() + bytes([len(image)]) + image + name
    hkdf = HKDF(algorithm=hashes.SHA256(), length=SEALED_KEY_LEN, salt=_SALT, info=info)
    return hkdf.derive(platform_secret)


def _check_key_name(key_name: str) -> bytes:
    name = key_name.encode()
    if not name or len(name) > 255:
        raise ValueError(f"key name {key_name!r} must be 1 to 255 bytes of UTF-8")
    return name


def _hpke_info(cert_sha256: bytes, name: bytes) -> bytes:
    return _HPKE_INFO + cert_sha256 + name


class SealedKeyService:
    """Hands role- and image-bound keys to requesters whose RA-TLS certificate `verifier` accepts."""

    def __init__(self, platform_secret: bytes, verifier: CertVerifier) -> None:
        if len(platform_secret) < SEALED_KEY_LEN:
            raise ValueError(f"platform secret has {len(platform_secret)} bytes, expected at least {SEALED_KEY_LEN}")
        self._secret = platform_secret
        self.verifier = verifier

    def seal_for(self, cert_der: bytes, key_name: str, now: float | None = None) -> bytes:
        """The key `key_name` of the certificate's role and image, encrypted to the certificate's HPKE key: what
        the service sends back. AttestationError if the requester is refused."""
        _check_key_name(key_name)
        return self.seal_for_peer(self.verifier.verify(cert_der, now), key_name)

    def seal_for_peer(self, peer: PeerIdentity, key_name: str) -> bytes:
        """The same for a peer already verified (the key service's RA-TLS handshake did it)."""
        if peer.image_hash is None:
            raise AttestationError(f"attestation kind {peer.kind!r} has no image hash: no sealed key is bound to it")
        return seal_secret(peer, key_name, derive_key(self._secret, peer.role, peer.image_hash, key_name))

    def request(self, identity: Identity, key_name: str, now: float | None = None) -> bytes:
        """In-process request: the sealed key for `identity`'s role and image, as the requester recovers it."""
        return open_sealed_key(self.seal_for(identity.cert_der, key_name, now), identity, key_name)


def seal_secret(peer: PeerIdentity, key_name: str, secret: bytes) -> bytes:
    """`secret` encrypted to the verified peer's HPKE key, bound to its certificate and to `key_name`."""
    name = _check_key_name(key_name)
    if not peer.hpke_public_key:
        raise AttestationError("requester's claims carry no HPKE public key to encrypt the sealed key to")
    return encrypt_to(peer.hpke_public_key, _hpke_info(peer.cert_sha256, name), secret)


def encrypt_to(public_key: bytes, info: bytes, plaintext: bytes) -> bytes:
    """HPKE base mode to a raw X25519 public key: the encapsulated key, then the ciphertext."""
    enc, sender = _SUITE.create_sender_context(_SUITE.kem.deserialize_public_key(public_key), info=info)
    return enc + sender.seal(plaintext)


def decrypt_with(private_key: X25519PrivateKey, info: bytes, envelope: bytes) -> bytes:
    """Opens what `encrypt_to` made for `private_key`'s public half (ValueError when it does not open)."""
    enc, ciphertext = envelope[:_ENC_LEN], envelope[_ENC_LEN:]
    try:
        receiver = _SUITE.create_recipient_context(enc, KEMKey.from_pyca_cryptography_key(private_key), info=info)
        return receiver.open(ciphertext)
    except (OpenError, ValueError) as e:
        raise ValueError(str(e) or type(e).__name__) from None


def open_sealed_key(envelope: bytes, identity: Identity, key_name: str) -> bytes:
    """The requester's side: decrypts what `SealedKeyService.seal_for` returned for this identity."""
    if identity.hpke_key is None:
        raise ValueError("this identity has no HPKE key (make_identity(..., hpke_key=...)) to open sealed keys")
    info = _hpke_info(hashlib.sha256(identity.cert_der).digest(), _check_key_name(key_name))
    try:
        key = decrypt_with(identity.hpke_key, info, envelope)
    except ValueError as e:
        raise AttestationError(f"sealed key {key_name!r} does not open with this identity's HPKE key: {e}") from None
    if len(key) != SEALED_KEY_LEN:
        raise AttestationError(f"sealed key {key_name!r} has {len(key)} bytes, expected {SEALED_KEY_LEN}")
    return key
