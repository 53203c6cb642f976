"""The log handler: lines of one loop turn leave in one write, in order; warnings and lines logged outside a loop
leave at once; nothing waits past a flush (the process's exit)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator

import pytest

from cocoon.runtime import JsonFormatter, TurnHandler


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def _logger(fd: int) -> tuple[logging.Logger, TurnHandler]:
    handler = TurnHandler(fd)
    handler.setFormatter(JsonFormatter("proxy", "p1"))
    logger = logging.getLogger(f"test-turn-handler-{fd}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler


def _read(fd: int) -> list[dict]:
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 1 << 20)
    except BlockingIOError:
        data = b""
    return [json.loads(line) for line in data.decode().splitlines()]


def test_lines_of_one_turn_wait_for_its_end_then_leave_in_order(pipe: tuple[int, int]) -> None:
    r, w = pipe
    logger, _ = _logger(w)

    async def main() -> list[list[dict]]:
        seen = []
        logger.info("one", extra={"fields": {"n": 1}})
        logger.info("two")
        seen.append(_read(r))  # still in this turn: nothing written yet
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(_read(r))
        return seen

    during, after = asyncio.run(main())
    assert during == []
    assert [e["msg"] for e in after] == ["one", "two"]
    assert after[0]["n"] == 1 and after[0]["role"] == "proxy" and after[0]["node"] == "p1"


def test_a_warning_goes_at_once_with_what_waited_before_it(pipe: tuple[int, int]) -> None:
    r, w = pipe
    logger, _ = _logger(w)

    async def main() -> list[dict]:
        logger.info("first")
        logger.warning("bad", extra={"fields": {"path": os.path}})  # not JSON: logged as its text
        return _read(r)

    lines = asyncio.run(main())
    assert [e["msg"] for e in lines] == ["first", "bad"]
    assert lines[1]["level"] == "warning" and isinstance(lines[1]["path"], str)


def test_outside_a_loop_and_at_flush_nothing_waits(pipe: tuple[int, int]) -> None:
    r, w = pipe
    logger, handler = _logger(w)
    logger.info("no loop")
    assert [e["msg"] for e in _read(r)] == ["no loop"]

    async def main() -> None:
        logger.info("pending")
        handler.flush()  # what logging.shutdown does at exit

    asyncio.run(main())
    assert [e["msg"] for e in _read(r)] == ["pending"]
