"""A device's side of Oblivious HTTP for tests: fetch and verify the gateway's keys through a relay, encapsulate
a chat request as `cocoon client --via-relay` would, and POST it from a chosen source port (plain http.client:
the test controls every byte and sees every status)."""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

import msgspec

from cocoon.attest.policy import load_policy
from cocoon.client.api import wire_request
from cocoon.client.oblivious import GATEWAY_PATH, SIGNED_KEYS_PATH
from cocoon.config import ClientConfig
from cocoon.core.ids import new_request_id
from cocoon.ohttp.encap import REQUEST_MEDIA_TYPE, ResponseKeys, encapsulate_request
from cocoon.ohttp.keys import KeyConfig
from cocoon.openai import schema
from cocoon.ratls.cert import CertVerifier
from cocoon.wire import oblivious
from cocoon.wire.messages import Message, Request


def http_call(url: str, method: str, path: str, body: bytes | None = None, *, source_port: int = 0,
              headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout,
                                      source_address=("127.0.0.1", source_port))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def gateway_keys(relay_url: str) -> KeyConfig:
    """The gateway's current key configuration, checked like a client checks it (the dev policy)."""
    status, _, body = http_call(relay_url, "GET", SIGNED_KEYS_PATH)
    assert status == 200, body
    return oblivious.SignedKeys.decode(body).verify(CertVerifier(load_policy("dev"), {"proxy"}))


def chat(model: str, content: str, *, stream: bool = False, **extra: Any) -> Request:
    raw = msgspec.json.encode({"model": model, "messages": [{"role": "user", "content": content}],
                               "stream": stream, **extra})
    parsed = schema.parse_chat_request(raw, max_tokens_limit=4096, max_prompt_chars=200_000)
    return wire_request("chat", parsed, ClientConfig(name="device"), new_request_id())


def encapsulate(config: KeyConfig, req: Request) -> tuple[bytes, ResponseKeys]:
    return encapsulate_request(config, oblivious.inner_request(req))


def post(relay_url: str, body: bytes, *, source_port: int = 0, content_type: str = REQUEST_MEDIA_TYPE
         ) -> tuple[int, dict[str, str], bytes]:
    return http_call(relay_url, "POST", GATEWAY_PATH, body, source_port=source_port,
                     headers={"Content-Type": content_type})


def answers(keys: ResponseKeys, body: bytes) -> list[Message]:
    return oblivious.read_answers(keys.open_response(body))
