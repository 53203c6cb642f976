"""`cocoon proxy` that tampers with what it relays (tests only), as the mode file named by COCOON_TAMPER_FILE says
at the moment (re-read per frame, so one process plays every attack):

- `flip`: a byte of the second answer chunk sent to a client is changed (the first, for a one-chunk answer);
- `truncate`: the second chunk loses its last bytes;
- `drop`: the second chunk is not sent;
- `reorder`: the second and third chunks are swapped;
- `replay`: the second chunk is sent twice;
- `cut`: nothing after the second chunk is sent but the end (its end marker as the worker sealed it);
- `rerun`: every request is run once on its worker before the real attempt (the same sealed bytes twice);
- `part-flip`, `part-truncate`, `part-drop`, `part-reorder`, `part-replay`: the same to the second part of a
  request's body (a media job's input) on its way to the worker; `part-cut`: the second part is sent marked last,
  and nothing after it;
- anything else: an honest proxy.

Run as `python tampering_proxy.py --config FILE`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from cocoon.proxy import forwarding
from cocoon.wire import connection
from cocoon.wire.messages import RequestPart, ResponseChunk, ResponseEnd, ResponseError

MODE_FILE = Path(os.environ["COCOON_TAMPER_FILE"])
_send = connection.Connection.send_soon  # every frame goes through it (`send` queues, then drains)
_attempt = forwarding.RunningRequest._attempt
_seen: dict[tuple[int, int], int] = {}
_held: dict[tuple[int, int], Any] = {}
_cut: set[tuple[int, int]] = set()


def mode() -> str:
    try:
        return MODE_FILE.read_text().strip()
    except OSError:
        return ""


def send_soon(self: connection.Connection, msg: Any) -> None:
    if self.peer.role == "worker" and type(msg) is RequestPart and mode().startswith("part-"):
        return tamper(self, msg, mode().removeprefix("part-"))
    if self.peer.role != "client" or type(msg) not in (ResponseChunk, ResponseEnd):
        return _send(self, msg)
    return tamper(self, msg, mode())


def tamper(self: connection.Connection, msg: Any, how: str) -> None:
    """`msg` (an answer's chunk or end to a client, or a body's part to a worker) sent as `how` says."""
    key = (id(self), msg.call_id)
    if type(msg) is RequestPart and msg.last:  # a body's end: what was held goes first
        _seen.pop(key, None)
        if key in _cut:
            _cut.discard(key)
            return None
        if key in _held:
            _send(self, _held.pop(key))
        return _send(self, msg)
    if type(msg) is ResponseEnd:
        _seen.pop(key, None)
        _cut.discard(key)
        if key in _held:
            _send(self, _held.pop(key))
        return _send(self, msg)
    n = _seen[key] = _seen.get(key, 0) + 1
    if key in _cut:
        return None
    if how == "flip" and (n == 2 or (n == 1 and type(msg) is ResponseChunk and not msg.tokens)):
        msg = msgspec.structs.replace(msg, data=bytes([msg.data[0] ^ 1]) + msg.data[1:])
    elif how == "truncate" and n == 2:
        msg = msgspec.structs.replace(msg, data=msg.data[:-3])
    elif how == "drop" and n == 2:
        return None
    elif how == "reorder" and n == 2:
        _held[key] = msg
        return None
    elif how == "reorder" and n == 3:
        _send(self, msg)
        msg = _held.pop(key)
    elif how == "replay" and n == 2:
        _send(self, msg)
    elif how == "cut" and n == 2:
        _cut.add(key)
        if type(msg) is RequestPart:
            msg = msgspec.structs.replace(msg, last=True)
    return _send(self, msg)


async def attempt(self: forwarding.RunningRequest, worker: Any, deadline: float) -> str:
    if mode() == "rerun":
        call = await worker.conn.request(self.req)
        while type(await call.next(30)) not in (ResponseEnd, ResponseError):
            pass
    return await _attempt(self, worker, deadline)


connection.Connection.send_soon = send_soon  # type: ignore[method-assign]
forwarding.RunningRequest._attempt = attempt  # type: ignore[method-assign]

if __name__ == "__main__":
    from cocoon.cli import main

    sys.argv = ["cocoon", "proxy", *sys.argv[1:]]  # role_process(script=...) passes `--config FILE`
    main()
