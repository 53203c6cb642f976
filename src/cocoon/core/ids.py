"""Request ids: one per API request, chosen by the client API (or kept from the caller), followed through
every process's log as the `request_id` field and carried on the wire in `Request.request_id`."""

from __future__ import annotations

import re
import uuid

REQUEST_ID_HEADER = "x-request-id"
# Safe to log and to put in a header as is: no spaces, quotes or control characters.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_request_id() -> str:
    return uuid.uuid4().hex


def is_request_id(value: str) -> bool:
    return _WELL_FORMED.fullmatch(value) is not None


def request_id_from(header: str | None) -> str:
    """The caller's own id when it is well-formed (so its logs and ours share it), a new one otherwise."""
    return header if header is not None and is_request_id(header) else new_request_id()
