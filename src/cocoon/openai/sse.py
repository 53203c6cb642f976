"""Server-sent events as OpenAI streams them: `data: <json>` events ended by `data: [DONE]`.

Written and read only here, so the client API, the engines' HTTP server and the upstream engine agree on the
framing.
"""

from __future__ import annotations

HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DONE_PAYLOAD = b"[DONE]"
DONE = b"data: [DONE]\n\n"


def event(payload: bytes) -> bytes:
    """One SSE event carrying `payload` (a JSON document, which never holds a raw newline)."""
    return b"data: " + payload + b"\n\n"


def looks_like_stream(body: bytes) -> bool:
    """Whether a whole answer body is an SSE stream (its first event's `data:`) rather than one JSON document."""
    return body.lstrip().startswith(b"data:")


def payloads(text: bytes) -> list[bytes]:
    """The `data` of every event of a whole SSE text, in order, without the final `[DONE]`."""
    events = SSEDecoder().feed(text if text.endswith(b"\n\n") else text + b"\n\n")
    return [e for e in events if e != DONE_PAYLOAD]


class SSEDecoder:
    """Turns a byte stream into the `data` of each server-sent event, however the stream was chunked.

    Lines end with LF or CRLF (every OpenAI-compatible server uses one of them); fields other than `data`
    and comment lines carry nothing an OpenAI stream needs.
    """

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the unfinished last line, kept in pieces to stay linear
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        self._partial.append(chunk)
        if b"\n" not in chunk:
            return []
        *lines, rest = b"".join(self._partial).split(b"\n")
        self._partial = [rest] if rest else []
        events = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events
