"""What the fuzz tests share: values built from msgspec types, and a cheap way to make thousands of cases.

Hypothesis spends about a millisecond per drawn value on a shared machine, so a case built from dozens of draws
(a message with all its fields, then a mutation) would put 10,000 cases far past the seconds `make test` can give
them. The bulk of the cases are therefore driven by one drawn byte string read as a tape of choices (`Tape`, as
libFuzzer's FuzzedDataProvider does): one draw per case, which Hypothesis still biases, shrinks and replays. The
valid inputs those choices mutate come from a fixed pool built once from the types (`sample`), so every message
type and every field is covered with the same code that follows the types as they change.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# what MessagePack can carry: a wider integer does not encode
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


# COCOON_FUZZ_SCALE=100 runs a hundred times as many cases: a longer hunt than `make test` affords
SCALE = float(os.environ.get("COCOON_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> Any:
    """Settings for a fuzz test: many cheap cases, no per-case deadline (the machine is shared)."""
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=None,
                    suppress_health_check=list(HealthCheck))


# one draw per case: the tape its choices are read from
TAPES = st.binary(max_size=48)


class Tape:
    """Choices read from fuzzer-made bytes; an exhausted tape answers 0 (the first choice), as shrinking likes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def below(self, n: int) -> int:
        """A choice among n (n >= 1), reading as many bytes as n needs."""
        value = 0
        for _ in range((max(n - 1, 1).bit_length() + 7) // 8):
            value = value << 8 | self.byte()
        return value % n

    def pick(self, options: list[Any] | tuple[Any, ...]) -> Any:
        return options[self.below(len(options))]

    def chance(self, one_in: int) -> bool:
        return self.below(one_in) == 0

    def blob(self, most: int) -> bytes:
        return bytes(self.byte() for _ in range(self.below(most + 1)))

    def cuts(self, data: bytes, most: int = 5) -> list[bytes]:
        """`data` cut into consecutive pieces at points read from the tape (empty pieces included)."""
        points = sorted(self.below(len(data) + 1) for _ in range(self.below(most + 1)))
        edges = [0, *points, len(data)]
        return [data[a:b] for a, b in itertools.pairwise(edges)]


# --- valid values of a msgspec type, made by a seeded generator (the pool the fuzzers mutate) ---

_EDGE_INTS = (0, 1, -1, 2**31, 2**53 + 1, INT_MIN, INT_MAX)
_EDGE_FLOATS = (0.0, -0.0, 1.5, -1e308, 1e-308, float("inf"), float("-inf"))
_TEXTS = ("", "a", "model-1", "é", "\u2028", "\U0001f600", "x" * 70, "\x00")


def _int_range(t: mi.IntType) -> tuple[int, int]:
    low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else INT_MIN)
    high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else INT_MAX)
    return max(low, INT_MIN), min(high, INT_MAX)


def sample(t: mi.Type, rng: random.Random, depth: int = 0) -> Any:
    """A value msgspec accepts for `t` (constraints included), edge values often. NaN is never made: it does not
    equal itself, so it cannot show a round trip."""
    if isinstance(t, mi.IntType):
        low, high = _int_range(t)
        edges = [v for v in _EDGE_INTS if low <= v <= high]
        return rng.choice(edges) if edges and rng.random() < 0.5 else rng.randint(low, min(high, low + 10**6))
    if isinstance(t, mi.FloatType):
        return rng.choice(_EDGE_FLOATS) if t.ge is None and t.le is None else rng.uniform(t.ge or 0.0, t.le or 1.0)
    if isinstance(t, mi.StrType):
        return rng.choice(_TEXTS)
    if isinstance(t, mi.BytesType):
        return rng.randbytes(rng.choice((0, 1, 7, 64)))
    if isinstance(t, mi.BoolType):
        return rng.random() < 0.5
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.LiteralType):
        return rng.choice(t.values)
    if isinstance(t, mi.UnionType):
        return sample(rng.choice(t.types), rng, depth)
    if isinstance(t, mi.ListType | mi.DictType):
        least = t.min_length or 0
        size = rng.randint(least, max(least, 2 if depth < 2 else 0))  # nested containers stay small
        if isinstance(t, mi.ListType):
            return [sample(t.item_type, rng, depth + 1) for _ in range(size)]
        return {sample(t.key_type, rng, depth + 1): sample(t.value_type, rng, depth + 1) for _ in range(size)}
    if isinstance(t, mi.StructType):
        return t.cls(**{f.name: sample(f.type, rng, depth + 1) for f in t.fields if f.required or rng.random() < 0.7})
    raise TypeError(f"no fuzzing sample for {t!r}: add one here")


def structs_of(union: Any) -> list[type[msgspec.Struct]]:
    """The struct types a union (or a single struct) is made of."""
    info = mi.type_info(union)
    members = info.types if isinstance(info, mi.UnionType) else (info,)
    return [m.cls for m in members if isinstance(m, mi.StructType)]


@functools.cache
def _info(cls: type[msgspec.Struct]) -> mi.Type:
    return mi.type_info(cls)  # slow: it walks every annotation


def instance(cls: type[msgspec.Struct], tape: Tape) -> Any:
    """A valid instance of `cls`, its values seeded from the tape (cheap: one choice per instance)."""
    return sample(_info(cls), random.Random(tape.below(2**32)))


# values of any shape: what a confused or hostile peer puts where a field belongs
JUNK: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**31, -(2**63), 2**64 - 1, 1e308, -0.0, 0.5, "", "x", "\x00",
    "a" * 300, [], [None], [[[[[]]]]], {}, {"": None}, {"t": "ping"}, [1, "a", None, {}], {"a": {"b": {"c": []}}},
)
MSGPACK_JUNK: tuple[Any, ...] = (*JUNK, b"", b"\x80\xff", float("nan"), float("inf"))
