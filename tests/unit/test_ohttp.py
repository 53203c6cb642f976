"""Binary HTTP (RFC 9292) and Oblivious HTTP (RFC 9458) against the RFC 9458 Appendix A example, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.ohttp import bhttp
from cocoon.ohttp.encap import OhttpError, decapsulate_request, encapsulate_request, read_header
from cocoon.ohttp.keyring import KeyRing
from cocoon.ohttp.keys import (
    AEAD_AES_128_GCM,
    AEAD_CHACHA20_POLY1305,
    KDF_HKDF_SHA256,
    GatewayKey,
    KeyConfig,
    KeyConfigError,
    decode_keys,
    encode_keys,
)

# RFC 9458 Appendix A
SKR = bytes.fromhex("3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a")
KEY_CONFIG = bytes.fromhex("01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e798155"
                           "00080001000100010003")
BHTTP_REQUEST = bytes.fromhex("00034745540568747470730b6578616d706c652e636f6d012f")
SKE = bytes.fromhex("bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73")
ENC_REQUEST = bytes.fromhex("010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472"
                            "6374e469135906992e1268c594d2a10c695d858c40a026e7965e7d86b83dd440b2c0185204b4d63525")
BHTTP_RESPONSE = bytes.fromhex("0140c8")
RESPONSE_NONCE = bytes.fromhex("c789e7151fcba46158ca84b04464910d")
ENC_RESPONSE = bytes.fromhex("c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd")


def rfc_key() -> GatewayKey:
    return GatewayKey.from_private(1, SKR, ((KDF_HKDF_SHA256, AEAD_AES_128_GCM),
                                            (KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305)))


def test_rfc_key_config() -> None:
    config = KeyConfig.decode(KEY_CONFIG)
    assert config.key_id == 1 and config.kem_id == 0x20
    assert config.suites == ((1, 1), (1, 3))
    assert config.encode() == KEY_CONFIG
    assert rfc_key().config == config  # the private key yields the published public key
    assert decode_keys(encode_keys([config, config])) == [config, config]
    assert encode_keys([config])[:2] == len(KEY_CONFIG).to_bytes(2, "big")


def test_rfc_binary_http() -> None:
    req = bhttp.BhttpRequest(b"GET", b"https", b"example.com", b"/")
    assert bhttp.encode_request(req) == BHTTP_REQUEST
    assert bhttp.decode_request(BHTTP_REQUEST) == req
    assert bhttp.encode_response(bhttp.BhttpResponse(200)) == BHTTP_RESPONSE
    assert bhttp.decode_response(BHTTP_RESPONSE) == bhttp.BhttpResponse(200)


def test_rfc_request_encapsulation() -> None:
    enc_request, _ = encapsulate_request(KeyConfig.decode(KEY_CONFIG), BHTTP_REQUEST, ephemeral=SKE)
    assert enc_request == ENC_REQUEST
    request, _ = decapsulate_request(rfc_key(), ENC_REQUEST)
    assert request == BHTTP_REQUEST


def test_rfc_response_encapsulation() -> None:
    _, gateway = decapsulate_request(rfc_key(), ENC_REQUEST)
    assert gateway.seal_response(BHTTP_RESPONSE, RESPONSE_NONCE) == ENC_RESPONSE
    _, client = encapsulate_request(KeyConfig.decode(KEY_CONFIG), BHTTP_REQUEST, ephemeral=SKE)
    assert client.open_response(ENC_RESPONSE) == BHTTP_RESPONSE


def test_a_changed_byte_anywhere_does_not_open() -> None:
    key = rfc_key()
    for i in range(7, len(ENC_REQUEST)):
        tampered = bytearray(ENC_REQUEST)
        tampered[i] ^= 1
        with pytest.raises(OhttpError) as err:
            decapsulate_request(key, bytes(tampered))
        assert err.value.reason == "decrypt_failed"
    _, client = encapsulate_request(key.config, BHTTP_REQUEST, ephemeral=SKE)
    for i in range(len(ENC_RESPONSE)):
        tampered = bytearray(ENC_RESPONSE)
        tampered[i] ^= 0x80
        with pytest.raises(OhttpError, match="does not open"):
            client.open_response(bytes(tampered))


def test_header_errors_name_what_is_wrong() -> None:
    with pytest.raises(OhttpError, match="at least 7 bytes") as err:
        read_header(b"\x01\x00")
    assert err.value.reason == "malformed"
    with pytest.raises(OhttpError) as err:
        read_header(b"\x01\x00\x10" + ENC_REQUEST[3:])
    assert err.value.reason == "unsupported_suite"
    other = GatewayKey.generate(2)
    with pytest.raises(OhttpError) as err:
        decapsulate_request(other, ENC_REQUEST)
    assert err.value.reason == "unknown_key"
    with pytest.raises(OhttpError) as err:  # a suite the key does not offer
        decapsulate_request(rfc_key(), ENC_REQUEST[:5] + b"\x00\x02" + ENC_REQUEST[7:])
    assert err.value.reason == "unsupported_suite"


def test_key_config_errors() -> None:
    with pytest.raises(KeyConfigError, match="KEM"):
        KeyConfig.decode(b"\x01\x00\x10" + KEY_CONFIG[3:])
    with pytest.raises(KeyConfigError, match="multiple of 4"):
        KeyConfig.decode(KEY_CONFIG[:-1])
    with pytest.raises(KeyConfigError, match="after"):
        KeyConfig.decode(KEY_CONFIG + b"\x00")
    with pytest.raises(KeyConfigError, match="no key configuration"):
        decode_keys(b"")
    with pytest.raises(KeyConfigError, match="no KDF/AEAD"):
        KeyConfig(1, 0x20, bytes(32), ((1, 9),)).usable_suite()


def test_bhttp_truncation_padding_and_errors() -> None:
    req = bhttp.BhttpRequest(b"POST", b"https", b"cocoon", b"/v1/request", [(b"Content-Type", b"x/y")], b"body")
    encoded = bhttp.encode_request(req)
    decoded = bhttp.decode_request(encoded + b"\x00" * 5)  # zero padding
    assert decoded.content == b"body" and decoded.header(b"content-type") == b"x/y"
    with pytest.raises(bhttp.BhttpError, match="not zero padding"):
        bhttp.decode_request(encoded + b"\x00\x01")  # empty trailers, then a non-zero byte
    with pytest.raises(bhttp.BhttpError, match="claims"):
        bhttp.decode_request(encoded[:-1])
    with pytest.raises(bhttp.BhttpError, match="not a request"):
        bhttp.decode_request(BHTTP_RESPONSE)
    with pytest.raises(bhttp.BhttpError, match=r"outside 100\.\.599"):
        bhttp.decode_response(b"\x01\x40\x63")
    with pytest.raises(bhttp.BhttpError, match=r"200\.\.599"):
        bhttp.encode_response(bhttp.BhttpResponse(100))
    informational = bhttp.BhttpResponse(200, informational=[(103, [(b"link", b"</x>")])], content=b"ok")
    assert bhttp.decode_response(bhttp.encode_response(informational)) == informational


def test_bhttp_indeterminate_length() -> None:
    req = bhttp.BhttpRequest(b"POST", b"https", b"a", b"/", [(b"x", b"1")], b"", [(b"t", b"2")])
    decoded = bhttp.decode_request(bhttp.encode_indeterminate_request(req, [b"ab", b"", b"cd"]))
    assert decoded.content == b"abcd" and decoded.headers == [(b"x", b"1")] and decoded.trailers == [(b"t", b"2")]


@pytest.mark.parametrize("n", [0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1])
def test_varints_at_their_edges(n: int) -> None:
    r = bhttp._Reader(bhttp.encode_varint(n))
    assert r.varint("x") == n and r.at_end()


_token = st.binary(min_size=1, max_size=12).map(lambda b: b.lower())
_fields = st.lists(st.tuples(_token, st.binary(max_size=20)), max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=8), st.binary(max_size=8), st.binary(max_size=16), st.binary(max_size=16), _fields,
       st.binary(max_size=64), _fields)
def test_bhttp_request_round_trip(method: bytes, scheme: bytes, authority: bytes, path: bytes,
                                  headers: list[tuple[bytes, bytes]], content: bytes,
                                  trailers: list[tuple[bytes, bytes]]) -> None:
    req = bhttp.BhttpRequest(method, scheme, authority, path, headers, content, trailers)
    assert bhttp.decode_request(bhttp.encode_request(req)) == req
    chunks = [content[: len(content) // 2], content[len(content) // 2:]]
    assert bhttp.decode_request(bhttp.encode_indeterminate_request(req, chunks)) == req


@settings(max_examples=60, deadline=None)
@given(st.integers(200, 599), _fields, st.binary(max_size=64), _fields)
def test_bhttp_response_round_trip(status: int, headers: list[tuple[bytes, bytes]], content: bytes,
                                   trailers: list[tuple[bytes, bytes]]) -> None:
    res = bhttp.BhttpResponse(status, headers, content, trailers)
    assert bhttp.decode_response(bhttp.encode_response(res)) == res


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_bhttp_decoders_raise_only_their_error(data: bytes) -> None:
    for decode in (bhttp.decode_request, bhttp.decode_response):
        try:
            decode(data)
        except bhttp.BhttpError:
            pass


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=512), st.binary(max_size=512), st.sampled_from([AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305]))
def test_ohttp_round_trip(request: bytes, response: bytes, aead: int) -> None:
    key = GatewayKey.generate(7, ((KDF_HKDF_SHA256, aead),))
    enc_request, client = encapsulate_request(key.config, request)
    opened, gateway = decapsulate_request(key, enc_request)
    assert opened == request
    assert client.open_response(gateway.seal_response(response)) == response


def test_keyring_rotates_with_overlap() -> None:
    ring = KeyRing(0.0, rotate_s=100, overlap_s=10)
    first = ring.current(0.0)
    assert decode_keys(ring.published(0.0)) == [first]
    enc_request, _ = encapsulate_request(first, b"r1")
    second = ring.current(100.0)
    assert second.key_id == (first.key_id + 1) % 256 and second.public_key != first.public_key
    assert ring.open(enc_request, 105.0)[0] == b"r1"  # within the overlap
    late, _ = encapsulate_request(first, b"r2")
    with pytest.raises(OhttpError, match="fetch the key configuration again") as err:
        ring.open(late, 110.0)
    assert err.value.reason == "unknown_key"
    assert ring.open(encapsulate_request(second, b"r3")[0], 110.0)[0] == b"r3"


def test_keyring_refuses_replays_and_bounds_its_memory() -> None:
    ring = KeyRing(0.0, max_requests=2)
    config = ring.current(0.0)
    enc_request, _ = encapsulate_request(config, b"once")
    ring.open(enc_request, 1.0)
    with pytest.raises(OhttpError, match="replay") as err:
        ring.open(enc_request, 2.0)
    assert err.value.reason == "replayed" and ring.replays == 1
    # a tampered copy is not remembered: the original still opens once
    fresh, _ = encapsulate_request(config, b"second")
    with pytest.raises(OhttpError):
        ring.open(fresh[:-1] + bytes([fresh[-1] ^ 1]), 3.0)
    ring.open(fresh, 3.0)
    assert ring.current(3.0).key_id != config.key_id  # full: rotated out at once
    with pytest.raises(OhttpError) as err:
        ring.open(encapsulate_request(config, b"third")[0], 4.0)
    assert err.value.reason == "unknown_key"


# -- chunked (draft-ietf-ohai-chunked-ohttp) --------------------------------------------------------------------
def _chunked_exchange(chunks: list[bytes]) -> tuple[list[bytes], bytes, object]:
    """A chunked request and its chunked response: the response's wire chunks, the whole response, the opener."""
    key = GatewayKey.generate(9)
    enc_request, client = encapsulate_request(key.config, b"the request", chunked=True)
    opened, gateway = decapsulate_request(key, enc_request, chunked=True)
    assert opened == b"the request"
    with pytest.raises(OhttpError):  # a chunked request is not a plain one, nor the other way round
        decapsulate_request(key, enc_request)
    sealer = gateway.chunk_sealer()
    wire = [sealer.head] + [sealer.seal(c) for c in chunks[:-1]] + [sealer.seal(chunks[-1], final=True)]
    return wire, b"".join(wire), client.chunk_opener()


