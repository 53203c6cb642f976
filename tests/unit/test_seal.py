"""cocoon.seal: requests sealed to workers' HPKE keys and answers sealed chunk by chunk (issue 10)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.seal import (
    MAX_RECIPIENTS,
    AnswerDigest,
    AnswerOpener,
    AnswerSealer,
    ReplayGuard,
    SealError,
    SealKey,
    key_id,
    peek,
    request_digest,
    seal_request,
)

KEYS = [SealKey(X25519PrivateKey.generate()) for _ in range(4)]
AAD = b"envelope"


def _pair(n_chunks: int = 0) -> tuple[AnswerSealer, AnswerOpener]:
    sealed = seal_request(b"{}", [KEYS[0].public_key], AAD)
    opened = KEYS[0].open(sealed.sealed, AAD)
    return opened.answer, sealed.answer(KEYS[0].key_id)


def test_every_recipient_opens_the_same_body_and_only_its_own_answer() -> None:
    body = b'{"model": "m", "messages": []}'
    sealed = seal_request(body, [k.public_key for k in KEYS[:3]], AAD)
    assert peek(sealed.sealed).key_ids == tuple(k.key_id for k in KEYS[:3]) == sealed.key_ids
    assert peek(sealed.sealed).body_len == len(body)
    for served_by in KEYS[:3]:
        opened = served_by.open(sealed.sealed, AAD)
        assert opened.body == body
        answer = opened.answer.seal(b"tokens")
        assert sealed.answer(served_by.key_id).open(answer) == b"tokens"
        others = [k for k in KEYS[:3] if k is not served_by]
        with pytest.raises(SealError) as info:
            sealed.answer(others[0].key_id).open(answer)  # another recipient's context: another key
        assert info.value.code == ErrorCode.SEALED_ANSWER_INVALID


def test_a_worker_not_sealed_to_names_the_key_ids() -> None:
    sealed = seal_request(b"{}", [KEYS[0].public_key], AAD)
    with pytest.raises(SealError) as info:
        KEYS[1].open(sealed.sealed, AAD)
    assert info.value.code == ErrorCode.SEAL_KEY_UNKNOWN and info.value.status == 400
    assert KEYS[0].key_id.hex() in info.value.message and KEYS[1].key_id.hex() in info.value.message


def test_another_envelope_does_not_open() -> None:
    sealed = seal_request(b"{}", [KEYS[0].public_key], AAD)
    with pytest.raises(SealError) as info:
        KEYS[0].open(sealed.sealed, b"another envelope")
    assert info.value.code == ErrorCode.SEALED_REQUEST_INVALID


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=300), n=st.integers(1, 3), data=st.data())
def test_any_changed_byte_of_a_sealed_request_is_refused(body: bytes, n: int, data: st.DataObject) -> None:
    sealed = seal_request(body, [k.public_key for k in KEYS[:n]], AAD).sealed
    at = data.draw(st.integers(0, len(sealed) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = sealed[:at] + bytes([sealed[at] ^ flip]) + sealed[at + 1:]
    with pytest.raises(SealError) as info:
        KEYS[0].open(changed, AAD)
    # a changed key id reads as "not sealed to me"; anything else as invalid
    assert info.value.code in (ErrorCode.SEALED_REQUEST_INVALID, ErrorCode.SEAL_KEY_UNKNOWN)


@settings(max_examples=40, deadline=None)
@given(body=st.binary(max_size=200), cut=st.integers(0, 400))
def test_a_truncated_sealed_request_is_refused(body: bytes, cut: int) -> None:
    sealed = seal_request(body, [KEYS[0].public_key], AAD).sealed
    short = sealed[:min(cut, len(sealed) - 1)]
    with pytest.raises(SealError) as info:
        KEYS[0].open(short, AAD)
    assert info.value.code == ErrorCode.SEALED_REQUEST_INVALID


@pytest.mark.parametrize(("sealed", "why"), [
    (b"", "shorter than its header"), (b"\x02\x01" + bytes(200), "version 2"),
    (b"\x01\x00" + bytes(200), "0 recipients"),
    (bytes([1, MAX_RECIPIENTS + 1]) + bytes(5000), f"{MAX_RECIPIENTS + 1} recipients"),
])
def test_malformed_sealed_requests_say_why(sealed: bytes, why: str) -> None:
    with pytest.raises(SealError) as info:
        peek(sealed)
    assert why in info.value.message and isinstance(info.value, ApiError)


def test_a_recipient_named_twice_is_malformed() -> None:
    sealed = seal_request(b"{}", [KEYS[0].public_key, KEYS[1].public_key], AAD).sealed
    first = sealed[2:2 + 8]
    twice = sealed[:2 + 88] + first + sealed[2 + 88 + 8:]
    with pytest.raises(SealError, match="twice"):
        peek(twice)


def test_sealing_refuses_no_keys_or_too_many() -> None:
    with pytest.raises(ValueError):
        seal_request(b"{}", [], AAD)
    many = [X25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(MAX_RECIPIENTS + 1)]
    with pytest.raises(ValueError):
        seal_request(b"{}", many, AAD)
    assert len(peek(seal_request(b"{}", [KEYS[0].public_key] * 3, AAD).sealed).recipients) == 1


def test_an_answer_naming_an_unknown_key_is_refused() -> None:
    sealed = seal_request(b"{}", [KEYS[0].public_key], AAD)
    with pytest.raises(SealError) as info:
        sealed.answer(KEYS[1].key_id)
    assert info.value.code == ErrorCode.SEALED_ANSWER_INVALID


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.binary(max_size=40), max_size=8), trailer=st.binary(max_size=20))
def test_answers_round_trip_in_order(chunks: list[bytes], trailer: bytes) -> None:
    sealer, opener = _pair()
    sealed = [sealer.seal(c) for c in chunks]
    end = sealer.end(trailer)
    assert [opener.open(s) for s in sealed] == chunks
    assert opener.end(end) == trailer and opener.ended


def _delivered(chunks: list[bytes], order: list[int]) -> list[bytes]:
    return [chunks[i] for i in order]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 6), data=st.data())
def test_dropped_reordered_replayed_or_cut_chunks_are_detected(n: int, data: st.DataObject) -> None:
    """Any delivery of the sealed chunks other than all of them once, in order, then the end marker, fails."""
    sealer, opener = _pair()
    sealed = [sealer.seal(bytes([i]) * 3) for i in range(n)]
    end = sealer.end()
    order = data.draw(st.lists(st.integers(0, n - 1), max_size=n + 2))
    if order == list(range(n)):
        order = order[:-1]  # the honest order, cut short by one chunk
    with pytest.raises(SealError) as info:
        for piece in _delivered(sealed, order):
            opener.open(piece)
        opener.end(end)
    assert info.value.code == ErrorCode.SEALED_ANSWER_INVALID and info.value.status == 502


def test_an_answer_without_its_end_marker_is_cut_short() -> None:
    sealer, opener = _pair()
    opener.open(sealer.seal(b"a"))
    with pytest.raises(SealError, match="without its sealed end marker"):
        opener.end(b"")


def test_the_end_marker_is_not_a_chunk_and_a_chunk_not_an_end() -> None:
    sealer, opener = _pair()
    chunk = sealer.seal(b"a")
    end = sealer.end()
    with pytest.raises(SealError):
        opener.end(chunk)  # at seq 0, but sealed as a chunk
    sealer2, opener2 = _pair()
    sealer2.seal(b"a")
    with pytest.raises(SealError):
        opener2.open(end)
    with pytest.raises(ValueError):
        sealer.seal(b"after the end")


def test_chunks_after_the_end_are_replays() -> None:
    sealer, opener = _pair()
    chunk = sealer.seal(b"a")
    opener.open(chunk)
    opener.end(sealer.end())
    with pytest.raises(SealError, match="after the answer's end"):
        opener.open(chunk)


def test_the_answer_digest_covers_order_and_boundaries() -> None:
    def digest(*parts: bytes) -> bytes:
        d = AnswerDigest()
        for p in parts:
            d.add(p)
        return d.digest()

    assert digest(b"ab", b"c") != digest(b"a", b"bc") != digest(b"c", b"ab")
    assert digest(b"ab", b"c") == digest(b"ab", b"c")
    assert request_digest(b"x") != request_digest(b"y")


def test_key_ids_are_stable_and_distinct() -> None:
    assert key_id(KEYS[0].public_key) == KEYS[0].key_id and len(KEYS[0].key_id) == 8
    assert len({k.key_id for k in KEYS}) == len(KEYS)


def test_the_replay_guard_refuses_a_second_open_until_the_deadline() -> None:
    guard = ReplayGuard(max_ttl_s=100)
    guard.check(b"e1", deadline=50, now=0)
    with pytest.raises(SealError) as info:
        guard.check(b"e1", deadline=50, now=10)
    assert info.value.code == ErrorCode.SEALED_REQUEST_REPLAYED and info.value.status == 409
    with pytest.raises(SealError) as stale:
        guard.check(b"e1", deadline=50, now=60)  # forgotten, but its deadline has passed
    assert stale.value.code == ErrorCode.SEALED_REQUEST_REPLAYED
    assert len(guard) == 0
    with pytest.raises(SealError) as far:
        guard.check(b"e2", deadline=500, now=60)
    assert far.value.code == ErrorCode.SEALED_REQUEST_INVALID


def test_a_full_replay_guard_refuses_what_it_can_no_longer_tell() -> None:
    guard = ReplayGuard(max_ttl_s=100, max_entries=2)
    guard.check(b"a", deadline=10, now=0)
    guard.check(b"b", deadline=20, now=0)
    guard.check(b"c", deadline=30, now=0)  # forgets `a`: nothing expiring by 10 is accepted any more
    with pytest.raises(SealError):
        guard.check(b"a", deadline=10, now=1)
    with pytest.raises(SealError):
        guard.check(b"b", deadline=20, now=1)
    guard.check(b"d", deadline=40, now=1)
    assert len(guard) == 2


@settings(max_examples=30, deadline=None)
@given(encs=st.lists(st.binary(min_size=1, max_size=3), max_size=30))
def test_the_replay_guard_never_opens_one_encapsulation_twice(encs: list[bytes]) -> None:
    """However full the guard: an encapsulation always comes with its own deadline (the envelope binds it)."""
    guard = ReplayGuard(max_ttl_s=100, max_entries=5)
    opened: list[bytes] = []
    for i, enc in enumerate(encs):
        try:
            guard.check(enc, deadline=40 + sum(enc) % 50, now=i)
        except SealError:
            continue
        opened.append(enc)
    assert len(opened) == len(set(opened))


# ---- a body in parts (a media job's input): seal/parts.py -------------------------------------------------------
PARTS = [b"part-0", b"part-1", b"part-2", b"part-3"]


def _sealed_parts(parts: list[bytes] = PARTS) -> tuple[list[bytes], list[bytes]]:
    """The parts sealed by the client for two candidates, and what each candidate's opener gives back."""
    sealed = seal_request(b"{}", [KEYS[0].public_key, KEYS[1].public_key], AAD)
    sealer = sealed.parts()
    out = [sealer.part(p, i == len(parts) - 1) for i, p in enumerate(parts)]
    again = sealed.parts()  # sent again (another worker took the job): the very same bytes
    assert [again.part(p, i == len(parts) - 1) for i, p in enumerate(parts)] == out
    for key in KEYS[:2]:  # whichever candidate the proxy routes the job to opens them
        opener = key.open(sealed.sealed, AAD).parts()
        assert [opener.part(s, i == len(out) - 1) for i, s in enumerate(out)] == parts
    return out, parts


