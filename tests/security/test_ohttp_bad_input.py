"""Issue 10, "Bad input" through a relay: a device (or the relay itself) sends encapsulated requests that must not
be served. Attacks, each through the real relay, proxy (gateway) and worker processes:

- a tampered encapsulation (a ciphertext byte flipped on the way): 400 `ohttp_decrypt_failed`;
- a request sealed to a key id the gateway does not hold: 422 `ohttp_unknown_key`, with the current key
  configuration in the answer;
- a replayed encapsulation (the relay, or anyone on the path, sends a device's request again to get it served and
  charged twice): 400 `ohttp_replayed`, the first one served and charged once;
- an oversized body: 413 `request_too_large`;
- an encapsulation of something that is not a request: its error said inside the encapsulation;
- the same replay and tampering on a streamed (chunked) request.

None is charged to the relay's channel, and no process crashes: a good request is served afterwards. (Before
issue 10 there was no relay or gateway at all: every test here fails on the code before it.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from cocoon.ohttp.encap import CHUNKED_REQUEST_MEDIA_TYPE, CHUNKED_RESPONSE_MEDIA_TYPE, encapsulate_request
from cocoon.ohttp.keys import KeyConfig, decode_keys
from cocoon.wire import frames, oblivious
from cocoon.wire.messages import ResponseEnd, ResponseError
from tests import ohttputil
from tests.netutil import Net, localnet, pid_alive

MODEL = "fake-model"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    state: Path = tmp_path_factory.mktemp("ohttpbad") / "state"
    with localnet(state, engine="fake", workers=1, relay=True, options=("reply_tokens=8",)) as net:
        yield net


def _relay(net: Net) -> str:
    return net.by_role("relay")[0]["api_url"]


def _paid(net: Net) -> int:
    """What the proxy has charged the relay's channel so far (its newest voucher, as the relay holds it)."""
    return net.stats("relay-1")["vouchers_nanoton"]


def _error(body: bytes) -> dict[str, str]:
    return msgspec.json.decode(body)["error"]


def _still_serves(net: Net) -> None:
    assert all(pid_alive(p["pid"]) for p in net.info["processes"])
    enc, keys = ohttputil.encapsulate(ohttputil.gateway_keys(_relay(net)), ohttputil.chat(MODEL, "still there?"))
    status, _, body = ohttputil.post(_relay(net), enc)
    assert status == 200 and isinstance(ohttputil.answers(keys, body)[-1], ResponseEnd)


def test_tampered_encapsulation_is_refused_uncharged(net: Net) -> None:
    paid = _paid(net)
    enc, _ = ohttputil.encapsulate(ohttputil.gateway_keys(_relay(net)), ohttputil.chat(MODEL, "tamper me"))
    for at in (7, 7 + 32, len(enc) - 1):  # the encapsulated key, the ciphertext, the tag
        tampered = bytearray(enc)
        tampered[at] ^= 0x01
        status, _, body = ohttputil.post(_relay(net), bytes(tampered))
        assert status == 400, body
        assert _error(body)["code"] == "ohttp_decrypt_failed"
        assert "changed on the way" in _error(body)["message"]
    assert _paid(net) == paid
    _still_serves(net)


def test_unknown_key_id_gets_the_current_configuration(net: Net) -> None:
    paid = _paid(net)
    current = ohttputil.gateway_keys(_relay(net))
    wrong = KeyConfig((current.key_id + 1) % 256, current.kem_id, current.public_key, current.suites)
    enc, _ = encapsulate_request(wrong, b"anything")
    status, headers, body = ohttputil.post(_relay(net), enc)
    assert status == 422, body
    assert _error(body)["code"] == "ohttp_unknown_key" and f"key id {wrong.key_id}" in _error(body)["message"]
    assert decode_keys(bytes.fromhex(headers["cocoon-ohttp-keys"])) == [current]
    assert _paid(net) == paid
    _still_serves(net)


