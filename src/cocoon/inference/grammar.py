"""llama.cpp grammars (GBNF) for structured answers, built from their JSON schema by llama-cpp-python's converter.

Sampling under a grammar only lets through tokens that keep the text inside it, so even a 135M model writes
JSON that parses and follows the schema. Keywords the converter does not enforce (`minimum`, `maximum`,
`multipleOf`, most `format`s) are not guaranteed. A schema comes from the user: its repetition bounds are
capped before conversion (the converter writes `{n}` out n times) and the grammar's size is capped after it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.inference.structured import Structure

MAX_REPEAT = 1000  # largest minItems/maxItems/minLength/maxLength or regex {n} a schema may ask for
MAX_GRAMMAR_CHARS = 200_000
_BOUNDS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
# A text answer (tool_choice "auto"): anything that does not start with `{`, which starts a call.
_TEXT_RULES = 'text ::= [^{] [^\\x00]*\nroot ::= call | text'


def gbnf(structure: Structure) -> str:
    """The grammar an answer to `structure` must follow; ApiError (400) naming the field when it cannot be built."""
    param = structure.param
    _check_bounds(structure.schema, param)
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        schema = converter.resolve_refs(structure.schema, "request")
        converter.visit(schema, "call" if structure.text_allowed else "")
        text = converter.format_grammar()
    except (AssertionError, KeyError, ValueError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        raise ApiError(400, f"cannot constrain the answer to this JSON schema: {type(exc).__name__}: {exc}",
                       code=ErrorCode.INVALID_VALUE, param=param) from None
    if structure.text_allowed:
        text += "\n" + _TEXT_RULES
    if len(text) > MAX_GRAMMAR_CHARS:
        raise ApiError(400, f"this JSON schema makes a grammar of {len(text)} characters, over the "
                            f"{MAX_GRAMMAR_CHARS} this engine takes", code=ErrorCode.INVALID_VALUE, param=param)
    return text


def _check_bounds(node: Any, param: str) -> None:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key in _BOUNDS and isinstance(value, int | float) and value > MAX_REPEAT:
                raise _too_many(key, value, param)
            if key == "pattern" and isinstance(value, str):
                for low, high in _QUANTIFIER.findall(value):
                    count = max(int(low), int(high or 0))
                    if count > MAX_REPEAT:
                        raise _too_many("pattern", count, param)
            if isinstance(value, dict | list):
                stack.append(value)


def _too_many(key: str, value: object, param: str) -> ApiError:
    return ApiError(400, f"`{key}` {json.dumps(value)} in the JSON schema is above the {MAX_REPEAT} this engine "
                         "can constrain", code=ErrorCode.INVALID_VALUE, param=param)
