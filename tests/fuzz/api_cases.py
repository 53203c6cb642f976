"""Requests for fuzzing the client's HTTP API, and the one property every answer must have.

Requests are valid bodies of /v1/chat/completions and /v1/completions mutated by choices read from a fuzzer-made
tape (see strategies.py): values replaced by wrong types, huge or negative numbers and nested junk, fields removed
or added, and, on the JSON text, keys repeated, bytes that are not UTF-8, number literals no type holds, nesting
deeper than parsers follow, truncation; then odd methods, paths and headers.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from cocoon.core.errors import ErrorCode
from tests.fuzz.strategies import JUNK, Tape

MODEL = "fake-model"
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
USER = {"role": "user", "content": "tell me something"}

VALID: dict[str, list[dict[str, Any]]] = {
    CHAT: [
        {"model": MODEL, "messages": [USER]},
        {"model": MODEL, "messages": [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
         "max_tokens": 3, "temperature": 0.5, "top_p": 1, "stop": ["\n"], "seed": 7, "user": "u"},
        {"model": MODEL, "messages": [USER], "stream": True, "stream_options": {"include_usage": True},
         "max_completion_tokens": 2},
        {"model": MODEL, "messages": [USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"}],
         "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "auto"},
        {"model": MODEL, "messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,", "detail": "low"}}]}],
         "logit_bias": {"1": -100}, "presence_penalty": -2, "frequency_penalty": 2, "metadata": {"k": "v"},
         "n": 1, "logprobs": False, "stream": False},
    ],
    COMPLETIONS: [
        {"model": MODEL, "prompt": "tell me something"},
        {"model": MODEL, "prompt": "a b", "max_tokens": 2, "echo": False, "stream": True,
         "stream_options": {"include_usage": True}},
        {"model": MODEL, "prompt": [1, 2, 3], "suffix": "s", "n": 1, "best_of": 1, "logprobs": 0},
        {"model": MODEL, "prompt": [[1], [2, 3]], "temperature": 2, "stop": "x", "presence_penalty": 0},
        {"model": MODEL, "prompt": ["a", "b"], "seed": -1, "top_p": 0, "user": ""},
    ],
}

# names the fuzzer writes where a field belongs: the schemas' own, and some they do not know
KEYS = ("model", "messages", "prompt", "role", "content", "stream", "stream_options", "include_usage", "max_tokens",
        "max_completion_tokens", "n", "best_of", "temperature", "tools", "type", "text", "logit_bias", "stop",
        "unknown", "", "Model", "t\u00e9", "\x00")
# values of the wrong type, beyond every bound, or both
VALUES = (*JUNK, 10**30, -(10**30), 2**63, -(2**63) - 1, 4097, 129, 2.5, -2.5, 1e-320, "fake-model", "user",
          "assistant", [USER], {"role": "user"}, {"type": "text"}, "a" * 5000)
# JSON texts no Python type holds as written
LITERALS = (b"1e400", b"-1e400", b"123456789012345678901234567890", b"-0", b"1E+2", b"NaN", b"Infinity",
            b"0x10", b"01", b".5", b"1.", b"true", b"null", b'"\\u0000"', b'"\\ud800"', b'"\\uDFFF\\uD800"')
NOT_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80")

METHODS = ("POST", "POST", "POST", "POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
PATHS = (CHAT, COMPLETIONS, "/v1/models", "/v1/chat/completions/", "/v1/Chat/Completions", "/v1/embeddings",
         "/", "/v1/chat/completions/../completions", "/v1//completions", "/%2e%2e/v1/models", "/v2/completions",
         "/v1/completions?stream=true", "/v1/chat/completions#x")
CONTENT_TYPES = ("application/json", "application/json", "application/json; charset=utf-8", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "application/json; x")
REGIONS = ("", "local", " ", "a" * 65, "\u00e9\u00e8", "\t")  # "local" is the fake worker's region
REQUEST_IDS = ("abc", "a" * 65, "x y", "\u00e9", "", "../../etc")


@dataclass
class Case:
    method: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def region(self) -> str | None:
        return self.headers.get("cocoon-region")


def _nodes(doc: Any) -> list[Any]:
    """Every dict and list in `doc`, root first."""
    out, stack = [], [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict | list):
            out.append(node)
            stack.extend(node.values() if isinstance(node, dict) else node)
    return out


def junk(tape: Tape) -> Any:
    return copy.deepcopy(tape.pick(VALUES))  # a copy: later mutations must not reach the shared value (or loop)


def mutate_doc(doc: Any, tape: Tape) -> Any:
    """`doc` (a fresh copy) with values replaced, removed, added or wrapped."""
    for _ in range(tape.below(4)):
        nodes = _nodes(doc)
        if not nodes:
            return doc
        node = tape.pick(nodes)
        op = tape.below(5)
        if isinstance(node, dict):
            key = tape.pick(sorted(node)) if node and tape.below(3) else tape.pick(KEYS)
            if op == 0:
                node.pop(key, None)
            elif op == 1 and key in node:
                node[key] = [node[key]] if tape.below(2) else {"value": node[key]}
            else:
                node[key] = junk(tape)
        elif node:
            i = tape.below(len(node))
            if op == 0:
                del node[i]
            elif op == 1:
                node.append(copy.deepcopy(node[i]))
            else:
                node[i] = junk(tape)
        else:
            node.append(junk(tape))
    return doc


def mutate_text(text: bytes, tape: Tape) -> bytes:
    """`text` with raw damage JSON-aware code never makes."""
    op = tape.below(9)
    pos = tape.below(len(text) + 1)
    if op == 0:  # a key first in some object
        brace = text.find(b"{", pos)
        brace = brace if brace >= 0 else text.find(b"{")
        pair = json.dumps({tape.pick(KEYS): tape.pick(VALUES)}).encode()[1:-1]
        return text[: brace + 1] + pair + b"," + text[brace + 1 :]
    if op == 1:  # bytes that are not UTF-8, inside a string
        quote = text.find(b'"', pos)
        quote = quote if quote >= 0 else 0
        return text[: quote + 1] + tape.pick(NOT_UTF8) + text[quote + 1 :]
    if op == 2:  # a literal in place of a value
        colon = text.find(b":", pos)
        if colon >= 0:
            end = colon + 1
            while end < len(text) and text[end : end + 1] not in b",}]":
                end += 1
            return text[: colon + 1] + tape.pick(LITERALS) + text[end:]
        return text
    if op == 3:
        return text[:pos]  # truncated
    if op == 4:
        return text[:pos] + tape.blob(6) + text[pos:]
    if op == 5:  # nested deeper than any parser follows
        depth = tape.pick((100, 1000, 100_000))
        return b'{"model": "fake-model", "messages": [' + b"[" * depth + b"]" * depth + b"]}"
    if op == 6:
        return tape.pick((b"\xef\xbb\xbf", b" \n", b"\x00", b"[", b"")) + text + tape.pick((b"", b" ", b"x", b"}"))
    return text


_MARK = "\x00repeated\x00"


def with_repeated_key(doc: Any, tape: Tape) -> bytes:
    """`doc` as JSON text in which one object holds one of its keys twice (same value, or another one)."""
    objects = [node for node in _nodes(doc) if isinstance(node, dict) and node]
    if not objects:
        return json.dumps(doc).encode()
    node = tape.pick(objects)
    key = tape.pick(sorted(node))
    first = json.dumps(node[key])
    second = first if tape.below(2) else json.dumps(junk(tape))
    node[key] = _MARK
    return json.dumps(doc).replace(json.dumps(_MARK), f"{first}, {json.dumps(key)}: {second}", 1).encode()


def make_case(tape: Tape) -> Case:
    method = tape.pick(METHODS) if tape.chance(4) else "POST"
    path = tape.pick(PATHS) if tape.chance(6) else tape.pick((CHAT, COMPLETIONS))
    kind = tape.below(10)
    if kind == 0:  # any bytes at all
        body = tape.blob(40)
    else:
        valid = VALID.get(path, VALID[CHAT])
        doc = mutate_doc(json.loads(json.dumps(tape.pick(valid))), tape) if kind > 1 else tape.pick(valid)
        if kind == 9:
            body = with_repeated_key(doc, tape)
        else:
            body = json.dumps(doc).encode()
            if kind >= 7:
                body = mutate_text(body, tape)
    headers = {"Content-Type": tape.pick(CONTENT_TYPES) if tape.chance(8) else "application/json"}
    if tape.chance(8):
        headers["cocoon-region"] = tape.pick(REGIONS)
    if tape.chance(8):
        headers["x-request-id"] = tape.pick(REQUEST_IDS)
    return Case(method, path, body, headers)


# --- the property ---

ERROR_FIELDS = {"message", "type", "code", "param"}
CODES = {code.value for code in ErrorCode}


def check_error(doc: Any) -> None:
    """An OpenAI-style error whose code is one of ours."""
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    err = doc["error"]
    assert isinstance(err, dict) and set(err) == ERROR_FIELDS, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert err["code"] in CODES, err
    assert err["param"] is None or isinstance(err["param"], str)
    assert "Traceback" not in err["message"]


def check_answer(case: Case, status: int, content_type: str, raw: bytes) -> None:
    """A clean 4xx error, or a valid answer; never a 5xx or a traceback. The one 5xx allowed is the documented
    503 for a region (a valid `cocoon-region` header) no connected worker announces: a worker there may link
    later, so it is capacity, not the request's fault."""
    assert b"Traceback" not in raw
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, raw[:300])
        doc = json.loads(raw) if raw or case.method != "HEAD" else None  # HEAD answers carry no body
        if doc is not None:
            check_error(doc)
        if status >= 500:
            assert status == 503 and case.region not in (None, "", "local"), (case, status, raw[:300])
            assert doc is None or doc["error"]["code"] == ErrorCode.NO_WORKER_AVAILABLE
        return
    assert status == 200, (case, status, raw[:300])
    if content_type.startswith("text/event-stream"):
        events = [ln[len(b"data: "):] for ln in raw.split(b"\n\n") if ln.startswith(b"data: ")]
        assert events and events[-1] == b"[DONE]", raw[-300:]  # an error event would be a failure: none is due
        for event in events[:-1]:
            assert isinstance(json.loads(event)["choices"], list), event
        return
    if case.method == "HEAD":
        assert raw == b""
        return
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    if case.method == "GET":  # the model list, under whatever spelling of its path the router took
        assert doc["object"] == "list" and isinstance(doc["data"], list), doc
    else:
        assert isinstance(doc["choices"], list) and doc["choices"], doc
