"""A `parts` request's body passing through the proxy (the media workload's input; wire/parts.py).

Parts are taken from the client only as fast as the worker takes them: a part is acknowledged to the client once
it was sent to the worker within the worker's credit, so the proxy holds at most one window of parts per request.
The answer's chunks are paced the same way the other way round: the client's ChunkAcks are passed on to the
worker's call.

A job whose parts already went to a worker that then failed (before its answer began) can move to another worker
only if its client sends the body again (`Request.resend_parts`): `restart` asks it to, from the first part, under
the next `attempt` number, and drops what is still on its way from the earlier sending. The hash of the parts sent
to the worker (`digest`) is what the worker's receipt must state (ledger/receipts.py `parts_digest`): sealed parts
for a sealed job, the input itself otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib

from cocoon.ledger.receipts import parts_digest
from cocoon.wire.connection import Call, Connection
from cocoon.wire.messages import PartAck, RequestPart
from cocoon.wire.parts import PartQueue


class Upload:
    def __init__(self) -> None:
        self.parts = PartQueue()
        self.attempt = 0  # the client's sending of the body that is being taken
        self.forwarded = 0  # parts of this sending sent to a worker
        self._hash = hashlib.sha256()  # over the data of those parts
        self._call: Call | None = None
        self._client: Connection | None = None
        self._client_call_id = 0
        self._chunks_taken = 0

    @property
    def moved(self) -> bool:
        """Whether any part of this sending left the queue for a worker: another worker needs the body again."""
        return self.parts.taken > 0

    def feed(self, part: RequestPart) -> bool:
        """A part from the client; False when it sent more than its credit, or a part of a sending not asked for
        (a protocol violation). A part of an earlier sending, still on its way, is dropped."""
        if part.attempt < self.attempt:
            return True
        if part.attempt > self.attempt:
            return False
        return self.parts.feed(part)

    def chunks_taken(self, taken: int) -> None:
        """The client took `taken` chunks of the answer: the worker may send more."""
        self._chunks_taken = max(self._chunks_taken, taken)
        if self._call is not None:
            self._call.ack_chunks(self._chunks_taken)

    def digest(self, body: bytes) -> bytes:
        """The request hash of `body` with the parts forwarded (to the worker of this sending)."""
        return parts_digest(body, self._hash.digest())

    async def pump(self, worker: Connection, call: Call, client: Connection, client_call_id: int) -> None:
        """Send the client's parts to the worker's `call` as the worker's credit allows, acknowledging each to the
        client once sent; ends at the last part, or quietly when either side goes away (the relay sees why)."""
        self._call, self._client, self._client_call_id = call, client, client_call_id
        with contextlib.suppress(ConnectionError):
            while True:
                part = await self.parts.next()
                if part is None:
                    return
                await worker.send_part(call, part.data, part.last)
                self.forwarded += 1
                self._hash.update(part.data)
                client.send_nowait(PartAck(call_id=client_call_id, taken=self.forwarded, attempt=self.attempt))
                if part.last:
                    return

    def restart(self) -> None:
        """Ask the client for the whole body again (the worker that took it failed); the pump has stopped."""
        self.parts.abort()
        self.parts = PartQueue()
        self.attempt += 1
        self.forwarded = 0
        self._hash = hashlib.sha256()
        self._call = None
        self._chunks_taken = 0
        if self._client is not None:
            self._client.send_nowait(PartAck(call_id=self._client_call_id, taken=0, attempt=self.attempt))

    def close(self) -> None:
        self.parts.abort()