def _open_parts(order: list[tuple[int, bool]]) -> list[bytes]:
    """PARTS sealed, then opened in `order`: (which sealed part arrives, whether it is marked last)."""
    sealed = seal_request(b"{}", [KEYS[0].public_key], AAD)
    sealer = sealed.parts()
    opener = KEYS[0].open(sealed.sealed, AAD).parts()
    made = [sealer.part(p, i == len(PARTS) - 1) for i, p in enumerate(PARTS)]
    return [opener.part(made[i], last) for i, last in order]


def test_parts_open_in_order_with_any_candidate_and_seal_again_identically() -> None:
    _sealed_parts()
    other = seal_request(b"{}", [KEYS[0].public_key], AAD).parts()  # another request: another key
    assert other.part(PARTS[0], False) != _sealed_parts()[0][0]


@pytest.mark.parametrize(("order", "says"), [
    ([(0, False), (2, False)], "sealed upload part 1 does not open"),  # dropped
    ([(0, False), (2, False), (1, False)], "sealed upload part 1 does not open"),  # reordered
    ([(0, False), (0, False)], "sealed upload part 1 does not open"),  # repeated
    ([(0, False), (1, True)], "end marker does not open after 1 parts"),  # cut: an early part marked last
    ([(0, False), (1, False), (2, False), (3, False)], "sealed upload part 3 does not open"),  # the last not marked
])
def test_a_part_dropped_reordered_repeated_or_an_upload_cut_does_not_open(order: list[tuple[int, bool]],
                                                                           says: str) -> None:
    with pytest.raises(SealError) as info:
        _open_parts(order)
    assert (info.value.status, info.value.code) == (400, ErrorCode.SEALED_REQUEST_INVALID)
    assert says in info.value.message


def test_a_changed_part_does_not_open() -> None:
    sealed = seal_request(b"{}", [KEYS[0].public_key], AAD)
    part = bytearray(sealed.parts().part(b"input", False))
    part[3] ^= 1
    with pytest.raises(SealError, match="sealed upload part 0 does not open"):
        KEYS[0].open(sealed.sealed, AAD).parts().part(bytes(part), False)
