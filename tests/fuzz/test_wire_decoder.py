"""Fuzzing the wire decoder (issue 15, "Also"; item 13's last rule): whatever bytes an attested peer sends, the
FrameReader either yields messages or raises FrameError (the one error its link turns into a clean close, its
reason short enough to log and send back), a valid stream decodes the same however TCP splits it, and what the
reader holds between reads stays under one frame of `max_frame` bytes: a larger announced frame is refused at its
header, before any of its body is kept.

10,500 cases (see tests/fuzz/strategies.py for how they stay cheap)."""

from __future__ import annotations

import msgspec
from hypothesis import example, given
from hypothesis import strategies as st

from cocoon.wire import frames
from cocoon.wire.messages import Message, Ping, ResponseChunk
from tests.fuzz.strategies import INT_MAX, MSGPACK_JUNK, TAPES, Tape, fuzz, instance, structs_of

HEADER = 4
MESSAGE_TYPES = structs_of(Message)
TAGS = [cls.__struct_config__.tag for cls in MESSAGE_TYPES]


def feed_pieces(reader: frames.FrameReader, pieces: list[bytes]) -> tuple[list[Message], bool]:
    """What the reader yields for `pieces` fed in turn, and whether it refused the stream. Any exception other
    than FrameError escapes and fails the test."""
    out: list[Message] = []
    for piece in pieces:
        try:
            out += reader.feed(piece)
        except frames.FrameError as exc:
            assert len(str(exc)) < 300  # it is logged and sent back: a peer's junk is not quoted whole
            return out, True
        assert reader.buffered < HEADER + reader.max_frame  # never more than one incomplete, admitted frame
    return out, False


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(HEADER, "big") + body


def wire_form(msgs: list[Message]) -> bytes:
    # compared as bytes: a mutated float may decode to NaN, which never equals itself
    return b"".join(frames.encode(m) for m in msgs)


def messages(tape: Tape, least: int = 1, most: int = 4) -> list[Message]:
    """Valid messages of types the tape picks, every type as likely."""
    return [instance(tape.pick(MESSAGE_TYPES), tape) for _ in range(least + tape.below(most - least + 1))]


def test_the_fuzzed_messages_cover_every_message_type() -> None:
    assert len(MESSAGE_TYPES) == len(Message.__args__) and len(set(TAGS)) == len(TAGS)
    tapes = [Tape(bytes([i, 0, 0, 0, 0])) for i in range(len(MESSAGE_TYPES))]
    assert {type(instance(tape.pick(MESSAGE_TYPES), tape)) for tape in tapes} == set(MESSAGE_TYPES)


@fuzz(2500)
@given(st.binary(max_size=64), TAPES, st.sampled_from([frames.MAX_FRAME, 40]))
@example(b"\xff\xff\xff\xff", b"", frames.MAX_FRAME)
@example(b"\x00\x00\x00\x03\xc1\xc1\xc1", b"\x01\x02", frames.MAX_FRAME)
@example(b"\x00\x00\x00\x01\x90", b"", frames.MAX_FRAME)  # an empty array where a tagged map belongs
@example(framed(b"\x81\xa1t\xa1\x80"), b"", frames.MAX_FRAME)  # a tag that is not UTF-8: msgspec's UnicodeDecodeError
# nesting deeper than msgspec follows, in a field it skips: its RecursionError
@example(framed(b"\x82\xa1t\xa4ping\xa1x" + b"\x91" * 1000 + b"\x00"), b"", frames.MAX_FRAME)
def test_arbitrary_bytes_decode_or_raise_frame_error(data: bytes, tape: bytes, limit: int) -> None:
    msgs, _refused = feed_pieces(frames.FrameReader(limit), Tape(tape).cuts(data))
    assert all(isinstance(m, Message) for m in msgs)


@fuzz(2000)
@given(TAPES)
def test_valid_frames_round_trip_whatever_the_split(data: bytes) -> None:
    tape = Tape(data)
    msgs = messages(tape)
    reader = frames.FrameReader()
    assert feed_pieces(reader, tape.cuts(wire_form(msgs))) == (msgs, False)
    assert reader.buffered == 0


@fuzz(1000)
@given(TAPES)
def test_a_truncated_stream_yields_exactly_its_complete_frames(data: bytes) -> None:
    tape = Tape(data)
    msgs = messages(tape)
    encoded = [frames.encode(m) for m in msgs]
    stream = b"".join(encoded)
    cut = tape.below(len(stream) + 1)
    reader = frames.FrameReader()
    got, refused = feed_pieces(reader, tape.cuts(stream[:cut]))
    complete, end = 0, 0
    while complete < len(encoded) and end + len(encoded[complete]) <= cut:
        end += len(encoded[complete])
        complete += 1
    assert not refused and got == msgs[:complete]
    assert reader.buffered == cut - end


