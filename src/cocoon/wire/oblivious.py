"""What travels inside Oblivious HTTP between a requester (`cocoon client --via-relay`, the SDK) and the gateway
on the proxy, and how the relay hands it on (docs/ARCHITECTURE.md §1, "Through a relay").

Inside the encapsulation is a Binary HTTP request whose content is the wire `Request` exactly as the client API
would send it to a proxy (MessagePack), or a models query; the answer is a Binary HTTP response whose content is
the answers the proxy would have sent on a link, as frames (`wire/frames.py`). The relay carries the
encapsulated bytes to the proxy as the body of a `Request` to `OHTTP_ENDPOINT` on its own attested link: it pays
for them, and it sees sizes and timing only.

The gateway's key configurations reach requesters through the relay, signed by the proxy's RA-TLS key
(`SignedKeys`): a requester verifies the proxy's certificate (its attestation, against its own policy) and the
signature before it encapsulates anything, so a relay cannot hand out a key of its own.
"""

from __future__ import annotations

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cocoon.attest.types import AttestationError
from cocoon.core.errors import DECODE_ERRORS, ApiError, ErrorCode
from cocoon.ohttp import bhttp
from cocoon.ohttp.encap import OhttpError
from cocoon.ohttp.keys import KeyConfig, KeyConfigError, decode_keys
from cocoon.ratls.cert import CertVerifier, Identity
from cocoon.wire import frames
from cocoon.wire.messages import Answer, Message, ModelsQuery, Request

OHTTP_ENDPOINT = "ohttp"  # Request.endpoint of an encapsulated request, relay -> proxy
OHTTP_CHUNKED_ENDPOINT = "ohttp-chunked"  # the same, chunked: its answer comes back chunk by chunk
OHTTP_KEYS_ENDPOINT = "ohttp-keys"  # Request.endpoint asking the gateway for its signed key configuration
AUTHORITY = b"cocoon"
REQUEST_PATH = b"/cocoon/request"
MODELS_PATH = b"/cocoon/models"
CONTENT_TYPE = b"application/vnd.cocoon.wire+msgpack"
_KEYS_LABEL = b"cocoon ohttp keys v1\0"

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)
_models_decoder = msgspec.msgpack.Decoder(ModelsQuery)

# what each reason an encapsulation cannot be opened is answered with
_OHTTP_ERRORS = {
    "malformed": (400, ErrorCode.OHTTP_MALFORMED),
    "unknown_key": (422, ErrorCode.OHTTP_UNKNOWN_KEY),
    "unsupported_suite": (400, ErrorCode.OHTTP_UNSUPPORTED_SUITE),
    "replayed": (400, ErrorCode.OHTTP_REPLAYED),
    "decrypt_failed": (400, ErrorCode.OHTTP_DECRYPT_FAILED),
}


def ohttp_api_error(exc: OhttpError) -> ApiError:
    status, code = _OHTTP_ERRORS.get(exc.reason, (400, ErrorCode.OHTTP_MALFORMED))
    return ApiError(status, f"encapsulated request refused: {exc}", code=code)


# -- the inner request -----------------------------------------------------------------------------------------
def inner_request(req: Request) -> bytes:
    return bhttp.encode_request(bhttp.BhttpRequest(
        b"POST", b"https", AUTHORITY, REQUEST_PATH, [(b"content-type", CONTENT_TYPE)], _encoder.encode(req)))


def inner_models(query: ModelsQuery | None = None) -> bytes:
    query = query if query is not None else ModelsQuery(call_id=0)
    return bhttp.encode_request(bhttp.BhttpRequest(
        b"POST", b"https", AUTHORITY, MODELS_PATH, [(b"content-type", CONTENT_TYPE)], _encoder.encode(query)))


def read_inner(data: bytes) -> Request | ModelsQuery:
    """The request a requester encapsulated; ApiError (400 `ohttp_malformed`) naming what is wrong otherwise."""
    try:
        req = bhttp.decode_request(data)
    except bhttp.BhttpError as exc:
        raise ApiError(400, f"the encapsulated request is not Binary HTTP: {exc}",
                       code=ErrorCode.OHTTP_MALFORMED) from None
    if req.method != b"POST" or req.path not in (REQUEST_PATH, MODELS_PATH):
        raise ApiError(400, f"the encapsulated request must be POST {REQUEST_PATH.decode()} or "
                            f"{MODELS_PATH.decode()}", code=ErrorCode.OHTTP_MALFORMED)
    try:
        if req.path == MODELS_PATH:
            return msgspec.structs.replace(_models_decoder.decode(req.content), call_id=0)
        return _request_decoder.decode(req.content)
    except DECODE_ERRORS as exc:
        raise ApiError(400, f"the encapsulated request's content is not a cocoon request: {str(exc)[:200]}",
                       code=ErrorCode.OHTTP_MALFORMED) from None


# -- the inner answer ------------------------------------------------------------------------------------------
def inner_response(answers: list[Answer]) -> bytes:
    return bhttp.encode_response(bhttp.BhttpResponse(
        200, [(b"content-type", CONTENT_TYPE)], b"".join(frames.encode(a) for a in answers)))


def read_answers(data: bytes) -> list[Message]:
    """The answers inside a gateway's inner response; ApiError (502) when it holds anything else."""
    try:
        res = bhttp.decode_response(data)
        answers = frames.FrameReader().feed(res.content) if res.status == 200 else None
    except (bhttp.BhttpError, frames.FrameError) as exc:
        raise ApiError(502, f"the gateway's encapsulated answer is unreadable: {exc}",
                       code=ErrorCode.UPSTREAM_ERROR) from None
    if not answers:
        raise ApiError(502, "the gateway's encapsulated answer holds no answer", code=ErrorCode.UPSTREAM_ERROR)
    return answers


# -- the gateway's key configurations, signed by the proxy -----------------------------------------------------
class SignedKeys(msgspec.Struct, frozen=True):
    keys: bytes  # application/ohttp-keys
    cert: bytes  # the proxy's RA-TLS certificate (DER)
    signature: bytes  # by the certificate's key over _KEYS_LABEL || keys

    @classmethod
    def sign(cls, identity: Identity, keys: bytes) -> SignedKeys:
        return cls(keys, identity.cert_der, identity.private_key.sign(_KEYS_LABEL + keys))

    def encode(self) -> bytes:
        return _encoder.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> SignedKeys:
        try:
            return msgspec.msgpack.decode(data, type=cls)
        except DECODE_ERRORS as exc:
            raise AttestationError(f"the gateway's signed keys are unreadable: {str(exc)[:200]}") from None

    def verify(self, verifier: CertVerifier) -> KeyConfig:
        """The gateway's current key configuration, once the proxy's certificate passes `verifier` (its
        attestation, against the requester's policy) and its key signed these keys; AttestationError otherwise."""
        peer = verifier.verify(self.cert)
        if peer.role != "proxy":
            raise AttestationError(f"the gateway's keys are signed by a {peer.role}, not a proxy")
        try:
            Ed25519PublicKey.from_public_bytes(peer.public_key).verify(self.signature, _KEYS_LABEL + self.keys)
            return decode_keys(self.keys)[0]
        except InvalidSignature:
            raise AttestationError("the gateway's keys are not signed by the attested proxy's key") from None
        except KeyConfigError as exc:
            raise AttestationError(f"the gateway's signed keys hold no usable key configuration: {exc}") from None
