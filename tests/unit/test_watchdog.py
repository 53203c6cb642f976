"""One timer per call: first token, silence between tokens, and the deadline, each with its own code."""

from __future__ import annotations

import asyncio

from cocoon.proxy.watchdog import Watchdog
from cocoon.wire.connection import Call
from cocoon.wire.messages import Cancel, ResponseChunk, ResponseError


class StubConnection:
    def __init__(self) -> None:
        self._calls: dict[int, Call] = {}
        self.sent: list[object] = []

    def send_nowait(self, msg: object) -> None:
        self.sent.append(msg)


def open_call() -> tuple[Call, StubConnection]:
    conn = StubConnection()
    call = Call(conn, 7)  # type: ignore[arg-type]
    conn._calls[7] = call
    return call, conn


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
        call.queue.put_nowait(ResponseChunk(call_id=7, data=b"x"))
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
