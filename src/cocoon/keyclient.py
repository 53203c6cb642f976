"""Asking a key service (`cocoon keys`, keys/) for sealed keys over RA-TLS: the protocol and the requester's side.

One exchange per connection: the requester's RA-TLS certificate (role, image, HPKE key) is verified inside the
handshake, it sends one `KeyRequest` (the role whose keys it wants and their names), and the service answers one
`KeyReply` (an HPKE envelope per name, openable only with the requester's HPKE key: `ratls/sealing.py`) or one
`KeyRefused` with the reason, which the requester raises as `KeyServiceRefused` so the reason reaches its log.

Frames: a 4-byte big-endian length, then one MessagePack message (the wire's framing, but its own small message
set: a key service speaks nothing else, and its peers need nothing of the wire protocol).
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import msgspec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.attest.backends import AttestationBackend
from cocoon.attest.policy import load_policy
from cocoon.attest.types import AttestationError
from cocoon.core.errors import DECODE_ERRORS
from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, make_identity
from cocoon.ratls.sealing import open_sealed_key
from cocoon.wire.dialer import split_address

MAX_MESSAGE = 64 * 1024  # a few names or envelopes: anything larger is not a key exchange
MAX_NAMES = 16
MASTER = "master"  # the name under which one key service instance asks another for the master secret itself
TIMEOUT_S = 10.0
REQUESTER_LIFETIME_S = 300  # the short-lived certificate that asks (its HPKE key opens the answers)


class KeyRequest(msgspec.Struct, tag="key_request", forbid_unknown_fields=False):
    role: str  # whose keys: must be the role the requester's certificate attests
    names: list[str]


class KeyReply(msgspec.Struct, tag="key_reply"):
    envelopes: list[bytes]  # one per name, in order


class KeyRefused(msgspec.Struct, tag="key_refused"):
    reason: str


KeyMessage = KeyRequest | KeyReply | KeyRefused
_decoder = msgspec.msgpack.Decoder(KeyMessage)
_encoder = msgspec.msgpack.Encoder()


class KeyServiceError(ConnectionError):
    """The key service could not be reached or answered nonsense; the message says which."""


class KeyServiceRefused(AttestationError):
    """The key service refused this node; the message carries its reason."""


def encode(msg: KeyMessage) -> bytes:
    body = _encoder.encode(msg)
    return len(body).to_bytes(4, "big") + body


async def receive(stream: tls.TlsStream) -> KeyMessage:
    """The one message the peer sends (KeyServiceError if it closes first, sends too much or garbage)."""
    buf = bytearray()
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        if len(buf) >= 4 and int.from_bytes(buf[:4], "big") > MAX_MESSAGE:
            raise KeyServiceError(f"a key exchange message of {int.from_bytes(buf[:4], 'big')} bytes is over the "
                                  f"{MAX_MESSAGE}-byte limit")
        data = await stream.read()
        if not data:
            raise KeyServiceError("the peer closed the connection before its message was complete")
        buf += data
    size = int.from_bytes(buf[:4], "big")
    if len(buf) != 4 + size:
        raise KeyServiceError("the peer sent more than one message")
    try:
        return _decoder.decode(bytes(buf[4:]))
    except DECODE_ERRORS as exc:
        raise KeyServiceError(f"undecodable key exchange message: {str(exc)[:200]}") from None


async def request_keys(address: str, role: str, backend: AttestationBackend, names: list[str], *,
                       policy: str, timeout_s: float = TIMEOUT_S) -> dict[str, bytes]:
    """The keys `names` of `role` for the code `backend` attests, from the key service at `address`, which this
    node's `policy` must accept in role `keys` (a key service that is not genuine would know every key it hands
    out). KeyServiceRefused with the service's reason, KeyServiceError when it cannot be asked."""
    hpke_key = X25519PrivateKey.generate()
    identity = make_identity(role, backend, lifetime_s=REQUESTER_LIFETIME_S, hpke_key=hpke_key)
    verifier = CertVerifier(load_policy(policy), {"keys"})
    host, port = split_address(address)
    try:
        stream = await tls.connect(host, port, identity, verifier, timeout=timeout_s)
    except TimeoutError:
        raise KeyServiceError(f"key service {address} did not complete a handshake within {timeout_s:.0f}s") from None
    except tls.HandshakeError as exc:
        raise KeyServiceError(f"key service {address} refused the handshake or was refused: {exc}") from None
    except OSError as exc:
        raise KeyServiceError(f"cannot reach key service {address}: {exc.strerror or exc}") from None
    try:
        stream.write(encode(KeyRequest(role=role, names=names)))
        await stream.drain()
        answer = await asyncio.wait_for(receive(stream), timeout_s)
    except TimeoutError:
        raise KeyServiceError(f"key service {address} did not answer within {timeout_s:.0f}s") from None
    except OSError as exc:
        raise KeyServiceError(f"key service {address} dropped the connection: {exc}") from None
    finally:
        await stream.close()
    if isinstance(answer, KeyRefused):
        raise KeyServiceRefused(f"key service {address} refused {role} keys {', '.join(names)}: {answer.reason}")
    if not isinstance(answer, KeyReply) or len(answer.envelopes) != len(names):
        raise KeyServiceError(f"key service {address} answered {type(answer).__name__} without one key per name")
    return {name: open_sealed_key(env, identity, name) for name, env in zip(names, answer.envelopes, strict=True)}


def fetch_keys(address: str, role: str, backend: AttestationBackend, names: list[str], *,
               policy: str, timeout_s: float = TIMEOUT_S) -> dict[str, bytes]:
    """`request_keys` for blocking callers (a node's keys are read as it is built, maybe inside a running event
    loop): run on an event loop of its own in a worker thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, request_keys(address, role, backend, names, policy=policy,
                                                     timeout_s=timeout_s)).result()


