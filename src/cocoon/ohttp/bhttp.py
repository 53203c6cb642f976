"""Binary HTTP messages (RFC 9292): known-length encoding, known- and indeterminate-length decoding.

A message is framing indicator, control data, header section, content, trailer section, then optional zero
padding. Sections at the end that are empty may be left out (truncation, RFC 9292 §3.8): an encoder here always
leaves them out, which reproduces the RFC 9458 example messages byte for byte; a decoder reads a message cut at
any section boundary as having those sections empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cocoon.core.errors import CocoonError

Fields = list[tuple[bytes, bytes]]

KNOWN_REQUEST, KNOWN_RESPONSE, INDETERMINATE_REQUEST, INDETERMINATE_RESPONSE = 0, 1, 2, 3
MAX_VARINT = (1 << 62) - 1


class BhttpError(ValueError, CocoonError):
    """Bytes that are not a Binary HTTP message of the kind expected (the reason says where)."""


@dataclass(frozen=True)
class BhttpRequest:
    method: bytes
    scheme: bytes
    authority: bytes
    path: bytes
    headers: Fields = field(default_factory=list)
    content: bytes = b""
    trailers: Fields = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return _find(self.headers, name)


@dataclass(frozen=True)
class BhttpResponse:
    status: int
    headers: Fields = field(default_factory=list)
    content: bytes = b""
    trailers: Fields = field(default_factory=list)
    informational: list[tuple[int, Fields]] = field(default_factory=list)  # 1xx responses before this one

    def header(self, name: bytes) -> bytes | None:
        return _find(self.headers, name)


def _find(fields: Fields, name: bytes) -> bytes | None:
    name = name.lower()
    return next((value for key, value in fields if key == name), None)


# -- variable-length integers (RFC 9000 §16) -----------------------------------------------------------------
def encode_varint(n: int) -> bytes:
    if n < 0 or n > MAX_VARINT:
        raise BhttpError(f"integer {n} does not fit a variable-length integer")
    if n < 1 << 6:
        return n.to_bytes(1, "big")
    if n < 1 << 14:
        return (n | 0x4000).to_bytes(2, "big")
    if n < 1 << 30:
        return (n | 0x8000_0000).to_bytes(4, "big")
    return (n | 0xC000_0000_0000_0000).to_bytes(8, "big")


def decode_varint(data: bytes) -> tuple[int, int]:
    """The integer at the start of `data` and how many bytes it took; ValueError when `data` holds only part of
    it (or nothing)."""
    if not data:
        raise ValueError("no bytes")
    size = 1 << (data[0] >> 6)
    if len(data) < size:
        raise ValueError("a variable-length integer cut short")
    return int.from_bytes(data[:size], "big") & ((1 << (8 * size - 2)) - 1), size


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self, what: str) -> int:
        if self.at_end():
            raise BhttpError(f"message ends where {what} should be")
        first = self.data[self.pos]
        size = 1 << (first >> 6)
        if self.pos + size > len(self.data):
            raise BhttpError(f"message ends inside {what}")
        value = int.from_bytes(self.data[self.pos:self.pos + size], "big") & ((1 << (8 * size - 2)) - 1)
        self.pos += size
        return value

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise BhttpError(f"{what} claims {n} bytes, only {len(self.data) - self.pos} are left")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def prefixed(self, what: str) -> bytes:
        return self.take(self.varint(f"the length of {what}"), what)


def _prefixed(data: bytes) -> bytes:
    return encode_varint(len(data)) + data


# -- encoding (known length) ---------------------------------------------------------------------------------
def _field_section(fields: Fields) -> bytes:
    return _prefixed(b"".join(_prefixed(name.lower()) + _prefixed(value) for name, value in fields))


def _truncated(sections: list[bytes]) -> bytes:
    """Header section, content, trailers: those at the end that are empty (one zero byte each) are left out."""
    while sections and sections[-1] == b"\x00":
        sections.pop()
    return b"".join(sections)


def encode_request(req: BhttpRequest) -> bytes:
    control = b"".join(_prefixed(part) for part in (req.method, req.scheme, req.authority, req.path))
    return (encode_varint(KNOWN_REQUEST) + control
            + _truncated([_field_section(req.headers), _prefixed(req.content), _field_section(req.trailers)]))


def encode_response(res: BhttpResponse) -> bytes:
    if not 200 <= res.status <= 599:
        raise BhttpError(f"a final response's status must be 200..599, not {res.status}")
    informational = b"".join(encode_varint(status) + _field_section(fields) for status, fields in res.informational)
    return (encode_varint(KNOWN_RESPONSE) + informational + encode_varint(res.status)
            + _truncated([_field_section(res.headers), _prefixed(res.content), _field_section(res.trailers)]))


# -- decoding --------------------------------------------------------------------------------------------------
def _fields_known(r: _Reader, what: str) -> Fields:
    section = _Reader(r.prefixed(what))
    fields: Fields = []
    while not section.at_end():
        fields.append((section.prefixed("a field name").lower(), section.prefixed("a field value")))
    return fields


def _fields_indeterminate(r: _Reader, what: str) -> Fields:
    fields: Fields = []
    while True:
        name = r.prefixed(f"a field name in {what}")
        if not name:
            return fields
        fields.append((name.lower(), r.prefixed(f"a field value in {what}")))


def _content_indeterminate(r: _Reader) -> bytes:
    chunks = []
    while True:
        chunk = r.prefixed("a content chunk")
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _rest(r: _Reader, known: bool) -> tuple[Fields, bytes, Fields]:
    """Header section, content and trailers; each may be cut off (truncated) at the end of the message."""
    out: list[Fields | bytes] = []
    for what in ("the header section", "the content", "the trailer section"):
        if r.at_end():
            out.append(b"" if what == "the content" else [])
        elif what == "the content":
            out.append(r.prefixed(what) if known else _content_indeterminate(r))
        else:
            out.append(_fields_known(r, what) if known else _fields_indeterminate(r, what))
    if any(r.data[r.pos:]):
        raise BhttpError("bytes after the message are not zero padding")
    headers, content, trailers = out
    return headers, content, trailers  # type: ignore[return-value]


def _framing(r: _Reader, request: bool) -> bool:
    """Whether the message is of known length; BhttpError if it is not a request (response) at all."""
    framing = r.varint("the framing indicator")
    expected = (KNOWN_REQUEST, INDETERMINATE_REQUEST) if request else (KNOWN_RESPONSE, INDETERMINATE_RESPONSE)
    if framing not in expected:
        raise BhttpError(f"framing indicator {framing} is not a {'request' if request else 'response'}")
    return framing == expected[0]


def decode_request(data: bytes) -> BhttpRequest:
    r = _Reader(data)
    known = _framing(r, request=True)
    method, scheme, authority, path = (r.prefixed(what) for what in ("the method", "the scheme", "the authority",
                                                                       "the path"))
    headers, content, trailers = _rest(r, known)
    return BhttpRequest(method, scheme, authority, path, headers, content, trailers)


def decode_response(data: bytes) -> BhttpResponse:
    r = _Reader(data)
    known = _framing(r, request=False)
    informational: list[tuple[int, Fields]] = []
    while True:
        status = r.varint("the status code")
        if not 100 <= status <= 599:
            raise BhttpError(f"status code {status} is outside 100..599")
        if status >= 200:
            break
        informational.append((status, _fields_known(r, "an informational header section") if known
                              else _fields_indeterminate(r, "an informational header section")))
    headers, content, trailers = _rest(r, known)
    return BhttpResponse(status, headers, content, trailers, informational)


def encode_indeterminate_request(req: BhttpRequest, chunks: list[bytes]) -> bytes:
    """The indeterminate-length form (content as chunks), as a streaming sender writes it: for tests of the
    decoder and for peers that stream."""
    control = b"".join(_prefixed(part) for part in (req.method, req.scheme, req.authority, req.path))
    fields = b"".join(_prefixed(n.lower()) + _prefixed(v) for n, v in req.headers) + b"\x00"
    content = b"".join(_prefixed(c) for c in chunks if c) + b"\x00"
    trailers = b"".join(_prefixed(n.lower()) + _prefixed(v) for n, v in req.trailers) + b"\x00"
    return encode_varint(INDETERMINATE_REQUEST) + control + fields + content + trailers
