"""What travels inside Oblivious HTTP (wire/oblivious.py): the inner request and answers, and the gateway's keys
signed by the proxy's RA-TLS key, which a requester checks before it encapsulates (a relay that hands out keys of
its own is refused)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.fake import FakeBackend
from cocoon.attest.policy import DEV_POLICY
from cocoon.attest.types import AttestationError
from cocoon.core.errors import ApiError
from cocoon.core.usage import Usage
from cocoon.ohttp import bhttp
from cocoon.ohttp.keys import GatewayKey, encode_keys
from cocoon.ratls.cert import CertVerifier, make_identity
from cocoon.wire import oblivious
from cocoon.wire.messages import ModelsQuery, Request, ResponseChunk, ResponseEnd, ResponseHead

REQ = Request(endpoint="chat", model="m", body=b'{"model":"m"}', stream=True, include_usage=True, deadline=1.0,
              request_id="r1", max_tokens=7, features=["tools"])


def test_the_inner_request_is_the_wire_request() -> None:
    assert oblivious.read_inner(oblivious.inner_request(REQ)) == REQ
    assert isinstance(oblivious.read_inner(oblivious.inner_models()), ModelsQuery)


@pytest.mark.parametrize(("inner", "says"), [
    (b"\x00\x01", "not Binary HTTP"),
    (bhttp.encode_request(bhttp.BhttpRequest(b"GET", b"https", b"cocoon", b"/elsewhere")), "must be POST"),
    (bhttp.encode_request(bhttp.BhttpRequest(b"POST", b"https", b"cocoon", oblivious.MODELS_PATH, [], b"\xc1")),
     "not a cocoon request"),
    (bhttp.encode_request(bhttp.BhttpRequest(b"POST", b"https", b"cocoon", oblivious.REQUEST_PATH, [], b"\xc1")),
     "not a cocoon request"),
])
def test_what_is_not_a_request_is_named(inner: bytes, says: str) -> None:
    with pytest.raises(ApiError, match=says) as err:
        oblivious.read_inner(inner)
    assert err.value.status == 400 and err.value.code == "ohttp_malformed"


def test_answers_travel_as_frames() -> None:
    answers = [ResponseHead(call_id=0, status=200), ResponseChunk(call_id=0, data=b"{}"),
               ResponseEnd(call_id=0, usage=Usage(prompt_tokens=1), cost_nanoton=5)]
    assert oblivious.read_answers(oblivious.inner_response(answers)) == answers
    for bad in (b"\x01\x40\xc8", bhttp.encode_response(bhttp.BhttpResponse(500, content=b"x")), b"junk"):
        with pytest.raises(ApiError) as err:
            oblivious.read_answers(bad)
        assert err.value.status == 502


FAKE = FakeBackend("cocoon-proxy-dev")
KEYS = encode_keys([GatewayKey.generate(3).config])


def verifier() -> CertVerifier:
    return CertVerifier(DEV_POLICY, {"proxy"})


def test_signed_keys_verify_against_the_attested_proxy() -> None:
    proxy = make_identity("proxy", FAKE)
    signed = oblivious.SignedKeys.decode(oblivious.SignedKeys.sign(proxy, KEYS).encode())
    assert signed.verify(verifier()).key_id == 3


def test_keys_a_relay_substitutes_are_refused() -> None:
    proxy = make_identity("proxy", FAKE)
    genuine = oblivious.SignedKeys.sign(proxy, KEYS)
    own = encode_keys([GatewayKey.generate(3).config])  # the relay's own key, under the proxy's certificate
    with pytest.raises(AttestationError, match="not signed by the attested proxy"):
        oblivious.SignedKeys(own, genuine.cert, genuine.signature).verify(verifier())
    resigned = oblivious.SignedKeys(own, genuine.cert, Ed25519PrivateKey.generate().sign(b"x"))
    with pytest.raises(AttestationError, match="not signed by the attested proxy"):
        resigned.verify(verifier())
    client = make_identity("client", FAKE)  # signed by an attested party that is not a proxy
    with pytest.raises(AttestationError):
        oblivious.SignedKeys.sign(client, own).verify(verifier())
    with pytest.raises(AttestationError, match="unreadable"):
        oblivious.SignedKeys.decode(b"\x00junk")
