"""Error codes and the root of cocoon's exceptions.

`ApiError` is the one error a user sees: it travels in wire `ResponseError` frames (`ResponseError.from_api` /
`to_api`) and becomes OpenAI-style JSON at the API. Every `code` it can carry is an `ErrorCode`; the README's
error section lists them all (a unit test keeps the two equal).
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

# What msgspec raises for bytes that do not decode as the type asked: DecodeError (ValidationError is one), and
# UnicodeDecodeError for a string that is not UTF-8, which it does not wrap (0.22; found by tests/fuzz). Code that
# decodes what a peer or an engine sent catches both, or that peer decides where the exception ends up.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError)


class ErrorCode(StrEnum):
    # the request itself (400 unless noted)
    INVALID_REQUEST = "invalid_request"
    INVALID_JSON = "invalid_json"
    INVALID_TYPE = "invalid_type"
    INVALID_VALUE = "invalid_value"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    DUPLICATE_KEY = "duplicate_key"
    MAX_TOKENS_EXCEEDED = "max_tokens_exceeded"
    PROMPT_TOO_LONG = "prompt_too_long"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    INVALID_REGION = "invalid_region"
    INVALID_API_KEY = "invalid_api_key"  # 401
    HOST_NOT_ALLOWED = "host_not_allowed"  # 403: a keyless API asked under a foreign `Host` (DNS rebinding)
    CROSS_ORIGIN_REQUEST = "cross_origin_request"  # 403: a web page of another origin
    NO_PAYMENT_CHANNEL = "no_payment_channel"  # 402
    INSUFFICIENT_FUNDS = "insufficient_funds"  # 402
    NOT_FOUND = "not_found"  # 404: no such path
    MODEL_NOT_FOUND = "model_not_found"  # 404
    DUPLICATE_REQUEST_ID = "duplicate_request_id"  # 409: one answer per request id, charged once
    REQUEST_TOO_LARGE = "request_too_large"  # 413
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415: a body not sent as application/json
    # media transcoding (cocoon/media)
    INVALID_MEDIA = "invalid_media"  # 400: an upload that is empty, corrupt or not audio/video
    UNSUPPORTED_CODEC = "unsupported_codec"  # 400: a codec no worker can encode, or not into that container
    UNSUPPORTED_FORMAT = "unsupported_format"  # 400: an output container no worker can write
    MEDIA_TOO_LARGE = "media_too_large"  # 413: above the size, duration or resolution limits
    MEDIA_NEEDS_DIRECT_LINK = "media_needs_direct_link"  # 501: a media job on a client sending through a relay
    # sealed requests (issue 10: cocoon/seal)
    SEALED_REQUEST_INVALID = "sealed_request_invalid"  # 400: malformed, changed in transit, or another envelope's
    SEAL_KEY_UNKNOWN = "seal_key_unknown"  # 400: not sealed to this worker's key (a wrong key id)
    SEALED_REQUEST_REPLAYED = "sealed_request_replayed"  # 409 (400 when stale): an encapsulation opened before
    SEALED_ENVELOPE_MISMATCH = "sealed_envelope_mismatch"  # 400: the envelope marks deterministic a body that is not
    SEAL_KEYS_STALE = "seal_keys_stale"  # 503: no linked worker holds a key the request was sealed to
    NO_ATTESTED_WORKER = "no_attested_worker"  # 503: no worker of the model passed the client's own checks
    SEALED_ANSWER_INVALID = "sealed_answer_invalid"  # 502: a sealed answer changed, reordered, cut short
    # limits and capacity
    CONCURRENCY_LIMIT_EXCEEDED = "concurrency_limit_exceeded"  # 429
    TOKENS_PER_MINUTE_EXCEEDED = "tokens_per_minute_exceeded"  # 429
    NO_WORKER_AVAILABLE = "no_worker_available"  # 503
    QUEUE_FULL = "queue_full"  # 503
    PROXY_UNAVAILABLE = "proxy_unavailable"  # 503
    PROXY_CONNECT_TIMEOUT = "proxy_connect_timeout"  # 503
    # timeouts (504)
    FIRST_TOKEN_TIMEOUT = "first_token_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    REQUEST_TIMEOUT = "request_timeout"
    # failures past the client (5xx)
    PROXY_LINK_LOST = "proxy_link_lost"
    WORKER_FAILED = "worker_failed"
    UPSTREAM_ERROR = "upstream_error"
    ENGINE_ERROR = "engine_error"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    ENGINE_BAD_RESPONSE = "engine_bad_response"
    INTERNAL_ERROR = "internal_error"
    # Oblivious HTTP (the relay and the gateway, issue 10): an encapsulated request that cannot be served
    OHTTP_MALFORMED = "ohttp_malformed"  # 400: not an encapsulated request (or an inner one) at all
    OHTTP_UNKNOWN_KEY = "ohttp_unknown_key"  # 422: sealed to a key the gateway no longer (or never) had
    OHTTP_UNSUPPORTED_SUITE = "ohttp_unsupported_suite"  # 400: a KEM, KDF or AEAD the key does not offer
    OHTTP_REPLAYED = "ohttp_replayed"  # 400: this very encapsulation was received before
    OHTTP_DECRYPT_FAILED = "ohttp_decrypt_failed"  # 400: changed on the way, or sealed to another key

    @classmethod
    def known(cls, value: str) -> ErrorCode | None:
        """The member spelled `value`, or None when it is not one of ours (another server's vocabulary)."""
        try:
            return cls(value)
        except ValueError:
            return None

    @classmethod
    def label(cls, value: str | None) -> str:
        """`value` as a metric or stats label: the code itself when it is one of ours, else `other` (and `error`
        when there is none), so that the codes a peer makes up cannot mint label values without bound."""
        if value is None:
            return "error"
        return value if cls.known(value) is not None else "other"


class CocoonError(Exception):
    """Root of cocoon's own exceptions (attestation, ledger, wire, API errors)."""


class ApiError(CocoonError):
    """An error a user can act on: HTTP status, OpenAI `type` and `code`, and a precise message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: ErrorCode | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        # ErrorCode(...) refuses a code that is not one of ours, at the place that makes the error
        self.code = ErrorCode(code) if code is not None else None
        self.param = param
        self.retry_after = retry_after

    def with_message(self, message: str, *, retry_after: int | None) -> ApiError:
        """The same error (status, type, code, param) told with another message: what a hop that adds context to an
        error it passes on answers."""
        return ApiError(self.status, message, type=self.type, code=self.code, param=self.param,
                        retry_after=retry_after)

    def to_json(self) -> bytes:
        return msgspec.json.encode(
            {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}
        )

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def bad_request(message: str, *, code: ErrorCode = ErrorCode.INVALID_REQUEST, param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist or is not served by any worker",
                    code=ErrorCode.MODEL_NOT_FOUND, param="model")


def upstream_failed(message: str) -> ApiError:
    return ApiError(502, message, type="api_error", code=ErrorCode.UPSTREAM_ERROR)
