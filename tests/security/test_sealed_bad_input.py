"""Issue 10, item 1 ("Bad input"): sealed requests that cannot be served.

A client speaking the wire protocol (a genuine client node whose frames the test writes itself) sends sealed
requests to a real `cocoon up` proxy and worker: a changed byte of the ciphertext, of the encapsulation and of
the envelope it is bound to, a sealed body cut short, one sealed to a key no worker holds (a wrong key id), a
malformed one, one whose plaintext is over the proxy's `max_body_bytes`. Each is refused before any work with a
clean error whose code and message name what was wrong, nothing is charged (no row in the books), and the
network keeps serving (the same request sealed honestly is answered and charged).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.client.node import ClientNode
from cocoon.seal import seal_request
from cocoon.wire.messages import Request, ResponseEnd, ResponseError
from tests.netutil import Net, localnet, log_records
from tests.security.wire import Answer, refusal, wire_client

BODY = {"model": "fake-model", "max_tokens": 4, "messages": [{"role": "user", "content": "sealed and spoiled"}]}


def charged_rows(net: Net) -> int:
    with sqlite3.connect(net.node_dir("proxy-1") / "proxy-books.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]


async def send(node: ClientNode, req: Request) -> Answer:
    call = await node.api.link.call(req)
    answer: Answer = []
    while not answer or not isinstance(answer[-1], ResponseEnd | ResponseError):
        answer.append(await call.next(30))  # type: ignore[arg-type]
    return answer


def envelope(request_id: str, body: bytes = b"") -> Request:
    return Request(endpoint="chat", model="fake-model", body=body, stream=False, include_usage=False,
                   deadline=time.time() + 30, request_id=request_id, max_tokens=4, sealed=True)


async def attacks(net: Net) -> None:
    async with wire_client(net) as mallory:
        sealer = mallory.api.sealer
        assert sealer is not None
        keys = [w.hpke_public_key for w in await sealer.workers("fake-model")]
        plain = json.dumps(BODY).encode()

        def sealed(request_id: str, body: bytes = plain, to: list[bytes] = keys) -> tuple[Request, bytes]:
            req = envelope(request_id)
            return req, seal_request(body, to, req.envelope()).sealed

        cases: list[tuple[str, Request, int, str, str]] = []
        req, ct = sealed("ciphertext")
        cases.append(("ciphertext", Request(**{**_fields(req), "body": ct[:-20] + bytes([ct[-20] ^ 1]) + ct[-19:]}),
                      400, "sealed_request_invalid", "body does not open"))
        req, ct = sealed("encapsulation")
        spoiled = bytearray(ct)
        for i in range(ct[1]):  # every recipient's encapsulated key
            spoiled[2 + i * 88 + 8] ^= 1
        cases.append(("encapsulation", Request(**{**_fields(req), "body": bytes(spoiled)}), 400,
                      "sealed_request_invalid", "content key does not open"))
        req, ct = sealed("envelope")
        other = Request(**{**_fields(req), "body": ct, "model": "fake-model", "stream": True})
        cases.append(("envelope", other, 400, "sealed_request_invalid", "another envelope"))
        req, ct = sealed("cut-short")
        cases.append(("cut short", Request(**{**_fields(req), "body": ct[:40]}), 400, "sealed_request_invalid",
                      "too short"))
        cases.append(("malformed", Request(**{**_fields(envelope("malformed")), "body": b"{\"model\": 1}"}), 400,
                      "sealed_request_invalid", "malformed"))
        stranger = X25519PrivateKey.generate().public_key().public_bytes_raw()
        req, ct = sealed("wrong-key", to=[stranger])
        cases.append(("wrong key id", Request(**{**_fields(req), "body": ct}), 503, "seal_keys_stale",
                      "that this request was sealed to is linked"))
        req, ct = sealed("oversized", body=b'{"pad": "' + b"x" * (1024 * 1024) + b'"}')
        cases.append(("oversized", Request(**{**_fields(req), "body": ct}), 413, "request_too_large",
                      "sealed request body is 1048587 bytes"))

        rows = charged_rows(net)
        for what, bad, status, code, says in cases:
            answer = await send(mallory, bad)
            got_status, got_code, _ = refusal(answer)
            assert (got_status, got_code) == (status, code), f"{what}: {answer}"
            assert says in answer[0].message, f"{what}: {answer[0].message}"  # type: ignore[union-attr]
        assert charged_rows(net) == rows  # none was charged

        req, ct = sealed("honest")
        answer = await send(mallory, Request(**{**_fields(req), "body": ct}))
        assert isinstance(answer[-1], ResponseEnd) and answer[-1].cost_nanoton > 0
        assert charged_rows(net) == rows + 1


def _fields(req: Request) -> dict[str, object]:
    return {name: getattr(req, name) for name in req.__struct_fields__}


def test_bad_sealed_requests_get_clean_errors_and_are_never_charged(tmp_path: Path) -> None:
    with localnet(tmp_path / "state", engine="fake", workers=2) as net:
        asyncio.run(attacks(net))
        assert net.proc.poll() is None and all(w["proxy_connected"] for w in map(net.stats, _workers(net)))
        refused = "".join((net.state_dir / "logs" / f"{name}.log").read_text() for name in _workers(net))
        codes = [r.get("code") for r in log_records(refused)]
        assert codes.count("sealed_request_invalid") == 3  # the three that reached a worker


def _workers(net: Net) -> list[str]:
    return [n["name"] for n in net.by_role("worker")]
