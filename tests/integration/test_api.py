"""The OpenAI-compatible API of a real `cocoon up --engine fake` network, through the official SDK and raw HTTP."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid

import openai
import pytest

from tests.netutil import Net, get_json

MODEL = "fake-model"


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()



def chat_body(**fields: object) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "say something nice"}],
                       **fields}).encode()


def test_localnet_json_describes_every_process(fake_net: Net) -> None:
    roles = sorted(p["role"] for p in fake_net.info["processes"])
    assert roles == ["client", "proxy", "worker", "worker"]
    for p in fake_net.info["processes"]:
        assert p["pid"] > 0 and p["name"] and p["stats_url"].startswith("http://127.0.0.1:")
        assert get_json(p["stats_url"] + "/healthz")["status"] == "ok"
        stats = get_json(p["stats_url"] + "/jsonstats")
        assert stats["role"] == p["role"] and stats["name"] == p["name"]
        with urllib.request.urlopen(p["stats_url"] + "/metrics", timeout=5) as resp:
            assert b"cocoon_" in resp.read()
    assert fake_net.by_role("client")[0]["api_url"] == fake_net.api_url


def test_models_lists_served_models_in_openai_format(fake_net: Net) -> None:
    listing = get_json(fake_net.api_url + "/models")
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == [MODEL]
    assert listing["data"][0]["object"] == "model" and listing["data"][0]["workers"] == 2
    assert [m.id for m in fake_net.sdk().models.list()] == [MODEL]


def test_chat_completion_through_the_sdk(fake_net: Net) -> None:
    resp = fake_net.sdk().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "tell me about cocoons"}], max_tokens=8)
    for header in ("x-cocoon-client-ms", "x-cocoon-proxy-ms", "x-cocoon-worker-ms"):
        assert float(resp.headers[header]) >= 0
    assert float(resp.headers["x-cocoon-client-ms"]) >= float(resp.headers["x-cocoon-proxy-ms"])
    completion = resp.parse()
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens == 8
    assert completion.usage.prompt_tokens == 4  # the fake engine counts words
    assert completion.usage.total_tokens == 12


def test_streamed_chat_matches_non_streamed_and_meters_the_same(fake_net: Net) -> None:
    client = fake_net.sdk()
    messages = [{"role": "user", "content": "stream and whole must agree"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    # metered the same; the stream's usage also carries its receipt (a whole answer's is its x-cocoon-receipt header)
    streamed = chunks[-1].usage.model_dump()
    assert streamed.pop("receipt") and streamed == whole.usage.model_dump()


def test_stream_ends_with_done_and_usage_only_when_asked(fake_net: Net) -> None:
    status, headers, body = post(fake_net.api_url + "/chat/completions", chat_body(stream=True))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) or json.loads(e)["usage"] is None for e in events[:-1])
    status, _, body = post(fake_net.api_url + "/chat/completions",
                           chat_body(stream=True, stream_options={"include_usage": True}))
    events = [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 12


def test_legacy_completions(fake_net: Net) -> None:
    client = fake_net.sdk()
    done = client.completions.create(model=MODEL, prompt="once upon a time", max_tokens=5)
    assert done.choices[0].text and done.usage.completion_tokens == 5 and done.usage.prompt_tokens == 4
    streamed = list(client.completions.create(model=MODEL, prompt="once upon a time", max_tokens=5, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text
    assert streamed[-1].usage.completion_tokens == 5


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        (b'{"model": "fake-model", "messages": [', 400, "invalid_json", "JSON"),
        (b'{"model": "fake-model"}', 400, "missing_field", "messages"),
        (chat_body(model="no-such-model"), 404, "model_not_found", "no-such-model"),
        (chat_body(max_tokens=1_000_000), 400, "max_tokens_exceeded", "4096"),
        (chat_body(frobnicate=True), 400, "unknown_field", "frobnicate"),
        (b'{"model": "fake-model", "model": "x", "messages": [{"role": "user", "content": "hi"}]}', 400,
         "duplicate_key", "model"),
        (chat_body(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), 400,
         "unsupported_parameter", "tools"),
    ],
)
def test_bad_requests_get_openai_errors(fake_net: Net, body: bytes, status: int, code: str, needle: str) -> None:
    got, _, raw = post(fake_net.api_url + "/chat/completions", body)
    error = json.loads(raw)["error"]
    assert got == status, error
    assert error["code"] == code and needle in error["message"] and error["type"]


def test_oversized_body_is_413(fake_net: Net) -> None:
    status, _, raw = post(fake_net.api_url + "/chat/completions", chat_body(user="x" * (2 * 1024 * 1024)))
    assert status == 413
    assert json.loads(raw)["error"]["code"] == "request_too_large"


def test_sdk_raises_typed_errors(fake_net: Net) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        fake_net.sdk().chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"


def test_books_record_every_answer(fake_net: Net) -> None:
    proxy = fake_net.by_role("proxy")[0]["name"]
    before = fake_net.stats(proxy)["books"]
    fake_net.sdk().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a b c"}],
                                          max_tokens=3)
    after = fake_net.stats(proxy)["books"]
    assert after["charged_nanoton"] > before["charged_nanoton"]
    assert after["commission_nanoton"] == after["charged_nanoton"] - after["paid_nanoton"]
    client_stats = fake_net.stats(fake_net.by_role("client")[0]["name"])
    assert client_stats["charged_nanoton"] == after["charged_nanoton"]


def test_logs_never_carry_prompts_or_answers(fake_net: Net) -> None:
    marker = "zebra-secret-7781"
    answer = fake_net.sdk().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": marker}])
    spoken = answer.choices[0].message.content or ""
    assert len(spoken.split()) > 3
    # a refused request that names the marker in an unknown field is not logged either
    post(fake_net.api_url + "/chat/completions", chat_body(frobnicate=marker))
    logs = list((fake_net.state_dir / "logs").glob("*.log"))
    assert len(logs) == 5  # the chain's, the proxy's, two workers', the client's
    for log in logs:
        text = log.read_text()
        assert marker not in text, log.name
        assert spoken not in text, log.name


def _log_lines(net: Net, name: str) -> list[dict[str, object]]:
    lines = []
    for raw in (net.state_dir / "logs" / f"{name}.log").read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def _about(net: Net, name: str, request_id: str) -> list[dict[str, object]]:
    return [line for line in _log_lines(net, name) if line.get("request_id") == request_id]


def test_one_request_id_names_the_request_in_every_process_log(fake_net: Net) -> None:
    request_id = f"trace-{uuid.uuid4().hex}"
    status, headers, _ = post(fake_net.api_url + "/chat/completions", chat_body(max_tokens=3),
                              {"x-request-id": request_id})
    assert status == 200 and headers["x-request-id"] == request_id
    client = fake_net.by_role("client")[0]["name"]
    proxy = fake_net.by_role("proxy")[0]["name"]
    workers = [w["name"] for w in fake_net.by_role("worker")]
    deadline = time.monotonic() + 10  # the worker may log its last line just after the answer left
    while True:
        seen = {name: _about(fake_net, name, request_id) for name in (client, proxy, *workers)}
        if all(seen[n] for n in (client, proxy)) and any(seen[w] for w in workers):
            break
        assert time.monotonic() < deadline, {name: len(lines) for name, lines in seen.items()}
        time.sleep(0.1)
    def done(name: str) -> list[dict[str, object]]:
        return [line for line in seen[name] if line["msg"] == "request done"]

    assert [(line["role"], line["status"]) for line in done(client)] == [("client", 200)]
    assert [(line["role"], line["outcome"]) for line in done(proxy)] == [("proxy", "ok")]
    served = [line for w in workers for line in done(w)]
    assert [(line["role"], line["outcome"], line["completion_tokens"]) for line in served] == [("worker", "ok", 3)]


def test_request_ids_are_made_kept_or_replaced_and_answered_on_errors_and_streams(fake_net: Net) -> None:
    url = fake_net.api_url + "/chat/completions"
    _, made, _ = post(url, chat_body(max_tokens=1))
    assert re.fullmatch(r"[0-9a-f]{32}", made["x-request-id"])
    for bad in ("has space", "x" * 65, "semi;colon"):
        _, replaced, _ = post(url, chat_body(max_tokens=1), {"x-request-id": bad})
        assert replaced["x-request-id"] != bad and re.fullmatch(r"[0-9a-f]{32}", replaced["x-request-id"])
    # errors raised by the client (bad JSON), by the proxy (unknown model) and streamed answers carry it too
    for body, status in ((b"{", 400), (chat_body(model="no-such-model"), 404), (chat_body(stream=True), 200)):
        got, headers, _ = post(url, body, {"x-request-id": "caller:1.2_3-4"})
        assert got == status and headers["x-request-id"] == "caller:1.2_3-4"
    assert _about(fake_net, fake_net.by_role("proxy")[0]["name"], made["x-request-id"])


def test_a_reused_request_id_gets_one_answer_charged_once(fake_net: Net) -> None:
    """The caller's id is the request's idempotency key (issue 15 item 1): sent again after its answer, it is
    refused before any work, so a second answer is never free and never charged twice."""
    proxy = fake_net.by_role("proxy")[0]["name"]
    before = fake_net.stats(proxy)["books"]
    request_id = f"once-{uuid.uuid4().hex}"
    status, headers, raw = post(fake_net.api_url + "/chat/completions", chat_body(max_tokens=2),
                                {"x-request-id": request_id})
    assert status == 200 and headers["x-request-id"] == request_id
    cost = json.loads(raw)["usage"]["cost_nanoton"]
    status, headers, raw = post(fake_net.api_url + "/chat/completions", chat_body(max_tokens=2, stream=True),
                                {"x-request-id": request_id})
    error = json.loads(raw)["error"]
    assert (status, error["code"], error["param"]) == (409, "duplicate_request_id", "request_id")
    assert headers["x-request-id"] == request_id
    after = fake_net.stats(proxy)["books"]
    assert after["charged_nanoton"] - before["charged_nanoton"] == cost > 0
    served = [sum(c["requests"] for c in books["clients"].values()) for books in (before, after)]
    assert served[1] - served[0] == 1
