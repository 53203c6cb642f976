"""A party's wallet: the Ed25519 key it signs with and the address its money sits at.

On the local chain the address is derived from the public key (`local_wallet_address`) and the chain itself keeps
the balance; on TON it is the operator's deployed wallet contract (v4r2), whose address comes from configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from nacl.signing import SigningKey
from pytoniq_core import Address

from cocoon.fsutil import write_atomically

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

    @classmethod
    def load_or_create(cls, path: str | Path, address: str | None = None) -> Wallet:
        """The wallet whose seed is in `path` (32 raw bytes, mode 0600), created on first use. Processes racing to
        create it all end up with the same key: the first link wins and everyone reads it back."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.new")
            write_atomically(tmp, os.urandom(32), 0o600)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            tmp.unlink()
        return cls(path.read_bytes(), address)

    def __repr__(self) -> str:
        return f"Wallet({self.address})"


def raw_address(address: str | Address) -> str:
    """`0:<hex>` for any address form (raw or user-friendly); ValueError for anything else."""
    try:
        parsed = address if isinstance(address, Address) else Address(address)
    except Exception as exc:  # pytoniq raises bare exceptions for malformed addresses
        raise ValueError(f"not a TON address: {address!r}") from exc
    return parsed.to_str(is_user_friendly=False)
