"""proxy/spotcheck.py (sampling, verdicts, the evidence record) and openai/content.py (content digests, what is
deterministic), and their effect on reputation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import msgspec
import pytest
from nacl.signing import SigningKey

from cocoon.config import ProxyConfig, SpotCheckConfig
from cocoon.core.usage import Usage
from cocoon.ledger.receipts import Receipt
from cocoon.openai.content import content_digest, is_deterministic
from cocoon.proxy.reputation import Reputation, ReputationBook
from cocoon.proxy.spotcheck import (
    FAILED,
    PASSED,
    UNRESOLVED,
    Execution,
    SpotEvidence,
    SpotSampler,
    execution,
    judge,
)
from cocoon.wire.messages import Request, ResponseEnd


def request(**body: object) -> Request:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    return Request(endpoint="chat", model="m", body=json.dumps(payload).encode(), stream=False, include_usage=True,
                   deadline=0.0, request_id="r")


@pytest.mark.parametrize(("body", "deterministic"), [
    ({"temperature": 0}, True),
    ({"temperature": 0.0}, True),
    ({"seed": 7}, True),
    ({"seed": 7, "temperature": 1.3}, True),  # a seed fixes the sampling
    ({}, False),  # the default temperature samples
    ({"temperature": 0.7}, False),
    ({"seed": "7"}, False),
    ({"seed": True}, False),
    ({"temperature": False}, False),
])
def test_deterministic_requests_are_temperature_zero_or_seeded(body: dict[str, object], deterministic: bool) -> None:
    assert is_deterministic(request(**body).body) is deterministic


def test_bodies_that_are_not_json_objects_are_not_deterministic() -> None:
    assert not is_deterministic(b"[1, 2]")
    assert not is_deterministic(b"\xff not json")


def test_sampling_takes_the_configured_share_of_deterministic_requests_only() -> None:
    sampler = SpotSampler(0.25, random.Random(1))
    chosen = sum(sampler.sample(request(temperature=0)) is not None for _ in range(2000))
    assert 400 <= chosen <= 600  # 500 expected; a seeded draw, so this is exact on every run
    assert sampler.deterministic == 2000 and sampler.sampled == chosen
    assert all(sampler.sample(request(temperature=1)) is None for _ in range(200))
    assert sampler.deterministic == 2000
    always, never = SpotSampler(1.0), SpotSampler(0.0)
    assert all(always.sample(request(seed=1)) is not None for _ in range(50))
    assert all(never.sample(request(seed=1)) is None for _ in range(50))


def test_the_default_share_is_two_percent_and_bad_shares_are_refused() -> None:
    assert ProxyConfig(name="p").spot_checks.share == 0.02
    for share in (-0.1, 1.5):
        with pytest.raises(msgspec.ValidationError, match="share"):
            msgspec.convert({"share": share}, SpotCheckConfig)


def chat_whole(text: str, cid: str = "chatcmpl-1", created: int = 1) -> bytes:
    return json.dumps({"id": cid, "created": created, "object": "chat.completion", "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}).encode()


def chat_stream(pieces: list[str], cid: str = "chatcmpl-2") -> list[bytes]:
    out = [json.dumps({"id": cid, "created": 5, "choices": [{"index": 0, "delta": {"content": p},
                                                             "finish_reason": None}]}).encode() for p in pieces]
    out.append(json.dumps({"id": cid, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode())
    out.append(json.dumps({"id": cid, "choices": [], "usage": {"total_tokens": 3}}).encode())
    return [*out, b"[DONE]"]


def test_content_digest_ignores_what_is_fresh_per_answer_and_the_answer_form() -> None:
    whole = content_digest([chat_whole("amber basalt")])
    assert content_digest([chat_whole("amber basalt", cid="chatcmpl-other", created=99)]) == whole
    assert content_digest(chat_stream(["amber", " basalt"])) == whole
    assert content_digest([chat_whole("amber cedar")]) != whole
    assert content_digest(chat_stream(["amber"])) != whole  # a shorter answer is another answer


def test_content_digest_covers_choices_tool_calls_and_finish_reasons() -> None:
    def tool(args: str) -> bytes:
        return json.dumps({"choices": [{"index": 0, "message": {"tool_calls": [
            {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": args}}]},
            "finish_reason": "tool_calls"}]}).encode()

    streamed = [json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_y", "function": {"name": "f", "arguments": a}}]}}]}).encode()
        for a in ('{"a":', ' 1}')]
    streamed[1] = streamed[1].replace(b'"name": "f"', b'"name": ""')
    streamed.append(json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}).encode())
    assert content_digest([tool('{"a": 1}')]) == content_digest(streamed)
    assert content_digest([tool('{"a": 2}')]) != content_digest([tool('{"a": 1}')])
    two = json.dumps({"choices": [{"index": 0, "text": "x", "finish_reason": "stop"},
                                  {"index": 1, "text": "y", "finish_reason": "length"}]}).encode()
    swapped = json.dumps({"choices": [{"index": 1, "text": "x", "finish_reason": "stop"},
                                      {"index": 0, "text": "y", "finish_reason": "length"}]}).encode()
    assert content_digest([two]) != content_digest([swapped])
    stop = json.dumps({"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}).encode()
    cut = json.dumps({"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]}).encode()
    assert content_digest([stop]) != content_digest([cut])


def run(worker: str, digest: str) -> Execution:
    return Execution(worker=worker, name=f"w-{worker}", digest=digest, usage=Usage(prompt_tokens=1))


def test_verdicts() -> None:
    assert judge([run("a", "x"), run("b", "x")]) == (PASSED, None)
    assert judge([run("a", "x"), run("b", "y")]) == (UNRESOLVED, None)  # no referee: nobody is blamed
    assert judge([run("a", "x"), run("b", "y"), run("c", "x")]) == (FAILED, "b")
    assert judge([run("a", "x"), run("b", "y"), run("c", "y")]) == (FAILED, "a")
    assert judge([run("a", "x"), run("b", "y"), run("c", "z")]) == (UNRESOLVED, None)
    with pytest.raises(ValueError):
        judge([run("a", "x")])


def evidence(blamed: str | None, verdict: str = FAILED) -> SpotEvidence:
    return SpotEvidence(request_id="req-1", model="m", image_hash="ab" * 32, checked_at=1.0, verdict=verdict,
                        blamed=blamed, runs=[run("a", "x"), run("b", "y"), run("c", "x")])


def test_blame_costs_success_and_benches_after_repeated_mismatches_doubling() -> None:
    cfg = SpotCheckConfig(bench_after=2, bench_s=100, evidence_kept=3)
    rep = Reputation(key="b", name="liar")
    assert not rep.record_spot_check(FAILED, evidence("b"), True, now=10, cfg=cfg)
    assert rep.spot_failed == 1 and rep.success < 1.0 and rep.benched_until == 0
    assert rep.record_spot_check(FAILED, evidence("b"), True, now=20, cfg=cfg)
    assert rep.benched_until == 120
    assert rep.record_spot_check(FAILED, evidence("b"), True, now=30, cfg=cfg)
    assert rep.benched_until == 230  # twice as long
    for _ in range(3):
        rep.record_spot_check(FAILED, evidence("b"), True, now=40, cfg=cfg)
    assert len(rep.spot_evidence) == 3  # only the newest are kept


def test_agreeing_and_unresolved_runs_cost_nothing() -> None:
    cfg = SpotCheckConfig(bench_after=1)
    honest = Reputation(key="a", name="honest")
    assert not honest.record_spot_check(PASSED, None, False, now=1, cfg=cfg)
    assert not honest.record_spot_check(FAILED, evidence("b"), False, now=1, cfg=cfg)  # it agreed with the referee
    assert not honest.record_spot_check(UNRESOLVED, evidence(None, UNRESOLVED), False, now=1, cfg=cfg)
    assert (honest.spot_passed, honest.spot_failed, honest.spot_unresolved) == (2, 0, 1)
    assert honest.success == 1.0 and honest.benched_until == 0
    assert len(honest.spot_evidence) == 2


def test_the_record_shows_in_the_summary_and_survives_a_restart(tmp_path: Path) -> None:
    book = ReputationBook(keep_s=3600)
    rep = book.attach("b", "liar", now=0)
    rep.record_spot_check(FAILED, evidence("b"), True, now=0, cfg=SpotCheckConfig())
    shown = msgspec.to_builtins(book.summaries(now=0)[0])["spot_checks"]
    assert (shown["passed"], shown["failed"], shown["unresolved"]) == (0, 1, 0)
    assert shown["evidence"][0]["blamed"] == "b"
    assert [r["digest"] for r in shown["evidence"][0]["runs"]] == ["x", "y", "x"]
    book.save(tmp_path / "rep.json")
    again = ReputationBook(keep_s=3600)
    assert again.load(tmp_path / "rep.json", now=0) == 1
    restored = again.get("b")
    assert restored is not None and restored.spot_failed == 1 and restored.spot_evidence == [evidence("b")]


def test_a_run_is_kept_with_its_workers_signed_receipt() -> None:
    key = SigningKey(b"\x05" * 32)
    payloads = [chat_whole("amber basalt")]
    receipt = Receipt(request_id="r", request_hash=b"\x01" * 32, answer_hash=b"\x02" * 32, model="m",
                      usage=Usage(prompt_tokens=1, completion_tokens=2), coefficient=1000,
                      worker_key=bytes(key.verify_key), issued_at=1).sign(lambda m: key.sign(m).signature)
    run_ = execution("k", "w", payloads, ResponseEnd(call_id=1, usage=receipt.usage, receipt=receipt))
    assert run_ is not None and run_.digest == content_digest(payloads).hex() and run_.usage == receipt.usage
    assert run_.receipt is not None
    kept = Receipt.from_base64(run_.receipt)
    assert kept == receipt
    kept.verify_worker()  # the evidence stands on the worker's own signature
    assert execution("k", "w", payloads, ResponseEnd(call_id=1, usage=Usage())).receipt is None


def test_the_content_digest_is_the_one_peers_of_earlier_versions_compute() -> None:
    """Workers and clients of different versions compare content digests: the value is pinned (computed by the
    version that appended texts with `+=`, before pieces were kept in lists and joined once)."""
    payloads = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hé"}},
                     {"index": 1, "delta": {"content": "x"}}]},
        {"choices": [{"index": 0, "delta": {"content": "llo \ud83d\ude00"}, "finish_reason": None}]},
        {"choices": [{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"name": "get_",
                                                                                     "arguments": "{\"a\""}}]}}]},
        {"choices": [{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"name": "weather",
                                                                                     "arguments": ": 1}"}}]},
                      "finish_reason": "tool_calls"}]},
        {"choices": [{"index": 0, "text": "!", "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 1}},
    ]
    digest = content_digest([json.dumps(p).encode() for p in payloads] + [b"[DONE]"])
    assert digest.hex() == "06daf11ec0314d7b82e93a4cc210d8a6444573807a71e7ef71af6f77b0f030a2"
