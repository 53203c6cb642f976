"""Key configurations (RFC 9458 §3): what a gateway publishes so that clients can encapsulate to it.

    Key Config { Key Identifier (8), HPKE KEM ID (16), HPKE Public Key (Npk * 8),
                 HPKE Symmetric Algorithms Length (16), HPKE Symmetric Algorithms (32) ... }
    HPKE Symmetric Algorithms { HPKE KDF ID (16), HPKE AEAD ID (16) }

`application/ohttp-keys` (RFC 9458 §3.2) is a sequence of key configurations, each with a 2-byte length
before it. Only DHKEM(X25519, HKDF-SHA256) is spoken here, with HKDF-SHA256 and AES-128-GCM, AES-256-GCM or
ChaCha20-Poly1305.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon.core.errors import CocoonError

KEYS_MEDIA_TYPE = "application/ohttp-keys"
KEM_X25519 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305 = 0x0001, 0x0002, 0x0003
PUBLIC_KEY_LEN = {KEM_X25519: 32}
AEAD_KEY_LEN = {AEAD_AES_128_GCM: 16, AEAD_AES_256_GCM: 32, AEAD_CHACHA20_POLY1305: 32}
AEAD_NONCE_LEN = 12
# what a gateway here offers, preferred first
DEFAULT_SUITES: tuple[tuple[int, int], ...] = ((KDF_HKDF_SHA256, AEAD_AES_128_GCM),
                                               (KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305))


class KeyConfigError(ValueError, CocoonError):
    """Bytes that are not a key configuration this code can use (the reason says why)."""


@dataclass(frozen=True)
class KeyConfig:
    key_id: int
    kem_id: int
    public_key: bytes
    suites: tuple[tuple[int, int], ...]  # (kdf_id, aead_id), the gateway's order of preference

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 255:
            raise KeyConfigError(f"key id {self.key_id} is not one byte")
        if self.kem_id not in PUBLIC_KEY_LEN:
            raise KeyConfigError(f"KEM {self.kem_id:#06x} is not supported (only DHKEM(X25519, HKDF-SHA256))")
        if len(self.public_key) != PUBLIC_KEY_LEN[self.kem_id]:
            raise KeyConfigError(f"public key has {len(self.public_key)} bytes, "
                                 f"the KEM's keys have {PUBLIC_KEY_LEN[self.kem_id]}")
        if not self.suites:
            raise KeyConfigError("a key configuration names at least one KDF and AEAD")

    def encode(self) -> bytes:
        algorithms = b"".join(struct.pack(">HH", kdf, aead) for kdf, aead in self.suites)
        return (struct.pack(">BH", self.key_id, self.kem_id) + self.public_key
                + struct.pack(">H", len(algorithms)) + algorithms)

    @classmethod
    def decode(cls, data: bytes) -> KeyConfig:
        config, rest = _decode_one(data)
        if rest:
            raise KeyConfigError(f"{len(rest)} bytes after the key configuration")
        return config

    def usable_suite(self) -> tuple[int, int]:
        """The first of the gateway's suites this code speaks."""
        for kdf, aead in self.suites:
            if kdf == KDF_HKDF_SHA256 and aead in AEAD_KEY_LEN:
                return kdf, aead
        raise KeyConfigError("the key configuration offers no KDF/AEAD this client supports")


def _decode_one(data: bytes) -> tuple[KeyConfig, bytes]:
    if len(data) < 3:
        raise KeyConfigError("a key configuration is at least 3 bytes")
    key_id, kem_id = struct.unpack_from(">BH", data)
    npk = PUBLIC_KEY_LEN.get(kem_id)
    if npk is None:
        raise KeyConfigError(f"KEM {kem_id:#06x} is not supported (only DHKEM(X25519, HKDF-SHA256))")
    if len(data) < 3 + npk + 2:
        raise KeyConfigError("the key configuration ends inside its public key")
    public_key = data[3:3 + npk]
    (length,) = struct.unpack_from(">H", data, 3 + npk)
    start = 3 + npk + 2
    if length < 4 or length % 4 or start + length > len(data):
        raise KeyConfigError(f"symmetric algorithms length {length} is not a multiple of 4 within the data")
    suites = tuple(struct.unpack_from(">HH", data, start + i) for i in range(0, length, 4))
    return KeyConfig(key_id, kem_id, public_key, suites), data[start + length:]


def encode_keys(configs: list[KeyConfig]) -> bytes:
    """`application/ohttp-keys`: each configuration with its 2-byte length before it."""
    return b"".join(struct.pack(">H", len(c)) + c for c in (config.encode() for config in configs))


def decode_keys(data: bytes) -> list[KeyConfig]:
    configs = []
    while data:
        if len(data) < 2:
            raise KeyConfigError("application/ohttp-keys ends inside a length")
        (length,) = struct.unpack_from(">H", data)
        if len(data) < 2 + length:
            raise KeyConfigError(f"a key configuration claims {length} bytes, {len(data) - 2} are left")
        configs.append(KeyConfig.decode(data[2:2 + length]))
        data = data[2 + length:]
    if not configs:
        raise KeyConfigError("application/ohttp-keys holds no key configuration")
    return configs


@dataclass(frozen=True)
class GatewayKey:
    """A key configuration and the private key behind it (the gateway's side)."""

    config: KeyConfig
    private_key: bytes  # X25519, raw

    @classmethod
    def generate(cls, key_id: int, suites: tuple[tuple[int, int], ...] = DEFAULT_SUITES) -> GatewayKey:
        return cls.from_private(key_id, X25519PrivateKey.generate().private_bytes_raw(), suites)

    @classmethod
    def from_private(cls, key_id: int, private_key: bytes,
                     suites: tuple[tuple[int, int], ...] = DEFAULT_SUITES) -> GatewayKey:
        public = X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)
        return cls(KeyConfig(key_id, KEM_X25519, public, suites), private_key)
