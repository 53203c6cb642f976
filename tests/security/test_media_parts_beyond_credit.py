"""Issue 13 (media workload), attack: a client sends a media job's body parts beyond the credit it was given.

A `parts` request's body follows it in RequestPart frames, and a client may have at most WINDOW of them untaken
by the proxy (wire/parts.py); the proxy takes one only once the worker took the one before, so a proxy holds at
most a window of parts per request whatever the file's size. A client that ignores its credit and writes parts as
fast as it can would make the proxy queue all of them in memory (a whole file, per request, per client) while
the worker takes them at its own pace. The proxy refuses the request instead, at the first part beyond the
window, with 400 `invalid_request`, and no worker processes it; the client's other requests still work.

Through a real `cocoon up` proxy and worker; the attacker is a genuine client node whose frames the test writes.
Checked to fail with the proxy's window check removed (`PartQueue.feed` accepting every part): the job was then
transcoded and answered 200.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from cocoon.media import samples
from cocoon.media.job import TranscodeJob
from cocoon.wire.messages import Request, RequestPart, ResponseEnd, ResponseError
from cocoon.wire.parts import WINDOW
from tests.netutil import Net, localnet
from tests.security.wire import Answer, wire_client

PARTS = 5 * WINDOW


async def flood_parts(net: Net, wav: bytes) -> Answer:
    async with wire_client(net) as mallory:
        req = Request(endpoint="media", model="media", body=TranscodeJob(format="ogg", codec="libopus").to_body(),
                      stream=True, include_usage=False, deadline=time.time() + 60, request_id=uuid.uuid4().hex,
                      parts=True, max_media_ms=10_000)
        conn, call = await mallory.api.link.open(req)
        size = -(-len(wav) // PARTS)
        for i in range(PARTS):  # every part at once, never waiting for the proxy's PartAcks
            await conn.send(RequestPart(call_id=call.call_id, data=wav[i * size:(i + 1) * size], last=i == PARTS - 1))
        answer: Answer = []
        while not answer or not isinstance(answer[-1], ResponseEnd | ResponseError):
            answer.append(await call.next(30))  # type: ignore[arg-type]
        return answer


def test_parts_beyond_the_credit_are_refused_and_reach_no_worker(tmp_path: Path) -> None:
    wav = samples.tone_wav(tmp_path / "tone.wav", seconds=2.0).read_bytes()
    with localnet(tmp_path / "state", engine="fake", workers=1) as net:
        answer = asyncio.run(flood_parts(net, wav))
        last = answer[-1]
        assert isinstance(last, ResponseError), [type(m).__name__ for m in answer]
        assert (last.status, last.code) == (400, "invalid_request")
        assert "beyond the credit" in last.message
        worker = net.stats("worker-1")
        assert worker["media"]["jobs"] == 0
        assert net.stats("proxy-1")["media_seconds"] == 0
