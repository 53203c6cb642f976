"""Structured output and tool calls for in-process engines: what the answer must look like, and reading it back.

`parse_structure` turns a request's `response_format`, `tools` and `tool_choice` into a `Structure`: the JSON
schema the generated text must follow (an engine turns it into a grammar), a line telling the model what is
expected, and whether the answer is a tool call. The model writes a call as one JSON object
`{"name": <tool>, "arguments": <its arguments>}`; `CallReader` turns that text into OpenAI's `tool_calls`, piece
by piece, so that a streamed call and a whole one carry exactly the same arguments text.

Behaviour (README, "Structured output and tools"):
- `response_format` `json_object`: a JSON object; `json_schema`: a JSON value following `schema`, strict or not.
- `tool_choice` `"required"` or a named function: the answer is one call, its arguments following the tool's
  `parameters`; `"auto"` (the default when tools are given): the model either starts its answer with `{`
  and then writes one call, or answers in plain text; `"none"`: plain text, tools ignored.
- One call per answer (`parallel_tool_calls` is accepted and has no effect); `stop` strings cut text answers only.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from cocoon.core.errors import ApiError, ErrorCode, bad_request

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
# the start of a call as the grammar lets the model write it, up to the first character of the arguments
_CALL_HEAD = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\S)')
_ANY_OBJECT: dict[str, Any] = {"type": "object"}
_NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Structure:
    """What the answer must be. `schema` is the JSON schema its text follows: the format's, or a call's."""

    schema: dict[str, Any]
    instruction: str  # told to the model in the system message
    calls: bool = False  # the schema describes a call (`{"name", "arguments"}`)
    text_allowed: bool = False  # with `calls`: the model may answer in text instead (tool_choice "auto")
    tools: tuple[Tool, ...] = field(default=())

    @property
    def param(self) -> str:
        """The request field an error about this structure names."""
        return "tools" if self.calls else "response_format"


def parse_structure(body: dict[str, Any]) -> Structure | None:
    """The structure a chat request asks for, or None for free text; ApiError (400) naming the bad field."""
    answer_schema = _response_format(body.get("response_format"))
    tools = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    if tools is None:
        if choice not in (None, "none"):
            raise bad_request("`tool_choice` is only allowed when `tools` are given", param="tool_choice")
        return None if answer_schema is None else _format_structure(answer_schema)
    if choice is None:
        choice = "auto"
    if choice == "none":
        return None if answer_schema is None else _format_structure(answer_schema)
    if choice == "auto":
        if answer_schema is not None:
            raise ApiError(400, "this engine cannot combine `response_format` with `tool_choice` \"auto\": "
                                "force a call (`required` or a named function) or drop one of them",
                           code=ErrorCode.UNSUPPORTED_PARAMETER, param="response_format")
        return _call_structure(tools, text_allowed=True)
    if choice == "required":
        return _call_structure(tools, text_allowed=False)
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        chosen = [t for t in tools if t.name == name]
        if not chosen:
            raise bad_request(f"`tool_choice` names the function {name!r}, which is not among `tools`",
                              code=ErrorCode.INVALID_VALUE, param="tool_choice.function.name")
        return _call_structure(tuple(chosen), text_allowed=False)
    raise bad_request('`tool_choice` must be "none", "auto", "required" or '
                      '{"type": "function", "function": {"name": ...}}', code=ErrorCode.INVALID_VALUE,
                      param="tool_choice")


def _response_format(raw: object) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad_request("`response_format` must be an object", code=ErrorCode.INVALID_TYPE, param="response_format")
    kind = raw.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _ANY_OBJECT
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request("`response_format.json_schema` must be an object with a `name`",
                              param="response_format.json_schema")
        schema = spec.get("schema", _ANY_OBJECT)
        if not isinstance(schema, dict):
            raise bad_request("`response_format.json_schema.schema` must be a JSON schema object",
                              code=ErrorCode.INVALID_TYPE, param="response_format.json_schema.schema")
        return schema
    raise bad_request('`response_format.type` must be "text", "json_object" or "json_schema"',
                      code=ErrorCode.INVALID_VALUE, param="response_format.type")


def _tools(raw: object) -> tuple[Tool, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise bad_request("`tools` must be a non-empty array", param="tools")
    tools: list[Tool] = []
    for i, entry in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(entry, dict) or entry.get("type") != "function":
            raise ApiError(400, f"`{where}`: only tools of type \"function\" are supported",
                           code=ErrorCode.UNSUPPORTED_PARAMETER, param=f"{where}.type")
        function = entry.get("function")
        if not isinstance(function, dict):
            raise bad_request(f"`{where}.function` must be an object", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise bad_request(f"`{where}.function.name` must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
                              code=ErrorCode.INVALID_VALUE, param=f"{where}.function.name")
        if any(t.name == name for t in tools):
            raise bad_request(f"two tools are named {name!r}", code=ErrorCode.INVALID_VALUE,
                              param=f"{where}.function.name")
        parameters = function.get("parameters", _NO_ARGUMENTS)
        if not isinstance(parameters, dict):
            raise bad_request(f"`{where}.function.parameters` must be a JSON schema object",
                              code=ErrorCode.INVALID_TYPE, param=f"{where}.function.parameters")
        description = function.get("description")
        tools.append(Tool(name, description if isinstance(description, str) else "", parameters))
    return tuple(tools)


def _format_structure(schema: dict[str, Any]) -> Structure:
    if schema is _ANY_OBJECT:
        return Structure(schema, "Answer with one JSON object and nothing else.")
    return Structure(schema, "Answer with JSON only, following this JSON schema: " + _compact(schema))


def _call_structure(tools: tuple[Tool, ...], *, text_allowed: bool) -> Structure:
    calls = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    listed = "\n".join(f"- {t.name}: {t.description or '(no description)'} Arguments schema: "
                       f"{_compact(t.parameters)}" for t in tools)
    how = 'To call one, answer with only a JSON object {"name": <function name>, "arguments": <its arguments>}.'
    if text_allowed:
        how += " If no function fits, answer in plain text instead."
    elif len(tools) == 1:
        how = f'Call {tools[0].name}: answer with only a JSON object {{"name": "{tools[0].name}", "arguments": ...}}.'
    return Structure(schema, f"You can call these functions:\n{listed}\n{how}", calls=True,
                     text_allowed=text_allowed, tools=tools)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def with_instruction(messages: list[dict[str, str]], instruction: str) -> list[dict[str, str]]:
    """The messages with `instruction` added to the system message (a new one in front when there is none)."""
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        joined = f"{first['content']}\n\n{instruction}" if first["content"] else instruction
        return [{"role": "system", "content": joined}, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def call_text(name: str, arguments: str) -> str:
    """A call in the history (an assistant message's `tool_calls`) written the way the model writes one."""
    return f'{{"name": {json.dumps(name)}, "arguments": {arguments or "{}"}}}'


# --- reading a call back as it is generated ---


@dataclass(frozen=True, slots=True)
class CallStart:
    """The first delta of a call: its id and function name."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class CallArguments:
    """More of the call's arguments text."""

    text: str


CallDelta = CallStart | CallArguments


class CallReader:
    """Turns the generated text of one call into deltas: the name once it is complete, then the arguments.

    Trailing `}` and spaces are held back while generating, since the last of them closes the call itself
    rather than its arguments; `finish` sends the rest of the arguments, which end where their JSON value ends.
    """

    def __init__(self) -> None:
        self.text = ""
        self.id = "call_" + secrets.token_hex(12)
        self.name: str | None = None
        self.arguments = ""
        self.complete = False  # the call's JSON ended (not cut by the token limit)
        self._start = 0  # where the arguments begin in `text`

    def feed(self, piece: str) -> list[CallDelta]:
        self.text += piece
        out: list[CallDelta] = []
        if self.name is None:
            head = _CALL_HEAD.match(self.text)
            if head is None:
                return out
            self.name = json.loads(head.group(1))
            self._start = head.end()
            out.append(CallStart(self.id, self.name))
        safe = len(self.text.rstrip("} \t\r\n"))
        if safe > self._start + len(self.arguments):
            out.append(self._more(self.text[self._start + len(self.arguments):safe]))
        return out

    def finish(self) -> list[CallDelta]:
        if self.name is None:
            return []
        sent = self._start + len(self.arguments)
        try:
            _, end = json.JSONDecoder().raw_decode(self.text, self._start)
            self.complete = True
        except ValueError:  # cut short: the arguments as far as they were written
            end = len(self.text)
        return [self._more(self.text[sent:end])] if end > sent else []

    def _more(self, text: str) -> CallArguments:
        self.arguments += text
        return CallArguments(text)

    def tool_call(self) -> dict[str, Any] | None:
        """The call in OpenAI's message shape, once `finish` was called; None when no name was written."""
        if self.name is None:
            return None
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
