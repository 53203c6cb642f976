"""Receipts through real processes (issue 11 item 1): a chat answer through the real client -> proxy -> worker carries
a receipt that `cocoon receipt verify` accepts, against the worker's certificate, and refuses once one byte of the
answer changes; streamed and non-streamed. Bad input (a flipped byte, a receipt for another request, one signed by
an unattested key) is refused with the reason and exit 1, never a traceback."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.ledger.owner import RootOwner
from cocoon.ledger.receipts import Receipt
from cocoon.ledger.wallet import Wallet
from cocoon.openai.content import content_digest
from tests.netutil import Net, chain_ledger, localnet, owner_wallet

MODEL = "fake-model"
WEIGHTS = hashlib.sha256(b"the fake engine's declared weights").hexdigest()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    state = tmp_path_factory.mktemp("receipts") / "state"
    with localnet(state, engine="fake", workers=1, options=("reply_tokens=12", f"model_hash={WEIGHTS}")) as n:
        yield n


def ask(net: Net, body: dict[str, object]) -> tuple[bytes, bytes, str | None]:
    """(request body, answer body as received, x-cocoon-receipt header)."""
    raw = json.dumps(body).encode()
    req = urllib.request.Request(net.api_url + "/chat/completions", data=raw,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return raw, resp.read(), resp.headers.get("x-cocoon-receipt")


def chat(prompt: str, **fields: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **fields}


def verify(tmp: Path, request: bytes, response: bytes, receipt: str | bytes | None, *extra: str
           ) -> subprocess.CompletedProcess[str]:
    (tmp / "request.json").write_bytes(request)
    (tmp / "response").write_bytes(response)
    args = ["--request", str(tmp / "request.json"), "--response", str(tmp / "response")]
    if receipt is not None:
        (tmp / "receipt").write_bytes(receipt.encode() if isinstance(receipt, str) else receipt)
        args += ["--receipt", str(tmp / "receipt")]
    return subprocess.run([sys.executable, "-m", "cocoon", "receipt", "verify", *args, *extra],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})


def refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("refused: ") and reason in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def cert_of(net: Net) -> tuple[str, ...]:
    return ("--cert", str(net.node_dir("worker-1") / "worker-1.cert.pem"), "--policy", "dev")


def flip(answer: bytes, word: bytes) -> bytes:
    """The answer with one byte of its generated text changed."""
    at = answer.index(word)
    return answer[:at] + bytes([answer[at] ^ 0x20]) + answer[at + 1:]


def content_word(answer: bytes) -> bytes:
    text = answer.decode()
    for payload in (line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: {")):
        for choice in json.loads(payload).get("choices", []):
            word = (choice.get("delta") or {}).get("content")
            if word and word.strip():
                return word.strip().encode()
    return json.loads(text)["choices"][0]["message"]["content"].split()[0].encode()


def test_a_non_streamed_answer_carries_a_receipt_that_verifies_and_fails_after_one_byte_changes(
        net: Net, tmp_path: Path) -> None:
    request, answer, header = ask(net, chat("tell me about receipts"))
    assert header is not None
    receipt = Receipt.from_base64(header)
    counter = receipt.verify()
    body = json.loads(answer)
    assert counter.cost_nanoton == body["usage"]["cost_nanoton"] > 0 and counter.voucher_hash
    assert receipt.model == MODEL and receipt.model_hash.hex() == WEIGHTS and receipt.model_hash_declared
    assert receipt.usage.completion_tokens == body["usage"]["completion_tokens"] == 12

    ok = verify(tmp_path, request, answer, header, *cert_of(net))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("receipt holds: ") and "certificate accepted by policy 'dev'" in ok.stdout
    assert len(ok.stdout.strip().splitlines()) == 1

    refused(verify(tmp_path, request, flip(answer, content_word(answer)), header), "answer hash does not match")


def test_a_streamed_answer_carries_its_receipt_in_the_final_usage_chunk(net: Net, tmp_path: Path) -> None:
    request, answer, header = ask(net, chat("stream me a receipt", stream=True,
                                            stream_options={"include_usage": True}))
    assert header is None  # a stream's headers leave before its end: the receipt rides in its usage chunk
    events = [line.removeprefix("data: ") for line in answer.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert usage["cost_nanoton"] > 0 and Receipt.from_base64(usage["receipt"]).verify().cost_nanoton == \
        usage["cost_nanoton"]

    ok = verify(tmp_path, request, answer, None, *cert_of(net))  # the receipt is taken from the stream
    assert ok.returncode == 0 and ok.stdout.startswith("receipt holds: "), ok.stdout + ok.stderr
    refused(verify(tmp_path, request, flip(answer, content_word(answer)), None), "answer hash does not match")
    # the usage chunk is covered too: a changed token count is caught
    changed = answer.replace(b'"completion_tokens":12', b'"completion_tokens":13')
    assert changed != answer
    refused(verify(tmp_path, request, changed, None), "answer hash does not match")


def test_a_deterministic_sealed_answer_states_what_it_says(net: Net, tmp_path: Path) -> None:
    """Sealed (the default) and deterministic: the receipt states the answer's content digest, what spot checks
    compare, which the client and `cocoon receipt verify` check against the answer."""
    request, answer, header = ask(net, chat("the same answer every time", temperature=0))
    assert header is not None
    receipt = Receipt.from_base64(header)
    assert receipt.sealed_request_hash and receipt.content_digest == content_digest([answer])
    ok = verify(tmp_path, request, answer, header, *cert_of(net))
    assert ok.returncode == 0 and ok.stdout.startswith("receipt holds: "), ok.stdout + ok.stderr
    *_, sampled_header = ask(net, chat("an answer of its own", temperature=0.7))
    assert sampled_header is not None and Receipt.from_base64(sampled_header).content_digest == b""


def test_a_stream_without_usage_has_no_receipt_and_says_where_it_would_be(net: Net, tmp_path: Path) -> None:
    request, answer, _ = ask(net, chat("no usage please", stream=True))
    assert b'"usage"' not in answer
    refused(verify(tmp_path, request, answer, None), "include_usage")


def test_bad_receipts_are_refused_with_the_reason(net: Net, tmp_path: Path) -> None:
    request, answer, header = ask(net, chat("first question"))
    other_request, other_answer, other_header = ask(net, chat("a different question"))
    assert header is not None and other_header is not None

    raw = base64.b64decode(header)
    at = raw.index(b"request_id") + 12  # a byte inside the request id the worker signed
    flipped = base64.b64encode(raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:]).decode()
    refused(verify(tmp_path, request, answer, flipped), "worker's signature does not verify")

    refused(verify(tmp_path, request, answer, other_header), "receipt is for another request")
    assert verify(tmp_path, other_request, other_answer, other_header).returncode == 0

    # a receipt re-signed by a key no quote attests, and countersigned by a key of its own: both signatures hold,
    # the worker's certificate does not name that key
    genuine = Receipt.from_base64(header)
    assert genuine.countersignature is not None
    mallory = Ed25519PrivateKey.generate()
    forged = msgspec.structs.replace(genuine, worker_key=mallory.public_key().public_bytes_raw()).sign(mallory.sign)
    proxy = Wallet(os.urandom(32))
    c = genuine.countersignature
    forged = forged.countersign(proxy.sign, proxy.public_key, usage=c.usage, cost_nanoton=c.cost_nanoton,
                                coefficient=c.coefficient, voucher=None, signed_at=c.signed_at)
    assert verify(tmp_path, request, answer, forged.to_base64()).returncode == 0  # self-consistent without --cert
    refused(verify(tmp_path, request, answer, forged.to_base64(), *cert_of(net)), "unattested key")

    for garbage, reason in ((b"not base64 at all!", "base64"), (base64.b64encode(b"\x93\x01\x02\x03"), "not a receipt"),
                            (b"", "not a receipt")):
        refused(verify(tmp_path, request, answer, garbage), reason)
    refused(verify(tmp_path, b"{not json", answer, header), "request")


def test_the_client_counts_the_receipts_it_checked(net: Net) -> None:
    ask(net, chat("count me"))
    stats = net.stats("client-1")
    assert stats["receipts"]["held"] >= 1 and stats["receipts"]["refused"] == 0 and stats["receipts"]["missing"] == 0
    assert net.stats("proxy-1")["receipts"]["refused"] == 0
    assert stats["unbacked_answers"] == 0 and stats["overcharges"] == 0


def test_ledger_dispute_exports_every_charge_with_its_receipt(net: Net, tmp_path: Path) -> None:
    """Issue 11 item 2: the client's evidence: the newest voucher, every charge with the receipt backing it; on
    honest traffic nothing is contested."""
    _, _, header = ask(net, chat("evidence, please"))
    assert header is not None
    request_id = Receipt.from_base64(header).request_id
    out = tmp_path / "evidence.json"
    result = subprocess.run([sys.executable, "-m", "cocoon", "ledger", "dispute", "--state-dir", str(net.state_dir),
                             "--name", "client-1", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "contested 0.000000000 TON" in result.stdout
    (channel,) = json.loads(out.read_text())["channels"]
    charges = {c["request_id"]: c for c in channel["charges"]}
    assert charges[request_id]["receipt"] == header
    assert all(Receipt.from_base64(c["receipt"]).verify().cost_nanoton == c["cost_nanoton"]
               for c in charges.values())
    assert channel["contested_nanoton"] == 0 and channel["unbacked_nanoton"] == 0
    assert channel["voucher"]["amount_nanoton"] == channel["backed_nanoton"] == sum(
        c["cost_nanoton"] for c in charges.values())

    one = subprocess.run([sys.executable, "-m", "cocoon", "ledger", "dispute", "--state-dir", str(net.state_dir),
                          "--request-id", request_id], capture_output=True, text=True, timeout=60)
    assert one.returncode == 0 and [c["request_id"] for c in json.loads(one.stdout)["channels"][0]["charges"]] \
        == [request_id]
    missing = subprocess.run([sys.executable, "-m", "cocoon", "ledger", "dispute", "--state-dir", str(net.state_dir),
                              "--request-id", "no-such-request"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "saw no charge for request no-such-request" in missing.stderr


def test_the_registry_vouches_for_the_countersigning_proxy_the_worker_image_and_its_weights(
        net: Net, tmp_path: Path) -> None:
    """`--ledger`: the countersigning key is a registered proxy's (cocoon up registers it), and the receipt holds
    only once the root lists the worker's image and, for its model, its weights."""
    request, answer, header = ask(net, chat("is this worker registered?"))
    assert header is not None
    receipt = Receipt.from_base64(header)
    ledger = ("--ledger", str(net.state_dir))  # the network's chain, over the devnet's API
    refused(verify(tmp_path, request, answer, header, *ledger), f"image {receipt.image_hash.hex()} is not in the root")
    chain = chain_ledger(net.chain)
    try:
        owner = RootOwner(chain, owner_wallet(net.state_dir))
        owner.set_allowed_images("worker", [receipt.image_hash])
        refused(verify(tmp_path, request, answer, header, *ledger), f"does not list model hash {WEIGHTS}")
        owner.allow_model(MODEL, WEIGHTS)
    finally:
        chain.close()
    ok = verify(tmp_path, request, answer, header, *ledger)
    assert ok.returncode == 0 and "registered proxy and worker image" in ok.stdout, ok.stdout + ok.stderr
