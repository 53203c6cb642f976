"""Request and response encapsulation (RFC 9458 §4).

Request: `hdr = key_id ‖ kem_id ‖ kdf_id ‖ aead_id`, `info = "message/bhttp request" ‖ 0x00 ‖ hdr`,
`enc, ctx = SetupBaseS(pkR, info)`, `enc_request = hdr ‖ enc ‖ ctx.Seal("", request)`.

Response: `secret = ctx.Export("message/bhttp response", max(Nn, Nk))`, a random `response_nonce` of that
length, `prk = Extract(enc ‖ response_nonce, secret)`, `key = Expand(prk, "key", Nk)`,
`nonce = Expand(prk, "nonce", Nn)`, `enc_response = response_nonce ‖ Seal(key, nonce, "", response)`.

Only the side holding the HPKE context (the requester, the gateway) can open or make the response; a relay in
between sees sizes only.

Chunked (draft-ietf-ohai-chunked-ohttp, `message/ohttp-chunked-req` / `-res`): the same with the labels
"message/bhttp chunked request" / "... response"; the request's chunks are `Length (i) ‖ ciphertext` ended by a
zero length and the final chunk sealed with the AAD "final" (a requester here sends one final chunk); the response
is `response_nonce` then chunks sealed with `aead_nonce XOR counter`, the last one with AAD "final", so that a
relay can neither drop, reorder nor cut short the answer unnoticed (`ChunkOpener`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKeyPair
from pyhpke.context_interface import ContextInterface

from cocoon.core.errors import CocoonError
from cocoon.ohttp.bhttp import decode_varint, encode_varint
from cocoon.ohttp.keys import (
    AEAD_CHACHA20_POLY1305,
    AEAD_KEY_LEN,
    AEAD_NONCE_LEN,
    KDF_HKDF_SHA256,
    PUBLIC_KEY_LEN,
    GatewayKey,
    KeyConfig,
)

REQUEST_MEDIA_TYPE = "message/ohttp-req"
RESPONSE_MEDIA_TYPE = "message/ohttp-res"
CHUNKED_REQUEST_MEDIA_TYPE = "message/ohttp-chunked-req"
CHUNKED_RESPONSE_MEDIA_TYPE = "message/ohttp-chunked-res"
REQUEST_LABEL = b"message/bhttp request"
RESPONSE_LABEL = b"message/bhttp response"
CHUNKED_REQUEST_LABEL = b"message/bhttp chunked request"
CHUNKED_RESPONSE_LABEL = b"message/bhttp chunked response"
_FINAL = b"final"
HEADER_LEN = 7


class OhttpError(ValueError, CocoonError):
    """An encapsulated message that cannot be opened. `reason` is a short word for counters and error codes:
    malformed | unknown_key | unsupported_suite | replayed | decrypt_failed | truncated."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _suite(kdf_id: int, aead_id: int) -> CipherSuite:
    if kdf_id != KDF_HKDF_SHA256 or aead_id not in AEAD_KEY_LEN:
        raise OhttpError("unsupported_suite", f"KDF {kdf_id:#06x} / AEAD {aead_id:#06x} is not supported")
    return CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId(aead_id))


def _aead(aead_id: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return ChaCha20Poly1305(key) if aead_id == AEAD_CHACHA20_POLY1305 else AESGCM(key)


def _header(key_id: int, kem_id: int, kdf_id: int, aead_id: int) -> bytes:
    return struct.pack(">BHHH", key_id, kem_id, kdf_id, aead_id)


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869), for at most one block: every length here is ≤ 32."""
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


@dataclass
class ResponseKeys:
    """The HPKE context and `enc` of one exchange: what opens (requester) or seals (gateway) its response."""

    context: ContextInterface
    enc: bytes
    aead_id: int
    chunked: bool = False

    def _key_nonce(self, response_nonce: bytes) -> tuple[bytes, bytes]:
        nk = AEAD_KEY_LEN[self.aead_id]
        label = CHUNKED_RESPONSE_LABEL if self.chunked else RESPONSE_LABEL
        secret = self.context.export(label, max(nk, AEAD_NONCE_LEN))
        prk = hmac.new(self.enc + response_nonce, secret, hashlib.sha256).digest()  # HKDF-Extract(salt, ikm)
        return _expand(prk, b"key", nk), _expand(prk, b"nonce", AEAD_NONCE_LEN)

    @property
    def nonce_len(self) -> int:
        return max(AEAD_KEY_LEN[self.aead_id], AEAD_NONCE_LEN)

    def seal_response(self, response: bytes, response_nonce: bytes | None = None) -> bytes:
        """The gateway's side: `enc_response` for `response` (a fixed nonce only for test vectors)."""
        response_nonce = secrets.token_bytes(self.nonce_len) if response_nonce is None else response_nonce
        key, nonce = self._key_nonce(response_nonce)
        return response_nonce + _aead(self.aead_id, key).encrypt(nonce, response, b"")

    def open_response(self, enc_response: bytes) -> bytes:
        """The requester's side: the response, or OhttpError when it was not sealed for this exchange."""
        n = self.nonce_len
        if len(enc_response) < n + 16:
            raise OhttpError("malformed", f"an encapsulated response is at least {n + 16} bytes, "
                                          f"not {len(enc_response)}")
        key, nonce = self._key_nonce(enc_response[:n])
        try:
            return _aead(self.aead_id, key).decrypt(nonce, enc_response[n:], b"")
        except InvalidTag:
            raise OhttpError("decrypt_failed", "the encapsulated response does not open: it was changed on the "
                                               "way or sealed for another request") from None


    def chunk_sealer(self, response_nonce: bytes | None = None) -> ChunkSealer:
        """The gateway's side of a chunked response (a fixed nonce only for tests)."""
        response_nonce = secrets.token_bytes(self.nonce_len) if response_nonce is None else response_nonce
        return ChunkSealer(response_nonce, *self._key_nonce(response_nonce), self.aead_id)

    def chunk_opener(self) -> ChunkOpener:
        """The requester's side of a chunked response."""
        return ChunkOpener(self)