def test_chunked_response_opens_as_it_arrives() -> None:
    chunks = [b"one", b"", b"three" * 50, b"last"]
    _, whole, opener = _chunked_exchange(chunks)
    got: list[bytes] = []
    for i in range(len(whole)):  # one byte at a time: every chunk opens as soon as it is complete
        got += opener.feed(whole[i:i + 1])
    got.append(opener.close())
    assert got == chunks and opener.finished
    with pytest.raises(OhttpError, match="after the final chunk"):
        opener.feed(b"x")


@pytest.mark.parametrize("attack", ["flip", "drop", "swap", "cut", "cut_final", "replay_chunk"])
def test_chunked_response_refuses_a_changed_stream(attack: str) -> None:
    wire, _, opener = _chunked_exchange([b"a1", b"b2", b"c3", b"end"])
    head, *chunks = wire
    if attack == "flip":
        chunks[1] = chunks[1][:-1] + bytes([chunks[1][-1] ^ 1])
    elif attack == "drop":
        del chunks[1]
    elif attack == "swap":
        chunks[0], chunks[1] = chunks[1], chunks[0]
    elif attack == "cut":
        chunks = chunks[:2]
    elif attack == "cut_final":
        chunks[-1] = chunks[-1][:-3]
    elif attack == "replay_chunk":
        chunks.insert(1, chunks[0])
    with pytest.raises(OhttpError) as err:
        opener.feed(head + b"".join(chunks))
        opener.close()
    assert err.value.reason in ("decrypt_failed", "truncated")


def test_chunked_request_errors() -> None:
    key = GatewayKey.generate(9)
    enc_request, _ = encapsulate_request(key.config, b"r", chunked=True)
    with pytest.raises(OhttpError) as err:
        decapsulate_request(key, enc_request[:-1], chunked=True)
    assert err.value.reason == "decrypt_failed"
    with pytest.raises(OhttpError) as err:  # a non-final chunk claiming more bytes than there are
        decapsulate_request(key, enc_request[:7 + 32] + b"\x3f" + b"\x00" * 17, chunked=True)
    assert err.value.reason == "malformed"
