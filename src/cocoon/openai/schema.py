"""Field-by-field validation of OpenAI request bodies, as msgspec structs.

The client's HTTP API decodes each body here with its own limits and refuses what fails with an OpenAI-style
400 that names the offending field. The worker decodes the body it is handed once more with the same structs
(a peer may skip the client's checks) and gives its engine the typed request, never a dict. Optional fields
default to `msgspec.UNSET`, so encoding a request gives back exactly the fields the user sent.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import msgspec
from msgspec import UNSET, Meta, UnsetType

from cocoon.core.errors import ApiError, ErrorCode

Endpoint = Literal["chat", "completions"]
ENDPOINTS: tuple[str, ...] = get_args(Endpoint)
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# Fields an engine without tool support must refuse (`functions`/`function_call` are their legacy names).
TOOL_FIELDS = ("tools", "tool_choice", "response_format", "functions", "function_call")


def _asks_for_tools(name: str, value: Any) -> bool:
    """Whether a tool field's value asks for more than plain text (`tool_choice: "none"` and a `text`
    response format do not, so any engine may answer them)."""
    if name == "response_format":
        return not (isinstance(value, dict) and value.get("type") == "text")
    return not (name == "tool_choice" and value == "none")


def _number(ge: int, le: int) -> Any:
    # A union keeps an integer an integer, so a forwarded body carries `1`, not `1.0`, where the user sent 1.
    return Annotated[int, Meta(ge=ge, le=le)] | Annotated[float, Meta(ge=ge, le=le)]


Temperature = _number(0, 2)
Probability = _number(0, 1)
Penalty = _number(-2, 2)
LogitBias = dict[str, _number(-100, 100)]
Choices = Annotated[int, Meta(ge=1, le=128)]
# Refusing 0 here spares the engine a request that could only produce nothing; the upper bound is
# per-client configuration, checked after decoding.
TokenLimit = Annotated[int, Meta(ge=1)]
TokenId = Annotated[int, Meta(ge=0)]
TokenIds = Annotated[list[TokenId], Meta(min_length=1)]
JsonObject = dict[str, Any]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


# --- content parts: tagged by "type", so an unknown type or a stray field inside a part is refused ---


class TextPart(_Strict, tag_field="type", tag="text"):
    text: str


class ImageUrl(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | UnsetType = UNSET


class ImagePart(_Strict, tag_field="type", tag="image_url"):
    image_url: ImageUrl


class InputAudio(_Strict):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Strict, tag_field="type", tag="input_audio"):
    input_audio: InputAudio


class FileRef(_Strict):
    file_data: str | UnsetType = UNSET
    file_id: str | UnsetType = UNSET
    filename: str | UnsetType = UNSET


class FilePart(_Strict, tag_field="type", tag="file"):
    file: FileRef


class RefusalPart(_Strict, tag_field="type", tag="refusal"):
    refusal: str


UserPart = TextPart | ImagePart | AudioPart | FilePart
AssistantPart = TextPart | RefusalPart


# --- assistant tool calls echoed back in the history ---


class FunctionCall(_Strict):
    name: str
    arguments: str


class FunctionToolCall(_Strict, tag_field="type", tag="function"):
    id: str
    function: FunctionCall


class CustomCall(_Strict):
    name: str
    input: str


class CustomToolCall(_Strict, tag_field="type", tag="custom"):
    id: str
    custom: CustomCall


class AudioRef(_Strict):
    id: str


# --- messages: tagged by "role", each role with the fields the OpenAI API gives it ---


class SystemMessage(_Strict, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | UnsetType = UNSET


class DeveloperMessage(_Strict, tag_field="role", tag="developer"):
    content: str | list[TextPart]
    name: str | UnsetType = UNSET


class UserMessage(_Strict, tag_field="role", tag="user"):
    content: str | list[UserPart]
    name: str | UnsetType = UNSET


class AssistantMessage(_Strict, tag_field="role", tag="assistant"):
    # Null is normal here: an assistant turn that only calls tools has no text.
    content: str | list[AssistantPart] | UnsetType | None = UNSET
    refusal: str | UnsetType | None = UNSET
    name: str | UnsetType = UNSET
    audio: AudioRef | UnsetType | None = UNSET
    tool_calls: list[FunctionToolCall | CustomToolCall] | UnsetType = UNSET
    function_call: FunctionCall | UnsetType | None = UNSET


class ToolMessage(_Strict, tag_field="role", tag="tool"):
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Strict, tag_field="role", tag="function"):
    content: str | None
    name: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage


class StreamOptions(_Strict):
    include_usage: bool | UnsetType = UNSET
    include_obfuscation: bool | UnsetType = UNSET


# --- requests ---


class _Request(_Strict, kw_only=True):
    """What the client, proxy, worker and engines ask of either request kind."""

    endpoint: ClassVar[Endpoint]

    # Renamed so that the `stream` property can answer a plain bool; keyword-only so that subclasses may
    # still declare required fields.
    stream_value: bool | UnsetType | None = msgspec.field(default=UNSET, name="stream")
    stream_options: StreamOptions | UnsetType | None = UNSET

    @property
    def stream(self) -> bool:
        return self.stream_value is True

    @property
    def include_usage(self) -> bool:
        options = self.stream_options
        return isinstance(options, StreamOptions) and options.include_usage is True

    @property
    def uses_tools(self) -> bool:
        return bool(self.engine_features())

    def engine_features(self) -> list[str]:
        """The tool-related fields the request uses (in `TOOL_FIELDS` order): the proxy routes it to engines
        that support them, and engines without that support refuse it."""
        features = []
        for name in TOOL_FIELDS:
            value = getattr(self, name, UNSET)
            if value is not UNSET and _asks_for_tools(name, value):
                features.append(name)
        return features

    def choices(self) -> tuple[int, str]:
        """How many choices the engine generates for this request, and the field that asks for more than one (`n`
        when none does): `n`, or `best_of` when larger (the engine generates that many and returns `n`), for each
        prompt (a `prompt` array of strings or of token-id arrays holds several; one of token ids is one prompt).
        Its completion is reserved for each of them."""
        n, best_of = (getattr(self, name, None) for name in ("n", "best_of"))
        n, best_of = max(n if isinstance(n, int) else 1, 1), max(best_of if isinstance(best_of, int) else 1, 1)
        prompt = getattr(self, "prompt", None)
        prompts = len(prompt) if isinstance(prompt, list) and any(isinstance(p, str | list) for p in prompt) else 1
        param = "n" if n > 1 else "best_of" if best_of > 1 else "prompt" if prompts > 1 else "n"
        return max(n, best_of) * prompts, param

    def to_body(self) -> dict[str, Any]:
        """A plain JSON-ready dict of exactly the fields the user sent, for forwarding."""
        body: dict[str, Any] = msgspec.to_builtins(self)
        return body


class ChatCompletionRequest(_Request):
    endpoint: ClassVar[Endpoint] = "chat"

    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    audio: JsonObject | UnsetType | None = UNSET
    frequency_penalty: Penalty | UnsetType | None = UNSET
    function_call: str | JsonObject | UnsetType = UNSET
    functions: list[JsonObject] | UnsetType = UNSET
    logit_bias: LogitBias | UnsetType | None = UNSET
    logprobs: bool | UnsetType | None = UNSET
    max_completion_tokens: TokenLimit | UnsetType | None = UNSET
    # Renamed so that the `max_tokens` property can answer the output cap (see there).
    max_tokens_value: TokenLimit | UnsetType | None = msgspec.field(default=UNSET, name="max_tokens")
    metadata: dict[str, str] | UnsetType | None = UNSET
    modalities: list[Literal["text", "audio"]] | UnsetType | None = UNSET
    n: Choices | UnsetType | None = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    prediction: JsonObject | UnsetType | None = UNSET
    presence_penalty: Penalty | UnsetType | None = UNSET
    prompt_cache_key: str | UnsetType = UNSET
    prompt_cache_retention: str | UnsetType | None = UNSET
    reasoning_effort: str | UnsetType | None = UNSET
    response_format: JsonObject | UnsetType = UNSET
    safety_identifier: str | UnsetType = UNSET
    seed: int | UnsetType | None = UNSET
    service_tier: str | UnsetType | None = UNSET
    stop: str | list[str] | UnsetType | None = UNSET
    store: bool | UnsetType | None = UNSET
    temperature: Temperature | UnsetType | None = UNSET
    tool_choice: str | JsonObject | UnsetType = UNSET
    tools: list[JsonObject] | UnsetType = UNSET
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | UnsetType | None = UNSET
    top_p: Probability | UnsetType | None = UNSET
    user: str | UnsetType = UNSET
    verbosity: str | UnsetType | None = UNSET
    web_search_options: JsonObject | UnsetType = UNSET

    @property
    def max_tokens(self) -> int | None:
        """The output cap the user asked for, None when unset; `max_completion_tokens` supersedes `max_tokens`."""
        for value in (self.max_completion_tokens, self.max_tokens_value):
            if isinstance(value, int):
                return value
        return None


class CompletionRequest(_Request):
    endpoint: ClassVar[Endpoint] = "completions"

    model: str
    # msgspec allows one array type per union, so the four prompt shapes are typed as one array of mixed
    # items here and checked for uniformity after decoding.
    prompt: str | Annotated[list[str | TokenId | TokenIds], Meta(min_length=1)]
    best_of: Annotated[int, Meta(ge=0, le=20)] | UnsetType | None = UNSET
    echo: bool | UnsetType | None = UNSET
    frequency_penalty: Penalty | UnsetType | None = UNSET
    logit_bias: LogitBias | UnsetType | None = UNSET
    logprobs: Annotated[int, Meta(ge=0, le=5)] | UnsetType | None = UNSET
    max_tokens_value: TokenLimit | UnsetType | None = msgspec.field(default=UNSET, name="max_tokens")
    n: Choices | UnsetType | None = UNSET
    presence_penalty: Penalty | UnsetType | None = UNSET
    seed: int | UnsetType | None = UNSET
    stop: str | list[str] | UnsetType | None = UNSET
    suffix: str | UnsetType | None = UNSET
    temperature: Temperature | UnsetType | None = UNSET
    top_p: Probability | UnsetType | None = UNSET
    user: str | UnsetType = UNSET

    @property
    def max_tokens(self) -> int | None:
        """The output cap the user asked for, None when unset."""
        return self.max_tokens_value if isinstance(self.max_tokens_value, int) else None


OpenAIRequest = ChatCompletionRequest | CompletionRequest
R = TypeVar("R", ChatCompletionRequest, CompletionRequest)

_CHAT_DECODER = msgspec.json.Decoder(ChatCompletionRequest)
_COMPLETION_DECODER = msgspec.json.Decoder(CompletionRequest)


def forwarded_body(request: OpenAIRequest) -> bytes:
    """The body the client API forwards for a decoded request: its fields as sent, re-encoded compactly (what the
    worker runs, and what a receipt's request hash covers)."""
    return msgspec.json.encode(request.to_body())


def decode_request(endpoint: str, raw: bytes) -> OpenAIRequest:
    """Decode a body for `endpoint` with every check that does not depend on a client's configuration; raise
    `ApiError` (400) naming the bad field."""
    if endpoint == "chat":
        return _decode(raw, _CHAT_DECODER)
    if endpoint == "completions":
        return _decode_completion(raw)
    raise unknown_endpoint(endpoint)


def unknown_endpoint(endpoint: str) -> ApiError:
    return ApiError(400, f"unknown endpoint `{endpoint}`: expected chat or completions", code=ErrorCode.INVALID_VALUE,
                    param="endpoint")


def parse_chat_request(raw: bytes, *, max_tokens_limit: int, max_prompt_chars: int) -> ChatCompletionRequest:
    """Decode and validate a `/v1/chat/completions` body; raise `ApiError` (400) naming the bad field."""
    request = _decode(raw, _CHAT_DECODER)
    _check_token_limit("max_tokens", request.max_tokens_value, max_tokens_limit)
    _check_token_limit("max_completion_tokens", request.max_completion_tokens, max_tokens_limit)
    # A JSON text never holds more characters of string than it has bytes, so short bodies skip the count.
    if len(raw) > max_prompt_chars:
        _check_prompt_length("messages", _messages_chars(request.messages), max_prompt_chars)
    return request


def parse_completion_request(
    raw: bytes, *, max_tokens_limit: int, max_prompt_chars: int
) -> CompletionRequest:
    """Decode and validate a `/v1/completions` body; raise `ApiError` (400) naming the bad field."""
    request = _decode_completion(raw)
    _check_token_limit("max_tokens", request.max_tokens_value, max_tokens_limit)
    if len(raw) > max_prompt_chars:
        chars = _prompt_chars(request.prompt) + (len(request.suffix) if isinstance(request.suffix, str) else 0)
        _check_prompt_length("prompt", chars, max_prompt_chars)
    return request


def _decode_completion(raw: bytes) -> CompletionRequest:
    request = _decode(raw, _COMPLETION_DECODER)
    prompt = request.prompt
    if isinstance(prompt, list) and len(set(map(type, prompt))) > 1:
        raise ApiError(
            400,
            "invalid type for `prompt`: expected a string, an array of strings, an array of token ids or "
            "an array of token-id arrays, not a mix of them",
            code=ErrorCode.INVALID_TYPE,
            param="prompt",
        )
    return request


def _decode(raw: bytes, decoder: msgspec.json.Decoder[R]) -> R:
    try:
        request = decoder.decode(raw)
        _check_duplicate_keys(raw, request)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON) from None
    except UnicodeDecodeError as exc:  # msgspec's error for a key or a role that is not UTF-8 (found by tests/fuzz)
        raise ApiError(400, f"request body is not valid JSON: it holds a string that is not UTF-8 ({exc.reason})",
                       code=ErrorCode.INVALID_JSON) from None
    except RecursionError:
        # Loosely typed fields (tools, metadata...) take any JSON, so depth is the parser's to refuse.
        raise ApiError(400, "request body is nested too deeply", code=ErrorCode.INVALID_JSON) from None
    return request


