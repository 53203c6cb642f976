"""The log handler: lines of one loop turn leave in one write, in order; warnings and lines logged outside a loop
leave at once; nothing waits past a flush (the process's exit)."""

from __future__ import annotations

import asyncio
import json
import logging
import os

from cocoon.runtime import JsonFormatter, TurnHandler


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


def test_lines_of_one_turn_wait_for_its_end_then_leave_in_order() -> None:
    r, w = os.pipe()
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

    try:
        during, after = asyncio.run(main())
        assert during == []
        assert [e["msg"] for e in after] == ["one", "two"]
        assert after[0]["n"] == 1 and after[0]["role"] == "proxy" and after[0]["node"] == "p1"
    finally:
        os.close(r)
        os.close(w)


def test_a_warning_goes_at_once_with_what_waited_before_it() -> None:
    r, w = os.pipe()
    logger, _ = _logger(w)

    async def main() -> list[dict]:
        logger.info("first")
        logger.warning("bad", extra={"fields": {"path": os.path}})  # not JSON: logged as its text
        return _read(r)

    try:
        lines = asyncio.run(main())
        assert [e["msg"] for e in lines] == ["first", "bad"]
        assert lines[1]["level"] == "warning" and isinstance(lines[1]["path"], str)
    finally:
        os.close(r)
        os.close(w)


def test_outside_a_loop_and_at_flush_nothing_waits() -> None:
    r, w = os.pipe()
    logger, handler = _logger(w)
    try:
        logger.info("no loop")
        assert [e["msg"] for e in _read(r)] == ["no loop"]

        async def main() -> None:
            logger.info("pending")
            handler.flush()  # what logging.shutdown does at exit

        asyncio.run(main())
        assert [e["msg"] for e in _read(r)] == ["pending"]
    finally:
        os.close(r)
        os.close(w)
