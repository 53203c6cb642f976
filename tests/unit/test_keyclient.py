"""The key exchange's framing (keyclient.py): one bounded message each way; anything else is refused with a reason;
the master backup opens only with the operator's recovery key."""

from __future__ import annotations

import asyncio
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.keyclient import MAX_MESSAGE, KeyRefused, KeyRequest, KeyServiceError, encode, receive
from cocoon.keys.service import decrypt_backup, encrypt_backup


class Stream:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    async def read(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def got(*chunks: bytes) -> object:
    return asyncio.run(receive(Stream(*chunks)))  # type: ignore[arg-type]


def test_a_message_arrives_whole_in_any_pieces() -> None:
    frame = encode(KeyRequest(role="worker", names=["w/identity", "w/wallet"]))
    assert got(frame) == KeyRequest(role="worker", names=["w/identity", "w/wallet"])
    assert got(*(frame[i:i + 3] for i in range(0, len(frame), 3))) == KeyRequest(role="worker",
                                                                              names=["w/identity", "w/wallet"])
    assert got(encode(KeyRefused(reason="no"))) == KeyRefused(reason="no")


@pytest.mark.parametrize(("chunks", "reason"), [
    ((b"\x00\x00",), "closed the connection before its message was complete"),
    (((MAX_MESSAGE + 1).to_bytes(4, "big") + b"x",), "over the"),
    ((b"\x00\x00\x00\x01\xc1",), "undecodable"),
    ((encode(KeyRefused(reason="a")) + b"more",), "more than one message"),
])
def test_a_broken_message_is_refused_with_its_reason(chunks: tuple[bytes, ...], reason: str) -> None:
    with pytest.raises(KeyServiceError, match=reason):
        got(*chunks)


def test_the_master_backup_opens_only_with_the_recovery_key() -> None:
    recovery = X25519PrivateKey.generate()
    master = os.urandom(32)
    backup = encrypt_backup(master, recovery.public_key().public_bytes_raw().hex())
    assert decrypt_backup(backup, recovery.private_bytes_raw()) == master
    with pytest.raises(ValueError):
        decrypt_backup(backup, X25519PrivateKey.generate().private_bytes_raw())
    with pytest.raises(ValueError, match="32-byte X25519"):
        encrypt_backup(master, "abcd")