# --- duplicate keys ---
#
# msgspec silently keeps the last of repeated keys, which would let two readers of one body disagree. Finding
# a repeated key takes a slow parse, but ruling one out is a count: re-encoding the decoded request writes
# each distinct key once (omit_defaults means it adds none the user did not send) and a subset of the
# strings, so it holds no more `:` than the raw body, and exactly as many only when no key was repeated and
# dropped. That holds while every `:` is written literally; msgspec never escapes one, so only a raw body
# spelling it `\u003a` (rare) skips the count. Bodies that fail it get the stdlib parse, which has the last word.

_ENCODER = msgspec.json.Encoder()
_ESCAPED_COLON = re.compile(rb"\\u003[aA]")


def _check_duplicate_keys(raw: bytes, request: _Request) -> None:
    if _ESCAPED_COLON.search(raw) is None and raw.count(b":") == _ENCODER.encode(request).count(b":"):
        return
    found = _find_duplicate(raw)
    if found is not None:
        path, key = found
        raise ApiError(
            400, f"duplicate key `{key}` in {path or 'request'}", code=ErrorCode.DUPLICATE_KEY, param=_join(path, key)
        )


class _Pairs(dict[str, Any]):
    duplicate: str | None = None


def _find_duplicate(raw: bytes) -> tuple[str, str] | None:
    """The path of the first object (in document order) that repeats a key, and that key."""
    found = False

    def collect(pairs: list[tuple[str, Any]]) -> _Pairs:
        nonlocal found
        obj = _Pairs(pairs)
        if len(obj) != len(pairs):
            found = True
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    obj.duplicate = key
                    break
                seen.add(key)
        return obj

    tree = json.loads(raw, object_pairs_hook=collect)
    if not found:
        return None
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _Pairs):
            if node.duplicate is not None:
                return path, node.duplicate
            children = [(_join(path, k), v) for k, v in node.items()]
        elif isinstance(node, list):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- limits that depend on this client's configuration ---


