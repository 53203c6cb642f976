"""Request ids: one per API request, chosen by the client API (or kept from the caller), carried on the wire in
`Request.request_id` and logged as the `request_id` field on every line about the request, by every process.

A process handling a request enters `request_scope(request_id)`; the log formatter (runtime.py) adds the id to
every line written inside it, including lines of code that never sees the request.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"
# Safe to log and to put in a header as is: no spaces, quotes or control characters.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,64}")

_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def is_request_id(value: str) -> bool:
    return _WELL_FORMED.fullmatch(value) is not None


def request_id_from(header: str | None) -> str:
    """The caller's own id when it is well-formed (so its logs and ours share it), a new one otherwise."""
    return header if header is not None and is_request_id(header) else new_request_id()


@contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    """Lines logged inside (in this task, and in tasks and callbacks started from it) carry `request_id`."""
    token = _current.set(request_id or None)
    try:
        yield
    finally:
        _current.reset(token)


def current_request_id() -> str | None:
    return _current.get()
