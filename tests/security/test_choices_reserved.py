"""Issue 15, item 5: reservations ignored `n`, `best_of` and prompt arrays.

`openai:` engines honour them, so one request could generate up to 128 times what was reserved for it. Here real
workers front a real HTTP server on 127.0.0.1 that honours them: a client speaking the wire protocol whose body asks
for more choices than its request declares is refused by the worker, naming the field, before the engine
generates anything; through the client's API, `n`, `best_of` and prompt arrays are declared, reserved for, and
charged exactly, within the reservation."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

from tests.netutil import Net, localnet
from tests.security.wire import ask, refusal, upstream, upstream_stats, wire_client

MODEL = "upstream-model"


async def undeclared_choices(net: Net) -> list[tuple[int, str | None, str | None]]:
    """Bodies asking for more choices than their request declares (the envelope's default: one)."""
    async with wire_client(net) as mallory:
        return [
            refusal(await ask(mallory, {"model": MODEL, "max_tokens": 5, "n": 8,
                                        "messages": [{"role": "user", "content": "eight for the price of one"}]},
                              request_id="a")),
            refusal(await ask(mallory, {"model": MODEL, "max_tokens": 5, "best_of": 6, "prompt": "six"},
                              endpoint="completions", request_id="b")),
            refusal(await ask(mallory, {"model": MODEL, "max_tokens": 5, "prompt": ["one", "two", "three"]},
                              endpoint="completions", request_id="c")),
            refusal(await ask(mallory, {"model": MODEL, "max_tokens": 5, "n": "8", "prompt": "coerced"},
                              endpoint="completions", request_id="d")),
            refusal(await ask(mallory, {"model": MODEL, "max_tokens": 5, "n": 4, "prompt": "declared"},
                              endpoint="completions", request_id="e", choices=2)),
        ]


def post(net: Net, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(net.api_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_every_choice_a_body_asks_for_is_declared_and_reserved(tmp_path: Path) -> None:
    with upstream(tmp_path) as url, localnet(tmp_path / "state", engine=f"openai:{url}", workers=1) as net:
        assert asyncio.run(undeclared_choices(net)) == [(400, "invalid_value", "n"), (400, "invalid_value", "best_of"),
                                                        (400, "invalid_value", "prompt"),
                                                        (400, "invalid_type", "n"), (400, "invalid_value", "n")]
        assert upstream_stats(url) == {"requests": 0, "generated": 0}  # refused before the engine saw them

        chat = post(net, "/chat/completions", {"model": MODEL, "max_tokens": 5, "n": 4,
                                               "messages": [{"role": "user", "content": "four please"}]})
        completions = post(net, "/completions", {"model": MODEL, "max_tokens": 3, "best_of": 3,
                                                 "prompt": ["first prompt", "second prompt"]})
        assert len(chat["choices"]) == 4 and len(completions["choices"]) == 2
        assert upstream_stats(url) == {"requests": 2, "generated": 4 * 5 + 2 * 3 * 3}
        with sqlite3.connect(net.node_dir("proxy-1") / "proxy-books.sqlite") as db:
            rows = db.execute("SELECT completion_tokens, client_cost FROM requests ORDER BY seqno").fetchall()
        # charged what the engine generated: nothing was beyond what was reserved
        assert rows == [(20, chat["usage"]["cost_nanoton"]), (18, completions["usage"]["cost_nanoton"])]
        assert net.stats("proxy-1")["books"]["usage_beyond_bounds"] == 0