def _check_token_limit(name: str, value: int | UnsetType | None, limit: int) -> None:
    if isinstance(value, int) and value > limit:
        raise ApiError(
            400,
            f"`{name}` is {value}, above this client's limit of {limit} tokens",
            code=ErrorCode.MAX_TOKENS_EXCEEDED,
            param=name,
        )


def _check_prompt_length(param: str, chars: int, limit: int) -> None:
    if chars > limit:
        raise ApiError(
            400,
            f"the prompt is {chars} characters long, above this client's limit of {limit}",
            code=ErrorCode.PROMPT_TOO_LONG,
            param=param,
        )


def _messages_chars(messages: list[Message]) -> int:
    chars = 0
    for message in messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, TextPart):
                    chars += len(part.text)
                elif isinstance(part, RefusalPart):
                    chars += len(part.refusal)
        if isinstance(message, AssistantMessage) and isinstance(message.tool_calls, list):
            for call in message.tool_calls:
                if isinstance(call, FunctionToolCall):
                    chars += len(call.function.arguments)
                else:
                    chars += len(call.custom.input)
    return chars


def _prompt_chars(prompt: str | list[str | int | list[int]]) -> int:
    # A token id is at least one character of text, so counting it as one is a lower bound; the engine's
    # context check refuses what this lets through.
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(item) if isinstance(item, str | list) else 1 for item in prompt)


