"""A secret at rest (a wallet seed, a voucher key): encrypted under a sealed key (`cocoon.ratls.sealing`), so
the file is useless without the platform's key service, the node's image, role and name.

Layout: one JSON header line naming what the file holds, then a 12-byte nonce and the ChaCha20-Poly1305
ciphertext of the secret, with the header line as associated data (so it cannot be edited either):

    {"sealed": "cocoon/1", "role": "proxy", "key": "proxy-1/voucher-key"}\\n  nonce  ciphertext+tag

The header is in the clear on purpose: tools (`cocoon ledger`) read which role a file belongs to before they ask
for the key that opens it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

FORMAT = "cocoon/1"
LEGACY_SECRET_LEN = 32  # what older versions wrote: the raw seed, nothing else
_NONCE_LEN = 12
_MAX_HEADER = 1024


class SealedFileError(ValueError):
    """A sealed file that cannot be opened here; the message says which and why."""


@dataclass(frozen=True)
class Header:
    role: str
    key_name: str

    def encode(self) -> bytes:
        return json.dumps({"sealed": FORMAT, "role": self.role, "key": self.key_name}).encode() + b"\n"


def seal(sealing_key: bytes, header: Header, secret: bytes) -> bytes:
    """The file contents holding `secret`, encrypted under `sealing_key` (32 bytes)."""
    head = header.encode()
    nonce = os.urandom(_NONCE_LEN)
    return head + nonce + ChaCha20Poly1305(sealing_key).encrypt(nonce, secret, head)


def is_legacy(blob: bytes) -> bool:
    """True for a plain key file written before keys were sealed (32 raw bytes)."""
    return len(blob) == LEGACY_SECRET_LEN


def read_header(blob: bytes, where: str) -> Header:
    """The header of a sealed file, not yet authenticated (`unseal` checks it)."""
    end = blob.find(b"\n", 0, _MAX_HEADER)
    try:
        fields = json.loads(blob[:end]) if end > 0 else None
    except ValueError:
        fields = None
    if not isinstance(fields, dict) or fields.get("sealed") != FORMAT \
            or not isinstance(fields.get("role"), str) or not isinstance(fields.get("key"), str):
        raise SealedFileError(f"{where} is not a sealed key file ({FORMAT})")
    return Header(fields["role"], fields["key"])


def unseal(sealing_key: bytes, blob: bytes, expected: Header, where: str) -> bytes:
    """The secret in `blob`, which must be sealed for `expected` under `sealing_key`."""
    header = read_header(blob, where)
    if header != expected:
        raise SealedFileError(f"{where} holds key {header.key_name!r} of a {header.role}, not key "
                              f"{expected.key_name!r} of a {expected.role}")
    head = header.encode()
    body = blob[len(head):]
    if not blob.startswith(head) or len(body) <= _NONCE_LEN:  # the header's exact bytes are what was sealed
        raise SealedFileError(f"{where} is not a sealed key file ({FORMAT})")
    try:
        return ChaCha20Poly1305(sealing_key).decrypt(body[:_NONCE_LEN], body[_NONCE_LEN:], head)
    except InvalidTag:
        raise SealedFileError(
            f"{where} does not open with the key this node gets from its platform's key service: it was sealed "
            f"on another platform (another platform secret), for another image or role, or it was altered"
        ) from None