def _chunk_nonce(base: bytes, counter: int) -> bytes:
    return bytes(a ^ b for a, b in zip(base, counter.to_bytes(len(base), "big"), strict=True))


class ChunkSealer:
    """Seals a chunked response chunk by chunk: `head` first, then each `seal(chunk)`, then `seal(last, final=True)`."""

    def __init__(self, response_nonce: bytes, key: bytes, nonce: bytes, aead_id: int) -> None:
        self.head = response_nonce
        self._aead = _aead(aead_id, key)
        self._nonce = nonce
        self._counter = 0
        self.finished = False

    def seal(self, chunk: bytes, *, final: bool = False) -> bytes:
        if self.finished:
            raise OhttpError("malformed", "a chunked response has nothing after its final chunk")
        ct = self._aead.encrypt(_chunk_nonce(self._nonce, self._counter), chunk, _FINAL if final else b"")
        self._counter += 1
        self.finished = final
        return encode_varint(0) + ct if final else encode_varint(len(ct)) + ct


class ChunkOpener:
    """Opens a chunked response as its bytes arrive: `feed` returns the chunks that became complete; `finished`
    once the final chunk opened. A chunk changed, dropped, reordered, or an answer cut before its final chunk,
    does not open (OhttpError `decrypt_failed`, or `truncated` from `close`)."""

    def __init__(self, keys: ResponseKeys) -> None:
        self._keys = keys
        self._buf = bytearray()
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._nonce = b""
        self._counter = 0
        self._final = False  # the final chunk's indicator was read: the rest of the stream is its ciphertext
        self.finished = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.finished and data:
            raise OhttpError("malformed", "bytes after the final chunk of a chunked response")
        self._buf += data
        out: list[bytes] = []
        if self._aead is None:
            if len(self._buf) < self._keys.nonce_len:
                return out
            key, self._nonce = self._keys._key_nonce(bytes(self._buf[:self._keys.nonce_len]))
            self._aead = _aead(self._keys.aead_id, key)
            del self._buf[:self._keys.nonce_len]
        while not self._final and self._buf:
            try:
                length, used = decode_varint(bytes(self._buf[:8]))
            except ValueError:
                break  # the length itself is not all here yet
            if length == 0:
                self._final = True
                del self._buf[:used]
                break
            if len(self._buf) < used + length:
                break
            out.append(self._open(bytes(self._buf[used:used + length]), b""))
            del self._buf[:used + length]
        return out

    def close(self) -> bytes:
        """The final chunk, once the response's bytes have all arrived."""
        if not self._final or self._aead is None:
            raise OhttpError("truncated", "the chunked response ended before its final chunk: it was cut short")
        last = self._open(bytes(self._buf), _FINAL)
        self.finished = True
        self._buf.clear()
        return last

    def _open(self, ct: bytes, aad: bytes) -> bytes:
        assert self._aead is not None
        try:
            plain = self._aead.decrypt(_chunk_nonce(self._nonce, self._counter), ct, aad)
        except InvalidTag:
            raise OhttpError("decrypt_failed", f"chunk {self._counter} of the response does not open: it was changed, "
                                               "dropped or reordered on the way") from None
        self._counter += 1
        return plain


