"""Money on the wire: vouchers travel with answers and payouts, old peers still decode, and answers carry
`usage.cost_nanoton`."""

from __future__ import annotations

import json

import msgspec

from cocoon.client.api import with_cost
from cocoon.core.usage import Usage
from cocoon.ledger.contracts import LOCAL_GLOBAL_ID, Tag
from cocoon.ledger.vouchers import sign_voucher
from cocoon.ledger.wallet import Wallet
from cocoon.wire import frames
from cocoon.wire.messages import Payout, ResponseEnd

KEY = Wallet(b"\x09" * 32)
CHANNEL = "0:" + "ab" * 32


class OldEnd(msgspec.Struct, tag="end", tag_field="t"):
    """ResponseEnd as a version-1 peer declares it (no voucher)."""

    id: int
    usage: Usage
    worker_ms: float = 0.0
    proxy_ms: float = 0.0
    cost_nanoton: int = 0


def test_vouchers_travel_with_answers_and_payouts_and_still_verify() -> None:
    voucher = sign_voucher(KEY, Tag.CHARGE, CHANNEL, 7, 123_456, global_id=LOCAL_GLOBAL_ID)
    end = ResponseEnd(call_id=3, usage=Usage(prompt_tokens=2, completion_tokens=5), cost_nanoton=440, voucher=voucher)
    (decoded,) = frames.FrameReader().feed(frames.encode(end))
    assert decoded == end and isinstance(decoded, ResponseEnd) and decoded.voucher is not None
    decoded.voucher.verify(KEY.public_key, LOCAL_GLOBAL_ID)
    payout = Payout(call_id=3, fee_nanoton=352, voucher=sign_voucher(KEY, Tag.PAYOUT, CHANNEL, 1, 352,
                                                                             global_id=LOCAL_GLOBAL_ID))
    (decoded,) = frames.FrameReader().feed(frames.encode(payout))
    assert decoded == payout
    # a version-1 peer ignores the voucher it does not know
    old = msgspec.msgpack.decode(frames.encode(end)[4:], type=OldEnd)
    assert (old.id, old.cost_nanoton, old.usage) == (3, 440, end.usage)


def test_answers_get_their_cost_in_usage() -> None:
    whole = json.dumps({"id": "x", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 5,
                                                           "total_tokens": 7}}).encode()
    assert json.loads(with_cost(whole, 440))["usage"] == {"prompt_tokens": 2, "completion_tokens": 5,
                                                          "total_tokens": 7, "cost_nanoton": 440}
    for payload in (b'{"choices": [], "usage": null}', b"not json", b"[1, 2]"):
        assert with_cost(payload, 440) == payload
