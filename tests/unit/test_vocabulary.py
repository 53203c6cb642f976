"""One name and one place per concept (issue 8), read from the source with `ast` so that a relapse fails here:

- error codes are `ErrorCode` members, never string literals, where an `ApiError` or `ResponseError` is made;
- a `ResponseError` is made only by `ResponseError.from_api` (wire/messages.py), the one conversion from ApiError;
- OpenAI's error JSON is written only by `ApiError.to_json` (core/errors.py);
- SSE framing is written only in openai/sse.py;
- the old names of a request id and of the output cap are gone from the code (the wire still spells `call_id`
  `id` and `request_id` `uid` for older peers: those are strings, `msgspec.field(name=...)`, not names).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "src" / "cocoon"
OLD_NAMES = {"uid", "books_id", "client_id", "requested_max_tokens"}


def _sources() -> Iterator[tuple[str, ast.AST]]:
    for path in sorted(ROOT.rglob("*.py")):
        yield str(path.relative_to(ROOT)), ast.parse(path.read_text(), str(path))


SOURCES = list(_sources())


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _where(path: str, node: ast.AST) -> str:
    return f"{path}:{getattr(node, 'lineno', '?')}"


def test_the_source_is_read() -> None:
    assert len(SOURCES) > 100 and any(path == "core/errors.py" for path, _ in SOURCES)


def test_error_codes_are_members_not_literals() -> None:
    found = [_where(path, call) for path, tree in SOURCES for call in ast.walk(tree)
             if isinstance(call, ast.Call) and _called(call) in {"ApiError", "ResponseError"}
             for kw in call.keywords if kw.arg == "code" and isinstance(kw.value, ast.Constant)
             and isinstance(kw.value.value, str)]
    assert not found, f"write these codes as ErrorCode members: {found}"


def test_response_errors_are_made_from_api_errors_only() -> None:
    found = [_where(path, call) for path, tree in SOURCES for call in ast.walk(tree)
             if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "ResponseError"
             and path != "wire/messages.py"]
    assert not found, f"make these with ResponseError.from_api(ApiError(...), call_id): {found}"


def _is_openai_error(node: ast.AST) -> bool:
    if not isinstance(node, ast.Dict):
        return False
    for key, value in zip(node.keys, node.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == "error" and isinstance(value, ast.Dict):
            return any(isinstance(k, ast.Constant) and k.value == "message" for k in value.keys)
    return False


def test_openai_error_json_is_written_once() -> None:
    found = [_where(path, node) for path, tree in SOURCES for node in ast.walk(tree)
             if _is_openai_error(node) and path != "core/errors.py"]
    assert not found, f"answer these with ApiError(...).to_json(): {found}"


def test_sse_framing_is_written_in_openai_sse_only() -> None:
    found = [_where(path, node) for path, tree in SOURCES for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, bytes)
             and node.value.startswith(b"data:") and path != "openai/sse.py"]
    assert not found, f"use cocoon.openai.sse: {found}"


@pytest.mark.parametrize("name", sorted(OLD_NAMES))
def test_old_names_are_gone(name: str) -> None:
    found = [_where(path, node) for path, tree in SOURCES for node in ast.walk(tree)
             if (isinstance(node, ast.Name) and node.id == name)
             or (isinstance(node, ast.Attribute) and node.attr == name)
             or (isinstance(node, ast.arg) and node.arg == name)
             or (isinstance(node, ast.keyword) and node.arg == name)
             or (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name)]
    assert not found, f"`{name}` is an old name (issue 8): {found}"