def encapsulate_request(config: KeyConfig, request: bytes, *, ephemeral: bytes | None = None,
                        chunked: bool = False) -> tuple[bytes, ResponseKeys]:
    """`enc_request` for `request` to the gateway's `config`, and the keys that open its response. `ephemeral`
    (a raw X25519 private key) only for test vectors."""
    kdf_id, aead_id = config.usable_suite()
    suite = _suite(kdf_id, aead_id)
    hdr = _header(config.key_id, config.kem_id, kdf_id, aead_id)
    pkr = suite.kem.deserialize_public_key(config.public_key)
    eks = None
    if ephemeral is not None:
        sk = suite.kem.deserialize_private_key(ephemeral)
        eks = KEMKeyPair(sk, suite.kem.deserialize_public_key(GatewayKey.from_private(0, ephemeral).config.public_key))
    label = CHUNKED_REQUEST_LABEL if chunked else REQUEST_LABEL
    enc, ctx = suite.create_sender_context(pkr, label + b"\x00" + hdr, eks=eks)
    if chunked:  # one final chunk: a requester here has the whole request at hand
        return hdr + enc + encode_varint(0) + ctx.seal(request, _FINAL), ResponseKeys(ctx, enc, aead_id, True)
    return hdr + enc + ctx.seal(request), ResponseKeys(ctx, enc, aead_id)


@dataclass(frozen=True)
class Header:
    key_id: int
    kem_id: int
    kdf_id: int
    aead_id: int
    enc: bytes  # the encapsulated key: unique per request, what replay protection remembers


def read_header(enc_request: bytes) -> Header:
    """The cleartext part of an encapsulated request (key id, suite, `enc`), checked for shape only."""
    if len(enc_request) < HEADER_LEN:
        raise OhttpError("malformed", f"an encapsulated request is at least {HEADER_LEN} bytes, "
                                      f"not {len(enc_request)}")
    key_id, kem_id, kdf_id, aead_id = struct.unpack_from(">BHHH", enc_request)
    npk = PUBLIC_KEY_LEN.get(kem_id)
    if npk is None:
        raise OhttpError("unsupported_suite", f"KEM {kem_id:#06x} is not supported")
    if len(enc_request) < HEADER_LEN + npk + 16:
        raise OhttpError("malformed", "the encapsulated request ends before its ciphertext")
    return Header(key_id, kem_id, kdf_id, aead_id, enc_request[HEADER_LEN:HEADER_LEN + npk])


def decapsulate_request(key: GatewayKey, enc_request: bytes, *, chunked: bool = False
                        ) -> tuple[bytes, ResponseKeys]:
    """The gateway's side: the request inside `enc_request`, sealed to `key`, and the keys for its response."""
    head = read_header(enc_request)
    if head.key_id != key.config.key_id:
        raise OhttpError("unknown_key", f"key id {head.key_id} is not the key {key.config.key_id} given")
    if (head.kdf_id, head.aead_id) not in key.config.suites or head.kem_id != key.config.kem_id:
        raise OhttpError("unsupported_suite", f"KDF {head.kdf_id:#06x} / AEAD {head.aead_id:#06x} is not "
                                              f"offered by key {head.key_id}")
    suite = _suite(head.kdf_id, head.aead_id)
    hdr = enc_request[:HEADER_LEN]
    label = CHUNKED_REQUEST_LABEL if chunked else REQUEST_LABEL
    body = enc_request[HEADER_LEN + len(head.enc):]
    try:
        ctx = suite.create_recipient_context(head.enc, suite.kem.deserialize_private_key(key.private_key),
                                             label + b"\x00" + hdr)
        request = _open_chunks(ctx, body) if chunked else ctx.open(body)
    except OhttpError:
        raise
    except Exception as exc:  # pyhpke raises OpenError, or ValueError on a bad point: either way it does not open
        raise OhttpError("decrypt_failed", "the encapsulated request does not open under the key it names: "
                                           f"it was changed on the way or sealed to another key ({type(exc).__name__})"
                         ) from None
    return request, ResponseKeys(ctx, head.enc, head.aead_id, chunked)


def _open_chunks(ctx: ContextInterface, body: bytes) -> bytes:
    """A chunked request's chunks, opened in order; the last one is the final chunk (after a zero length)."""
    parts = []
    while True:
        try:
            length, used = decode_varint(body)
        except ValueError:
            raise OhttpError("malformed", "the chunked request ends before its final chunk") from None
        if length == 0:
            parts.append(ctx.open(body[used:], _FINAL))
            return b"".join(parts)
        if len(body) < used + length:
            raise OhttpError("malformed", "a chunk of the request is cut short")
        parts.append(ctx.open(body[used:used + length], b""))
        body = body[used + length:]
