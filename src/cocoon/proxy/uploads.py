"""A `parts` request's body passing through the proxy (the media workload's input; wire/parts.py).

Parts are taken from the client only as fast as the worker takes them: a part is acknowledged to the client once
it was sent to the worker within the worker's credit, so the proxy holds at most one window of parts per request.
The answer's chunks are paced the same way the other way round: the client's ChunkAcks are passed on to the
worker's call. A request whose parts already went to a worker cannot move to another one (the parts are gone).
"""

from __future__ import annotations

import contextlib

from cocoon.wire.connection import Call, Connection
from cocoon.wire.messages import PartAck, RequestPart
from cocoon.wire.parts import PartQueue


class Upload:
    def __init__(self) -> None:
        self.parts = PartQueue()
        self.forwarded = 0  # parts sent to a worker: once any was, the request stays on that worker
        self._call: Call | None = None
        self._chunks_taken = 0

    def feed(self, part: RequestPart) -> bool:
        """A part from the client; False when it sent more than its credit (a protocol violation)."""
        return self.parts.feed(part)

    def chunks_taken(self, taken: int) -> None:
        """The client took `taken` chunks of the answer: the worker may send more."""
        self._chunks_taken = max(self._chunks_taken, taken)
        if self._call is not None:
            self._call.ack_chunks(self._chunks_taken)

    async def pump(self, worker: Connection, call: Call, client: Connection, client_call_id: int) -> None:
        """Send the client's parts to the worker's `call` as the worker's credit allows, acknowledging each to the
        client once sent; ends at the last part, or quietly when either side goes away (the relay sees why)."""
        self._call = call
        with contextlib.suppress(ConnectionError):
            while True:
                part = await self.parts.next()
                if part is None:
                    return
                await worker.send_part(call, part.data, part.last)
                self.forwarded += 1
                client.send_nowait(PartAck(call_id=client_call_id, taken=self.forwarded))
                if part.last:
                    return

    def close(self) -> None:
        self.parts.abort()