def mutate(stream: bytes, tape: Tape) -> bytes:
    """`stream` with a few bytes overwritten, inserted or removed, or a frame length rewritten."""
    data = bytearray(stream)
    for _ in range(1 + tape.below(4)):
        pos = tape.below(len(data) + 1)
        op = tape.below(4)
        if op == 0 and pos < len(data):
            data[pos] = tape.byte()
        elif op == 1:
            data[pos:pos] = tape.blob(4) or b"\x80"
        elif op == 2:
            del data[pos : pos + 1 + tape.below(8)]
        elif op == 3 and pos + HEADER <= len(data):
            data[pos : pos + HEADER] = tape.below(2**32).to_bytes(HEADER, "big")
    return bytes(data)


@fuzz(2500)
@given(TAPES)
def test_mutated_frames_decode_or_raise_frame_error_whatever_the_split(data: bytes) -> None:
    tape = Tape(data)
    stream = mutate(wire_form(messages(tape, most=3)), tape)
    whole = feed_pieces(frames.FrameReader(), [stream])
    split = feed_pieces(frames.FrameReader(), tape.cuts(stream))
    assert all(isinstance(m, Message) for m in split[0])
    # the same bytes mean the same messages however they arrive (a refused feed drops what it decoded)
    assert whole[1] == split[1]
    if not whole[1]:
        assert wire_form(split[0]) == wire_form(whole[0])


def near_valid(msg: Message, tape: Tape) -> dict:
    """`msg` as the map it is on the wire, with fields replaced by junk, removed or added, or its tag changed."""
    doc = msgspec.to_builtins(msg, builtin_types=(bytes,))
    for _ in range(1 + tape.below(3)):
        key = tape.pick(sorted(doc) or ["t"]) if tape.below(4) else tape.pick(["x", "", "T", "id\x00"])
        op = tape.below(4)
        if op == 0:
            doc.pop(key, None)
        elif op == 1:
            doc["t"] = tape.pick([*TAGS, *MSGPACK_JUNK])
        else:
            doc[key] = tape.pick(MSGPACK_JUNK)
    return doc


@fuzz(2000)
@given(TAPES)
@example(b"")
def test_near_valid_messages_decode_or_raise_frame_error(data: bytes) -> None:
    tape = Tape(data)
    check_near_valid(near_valid(instance(tape.pick(MESSAGE_TYPES), tape), tape))


def check_near_valid(doc: dict) -> None:
    msgs, refused = feed_pieces(frames.FrameReader(), [framed(msgspec.msgpack.encode(doc))])
    if not refused:
        [msg] = msgs
        assert isinstance(msg, Message)
        # what the decoder admitted is a message we could send ourselves: it encodes and decodes to itself
        again = feed_pieces(frames.FrameReader(), [frames.encode(msg)])
        assert again == ([msg], False) or wire_form(again[0]) == frames.encode(msg)  # (NaN)


def test_chosen_near_valid_messages() -> None:
    for doc in (
        {"t": "end", "id": 1, "usage": {"prompt_tokens": -1}},  # issue 15 item 2: counts are never negative
        {"t": "ping", "nonce": INT_MAX, "sent_at": float("nan")},
        {"t": "chunk", "id": 1, "data": "not bytes"},
        {"t": "x" * 100_000},  # msgspec quotes a bad tag whole: the reason must not
        {"t": "hello", "role": "client", "name": "n", "min_version": 1, "max_version": 1, "worker": [1, 2]},
    ):
        check_near_valid(doc)


@fuzz(500)
@given(st.integers(0, 2**32 - 1), st.sampled_from([frames.MAX_FRAME, 40]), TAPES)
@example(2**30, frames.MAX_FRAME, b"")  # a peer announcing 1 GiB
def test_an_oversized_frame_is_refused_at_its_header(size: int, limit: int, data: bytes) -> None:
    tape = Tape(data)
    before = [m for m in messages(tape, least=0, most=2) if len(frames.encode(m)) <= HEADER + limit]
    header = max(size, limit + 1).to_bytes(HEADER, "big")
    reader = frames.FrameReader(limit)
    msgs, refused = feed_pieces(reader, tape.cuts(wire_form(before) + header))
    # refused as soon as the header is complete: not one byte of its body was waited for or kept
    assert refused and wire_form(before).startswith(wire_form(msgs))


def test_a_partial_frame_is_held_until_complete() -> None:
    reader = frames.FrameReader()
    chunk = frames.encode(ResponseChunk(call_id=1, data=b"x" * 1000))
    assert reader.feed(chunk[:500]) == [] and reader.buffered == 500
    assert reader.feed(chunk[500:] + frames.encode(Ping(nonce=1, sent_at=0.0))) == [
        ResponseChunk(call_id=1, data=b"x" * 1000), Ping(nonce=1, sent_at=0.0)]
    assert reader.buffered == 0
