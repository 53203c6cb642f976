"""The one error of sealing: an `ApiError` whose code and message name what was wrong."""

from __future__ import annotations

from cocoon.core.errors import ApiError, ErrorCode


class SealError(ApiError):
    """A sealed request or answer that cannot be used (malformed, changed, replayed, sealed to other keys)."""

    def __init__(self, status: int, message: str, code: ErrorCode) -> None:
        super().__init__(status, message, code=code, type="invalid_request_error" if status < 500 else "api_error")