def test_replayed_encapsulation_is_served_and_charged_once(net: Net) -> None:
    enc, keys = ohttputil.encapsulate(ohttputil.gateway_keys(_relay(net)), ohttputil.chat(MODEL, "only once"))
    paid = _paid(net)
    status, _, body = ohttputil.post(_relay(net), enc)
    assert status == 200
    end = ohttputil.answers(keys, body)[-1]
    assert isinstance(end, ResponseEnd) and end.cost_nanoton > 0
    assert _paid(net) == paid + end.cost_nanoton
    for _ in range(2):
        status, _, body = ohttputil.post(_relay(net), enc)
        assert status == 400, body
        assert _error(body)["code"] == "ohttp_replayed" and "received before" in _error(body)["message"]
    assert _paid(net) == paid + end.cost_nanoton
    assert net.stats("proxy-1")["ohttp"]["replays_refused"] >= 2
    _still_serves(net)


def test_replayed_chunked_encapsulation_is_refused(net: Net) -> None:
    """The same attack on a streamed (chunked) request: its answer streams once, its replay is refused."""
    config = ohttputil.gateway_keys(_relay(net))
    enc, keys = encapsulate_request(config, oblivious.inner_request(ohttputil.chat(MODEL, "stream once", stream=True)),
                                    chunked=True)
    paid = _paid(net)
    status, headers, body = ohttputil.post(_relay(net), enc, content_type=CHUNKED_REQUEST_MEDIA_TYPE)
    assert status == 200 and headers["content-type"].startswith(CHUNKED_RESPONSE_MEDIA_TYPE)
    opener = keys.chunk_opener()
    answers = frames.FrameReader().feed(b"".join([*opener.feed(body), opener.close()]))
    end = answers[-1]
    assert isinstance(end, ResponseEnd) and end.cost_nanoton > 0 and _paid(net) == paid + end.cost_nanoton
    status, _, body = ohttputil.post(_relay(net), enc, content_type=CHUNKED_REQUEST_MEDIA_TYPE)
    assert status == 400 and _error(body)["code"] == "ohttp_replayed"
    fresh, _ = encapsulate_request(config, b"anything", chunked=True)  # a new `enc`: not refused as a replay
    tampered = fresh[:-1] + bytes([fresh[-1] ^ 1])
    status, _, body = ohttputil.post(_relay(net), tampered, content_type=CHUNKED_REQUEST_MEDIA_TYPE)
    assert status == 400 and _error(body)["code"] == "ohttp_decrypt_failed"
    assert _paid(net) == paid + end.cost_nanoton
    _still_serves(net)


def test_oversized_body_is_refused_uncharged(net: Net) -> None:
    paid = _paid(net)
    status, _, body = ohttputil.post(_relay(net), b"\x00" * (2 * 1024 * 1024))
    assert status == 413 and _error(body)["code"] == "request_too_large" and "limit" in _error(body)["message"]
    assert _paid(net) == paid
    _still_serves(net)


def test_not_an_encapsulated_request(net: Net) -> None:
    paid = _paid(net)
    status, _, body = ohttputil.post(_relay(net), b"\x01\x00")
    assert status == 400 and _error(body)["code"] == "ohttp_malformed"
    status, _, body = ohttputil.post(_relay(net), b"{}", content_type="application/json")
    assert status == 415 and _error(body)["code"] == "unsupported_media_type"
    # a well-formed encapsulation of something that is not a cocoon request: said inside, to the device only
    enc, keys = encapsulate_request(ohttputil.gateway_keys(_relay(net)), b"\x00\x01not binary http")
    status, _, body = ohttputil.post(_relay(net), enc)
    assert status == 200
    inner = ohttputil.answers(keys, body)
    assert isinstance(inner[0], ResponseError) and inner[0].code == "ohttp_malformed"
    assert _paid(net) == paid
    _still_serves(net)
