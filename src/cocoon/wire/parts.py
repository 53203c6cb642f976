"""A request body in parts, and its pace in both directions (protocol version 3).

A `parts` request (the media workload's input) is followed by RequestPart frames; its answer comes back in
ResponseChunks. Neither side may run ahead of the other by more than `WINDOW` frames: the caller sends a part only
while fewer than WINDOW of its parts are untaken (the callee's PartAck says how many it took), and the callee sends
a chunk only while fewer than WINDOW of its chunks are untaken (the caller's ChunkAck). A relay (the proxy) takes a
part only once the next hop took it, so every process holds at most WINDOW frames of a call, whatever the body's
size: memory is bounded end to end by the slowest hop.

`Credit` is the sender's side, `PartQueue` the receiver's.
"""

from __future__ import annotations

import asyncio
from collections import deque

from cocoon.wire.messages import RequestPart

PART_BYTES = 256 * 1024  # the data of one part or chunk of a `parts` request
WINDOW = 8  # frames a sender may have untaken by its receiver


class Credit:
    """How far a sender may run ahead: `wait` returns once fewer than WINDOW frames it sent are untaken. A receiver
    may ask for the frames again from the first (a later `attempt`: the proxy moved a job to another worker); the
    count then starts again, and a sender still on an earlier attempt is told to stop."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.sent = 0
        self.taken = 0
        self.attempt = 0
        self._moved = asyncio.Event()
        self._failed = False

    async def wait(self, attempt: int = 0) -> bool:
        """Until one more frame of `attempt` may be sent (True), or the receiver asked for a later attempt (False);
        ConnectionError when the credit was failed (the link or call ended)."""
        while self.sent - self.taken >= self.window and self.attempt == attempt:
            if self._failed:
                raise ConnectionError("the receiver is gone")
            self._moved.clear()
            await self._moved.wait()
        if self._failed:
            raise ConnectionError("the receiver is gone")
        return self.attempt == attempt

    async def moved_on(self, attempt: int) -> int:
        """Once the receiver asks for an attempt after `attempt`: its number; ConnectionError when the credit was
        failed first."""
        while self.attempt <= attempt:
            if self._failed:
                raise ConnectionError("the receiver is gone")
            self._moved.clear()
            await self._moved.wait()
        return self.attempt

    def spend(self) -> None:
        self.sent += 1

    def took(self, taken: int, attempt: int = 0) -> None:
        """The receiver says it took `taken` frames of `attempt` so far (cumulative; an older count, or one of an
        earlier attempt, changes nothing; a later attempt starts the count again)."""
        if attempt > self.attempt:
            self.attempt, self.sent, self.taken = attempt, 0, 0
            self._moved.set()
        elif attempt < self.attempt:
            return
        if taken > self.taken:
            self.taken = min(taken, self.sent)
            self._moved.set()

    def fail(self) -> None:
        self._failed = True
        self._moved.set()


class PartQueue:
    """The parts of one call's body as they arrive, at most WINDOW of them; `feed` returns False for a part the
    sender had no credit for (or one after the last), which ends the call: its sender broke the protocol."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.taken = 0  # parts handed out by `next`
        self.ended = False  # the last part arrived
        self._parts: deque[RequestPart | None] = deque()
        self._arrived = asyncio.Event()

    def feed(self, part: RequestPart) -> bool:
        if self.ended or len(self._parts) >= self.window:
            return False
        self.ended = part.last
        self._parts.append(part)
        self._arrived.set()
        return True

    def abort(self) -> None:
        """No more parts will come (the call ended): a waiting `next` gets None."""
        self._parts.append(None)
        self._arrived.set()

    async def next(self) -> RequestPart | None:
        """The next part, in order; None when the body was aborted."""
        while not self._parts:
            self._arrived.clear()
            await self._arrived.wait()
        part = self._parts.popleft()
        if part is not None:
            self.taken += 1
        else:
            self._parts.appendleft(None)  # every later next() says so too
        return part


def split(data: bytes, size: int = PART_BYTES) -> list[bytes]:
    """`data` in pieces of at most `size` bytes (one empty piece for no data)."""
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]