# --- msgspec's messages, turned into OpenAI-style errors ---

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`\Z")
_MISSING = re.compile(r"Object missing required field `(?P<field>.*)`\Z", re.DOTALL)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>.*)`\Z", re.DOTALL)
_WRONG_TYPE = re.compile(r"Expected `(?P<expected>[^`]+)`(?:, got `(?P<got>[^`]+)`)?\Z")
_CONSTRAINT = re.compile(r"Expected `(?P<expected>[^`]+)` (?P<constraint>.+)\Z")
_BAD_VALUE = re.compile(r"Invalid (?:enum )?value (?P<value>.+)\Z")
_JSON_NAMES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_TYPE_WORD = re.compile(r"\b(?:str|int|float|bool)\b")


def _json_type(expected: str) -> str:
    # msgspec speaks Python; API users know JSON's names for the same types.
    expected = expected.replace("int | float", "number")
    return _TYPE_WORD.sub(lambda m: _JSON_NAMES[m.group()], expected).replace(" | ", " or ")


def validation_error(exc: msgspec.ValidationError) -> ApiError:
    """Turn a msgspec validation failure into a 400 with a precise `code`, `param` and message."""
    message = str(exc)
    at = _AT.search(message)
    path = at.group("path").lstrip(".") if at else ""
    if at:
        message = message[: at.start()]
    param = path or None
    where = path or "request"

    if m := _MISSING.match(message):
        field = m.group("field")
        return ApiError(400, f"missing required field `{field}` in {where}",
                        code=ErrorCode.MISSING_FIELD, param=_join(path, field))
    if m := _UNKNOWN.match(message):
        field = m.group("field")
        return ApiError(400, f"unknown field `{field}` in {where}",
                        code=ErrorCode.UNKNOWN_FIELD, param=_join(path, field))
    if m := _WRONG_TYPE.match(message):
        expected = _json_type(m.group("expected"))
        got = f", got {_json_type(m.group('got'))}" if m.group("got") else ""
        if not path:
            return ApiError(400, f"the request body must be a JSON {expected}{got}", code=ErrorCode.INVALID_TYPE)
        return ApiError(400, f"invalid type for `{path}`: expected {expected}{got}",
                        code=ErrorCode.INVALID_TYPE, param=param)
    if m := _CONSTRAINT.match(message):
        expected = _json_type(m.group("expected"))
        return ApiError(400, f"invalid value for `{path}`: expected {expected} {m.group('constraint')}",
                        code=ErrorCode.INVALID_VALUE, param=param)
    if m := _BAD_VALUE.match(message):
        allowed = f"; expected one of {', '.join(ROLES)}" if path.endswith("role") else ""
        return ApiError(400, f"invalid value {m.group('value')} for `{path}`{allowed}",
                        code=ErrorCode.INVALID_VALUE, param=param)
    return ApiError(400, f"invalid value for `{where}`: {message}", code=ErrorCode.INVALID_VALUE, param=param)
