"""Counting the choices a request makes an engine generate: what its completion is reserved for (issue 15
item 5)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cocoon.openai import schema


@pytest.mark.parametrize(("endpoint", "fields", "expected"), [
    ("chat", {}, (1, "n")),
    ("chat", {"n": 4}, (4, "n")),
    ("completions", {"n": 2, "best_of": 5}, (5, "n")),
    ("completions", {"best_of": 5}, (5, "best_of")),
    ("completions", {"best_of": 0, "n": None}, (1, "n")),
    ("completions", {"prompt": ["a", "b", "c"]}, (3, "prompt")),
    ("completions", {"prompt": [[1, 2], [3]], "n": 3}, (6, "n")),
    ("completions", {"prompt": [1, 2, 3]}, (1, "n")),  # token ids: one prompt
])
def test_choices_are_n_or_best_of_for_each_prompt(endpoint: str, fields: dict[str, Any],
                                                   expected: tuple[int, str]) -> None:
    body: dict[str, Any] = {"model": "m"}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if endpoint == "chat" else {"prompt": "p"})
    body.update(fields)
    assert schema.decode_request(endpoint, msgspec.json.encode(body)).choices() == expected
