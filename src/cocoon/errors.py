"""One error type for every hop: it travels in wire `Error` frames and becomes OpenAI-style JSON at the API."""

from __future__ import annotations

import msgspec


class ApiError(Exception):
    """An error a user can act on: HTTP status, OpenAI `type` and `code`, and a precise message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def to_json(self) -> bytes:
        return msgspec.json.encode(
            {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}
        )

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist or is not served by any worker",
                    code="model_not_found", param="model")



def upstream_failed(message: str) -> ApiError:
    return ApiError(502, message, type="api_error", code="upstream_error")
