"""One timer per call: first token, silence between tokens, and the deadline, each with its own code."""

from __future__ import annotations

import asyncio

from cocoon.proxy.watchdog import Watchdog
from cocoon.wire import frames
from cocoon.wire.connection import Call
from cocoon.wire.messages import Cancel, ResponseChunk, ResponseError
from cocoon.wire.protocol import LinkProtocol


class Link:
    """One open link's protocol state, without I/O; the frames its calls send are kept in `sent`."""

    def __init__(self) -> None:
        self.proto = LinkProtocol(name="proxy", peer_name="w1")
        self.data: list[bytes] = []

    @property
    def sent(self) -> list[object]:
        return list(frames.FrameReader().feed(b"".join(self.data)))


def open_call() -> tuple[Call, Link]:
    link = Link()
    call = Call(link.proto, link.data.append)
    assert call.call_id == 1
    return call, link


async def test_no_first_token_in_time_cancels_the_call_and_says_so() -> None:
    call, conn = open_call()
    loop = asyncio.get_running_loop()
    dog = Watchdog(call, "w1", first_token_s=0.05, idle_s=10, deadline=loop.time() + 10)
    msg = await asyncio.wait_for(call.next(), 1)
    assert isinstance(msg, ResponseError) and msg.code == "first_token_timeout" and msg.status == 504
    assert "w1 sent no first token within 0.1s" in msg.message
    assert [type(m) for m in conn.sent] == [Cancel]
    dog.stop()


async def test_silence_mid_answer_is_an_idle_timeout_and_frames_keep_it_alive() -> None:
    call, _ = open_call()
    loop = asyncio.get_running_loop()
    dog = Watchdog(call, "w1", first_token_s=0.05, idle_s=0.1, deadline=loop.time() + 10)
    dog.answer_started()
    for _ in range(4):  # 0.2 s of steady frames: longer than the idle limit, never silent for it
        await asyncio.sleep(0.05)
        call.queue.put_nowait(ResponseChunk(call_id=1, data=b"x"))
        await call.next()
        dog.touch()
    msg = await asyncio.wait_for(call.next(), 1)
    assert isinstance(msg, ResponseError) and msg.code == "idle_timeout"
    dog.stop()


async def test_the_deadline_wins_when_it_comes_first_and_stop_disarms() -> None:
    call, _ = open_call()
    loop = asyncio.get_running_loop()
    dog = Watchdog(call, "w1", first_token_s=None, idle_s=10, deadline=loop.time() + 0.05)
    msg = await asyncio.wait_for(call.next(), 1)
    assert isinstance(msg, ResponseError) and msg.code == "request_timeout"
    dog.stop()
    quiet, _ = open_call()
    Watchdog(quiet, "w1", first_token_s=0.05, idle_s=0.05, deadline=loop.time() + 0.05).stop()
    await asyncio.sleep(0.1)
    assert quiet.queue.empty()
