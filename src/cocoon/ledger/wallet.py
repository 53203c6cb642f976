"""A party's wallet: the Ed25519 key it signs with and the address its money sits at.

On the local chain the address is derived from the public key (`local_wallet_address`) and the chain itself keeps
the balance; on TON it is the operator's deployed wallet contract (v4r2), whose address comes from configuration.
A node's seed is kept sealed to it (`cocoon.nodekeys`); this module only signs with it.
"""

from __future__ import annotations

import hashlib

from nacl.signing import SigningKey
from pytoniq_core import Address

_LOCAL_WALLET_DOMAIN = b"cocoon-local-wallet:"


def local_wallet_address(public_key: bytes) -> str:
    return Address((0, hashlib.sha256(_LOCAL_WALLET_DOMAIN + public_key).digest())).to_str(is_user_friendly=False)


class Wallet:
    def __init__(self, seed: bytes, address: str | None = None) -> None:
        if len(seed) != 32:
            raise ValueError(f"a wallet seed is 32 bytes, not {len(seed)}")
        self._key = SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)
        self.address = raw_address(address) if address else local_wallet_address(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data).signature

    def __repr__(self) -> str:
        return f"Wallet({self.address})"


def raw_address(address: str | Address) -> str:
    """`0:<hex>` for any address form (raw or user-friendly); ValueError for anything else."""
    try:
        parsed = address if isinstance(address, Address) else Address(address)
    except Exception as exc:  # pytoniq raises bare exceptions for malformed addresses
        raise ValueError(f"not a TON address: {address!r}") from exc
    return parsed.to_str(is_user_friendly=False)
