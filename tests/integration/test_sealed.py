"""Issue 10, item 1: prompts and answers sealed from the client to the worker.

Through `cocoon up` (real processes, every hop RA-TLS): a prompt carrying a unique marker, answered by a fake
engine that writes the prompt's words backwards (so the answer carries a second marker the prompt never held),
streamed slowly. While the answer streams, the test reads the proxy's whole memory from /proc/PID/mem: neither
marker is there, while the client's memory holds them (the scan does find what is there). Afterwards no file in
the network's state dir (logs, books, keys) holds either. With the client configured plain (`seal_requests =
false`, a loud warning), the proxy's memory holds the prompt: the check is a real one.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.memscan import files_holding, process_memory_holds
from tests.netutil import Net, localnet

TOKENS = 120  # streamed at 40/s: the answer flows through the proxy for ~3 s


def stream_and_scan(net: Net, marker: str, answer_marker: str) -> tuple[set[bytes], set[bytes], str]:
    """Stream a chat answer; once the answer's marker has arrived, scan the proxy's and the client's memory."""
    needles = [marker.encode(), answer_marker.encode()]
    body = {"model": "fake-model", "stream": True, "max_tokens": TOKENS,
            "messages": [{"role": "user", "content": f"say {marker} back"}]}
    req = urllib.request.Request(net.api_url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text = ""
    proxy_mem: set[bytes] | None = None
    client_mem: set[bytes] = set()
    with urllib.request.urlopen(req, timeout=60) as resp:
        for line in resp:
            if not line.startswith(b"data: {"):
                continue
            event: dict[str, Any] = json.loads(line[6:])
            assert "error" not in event, event
            for choice in event.get("choices", []):
                text += choice["delta"].get("content") or ""
            if proxy_mem is None and answer_marker in text:  # mid-stream: the answer is flowing through the proxy
                proxy_mem = process_memory_holds(net.node("proxy-1")["pid"], needles)
                client_mem = process_memory_holds(net.node("client-1")["pid"], needles)
    assert proxy_mem is not None, f"the answer never carried the marker: {text[:200]!r}"
    return proxy_mem, client_mem, text


@pytest.fixture(scope="module")
def echo_net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    state = tmp_path_factory.mktemp("sealed") / "state"
    with localnet(state, engine="fake", workers=2,
                  options=("echo=true", "tokens_per_s=40", f"reply_tokens={TOKENS}")) as net:
        yield net


def test_neither_the_prompt_nor_the_answer_is_in_the_proxys_memory_logs_or_files(echo_net: Net) -> None:
    marker = "pm" + secrets.token_hex(10)
    answer_marker = marker[::-1]
    proxy_mem, client_mem, text = stream_and_scan(echo_net, marker, answer_marker)
    assert answer_marker in text and marker not in text
    # the scan finds what is there (a buffer freed meanwhile may be reused, so one marker suffices; the plain test
    # below is the full control)
    assert client_mem, "the client's memory holds neither marker: the scan is broken"
    assert proxy_mem == set(), f"the proxy's memory holds {proxy_mem}"
    assert process_memory_holds(echo_net.node("proxy-1")["pid"], [marker.encode(), answer_marker.encode()]) == set()
    assert files_holding(echo_net.state_dir, [marker.encode(), answer_marker.encode()]) == []
    client = echo_net.stats("client-1")
    assert client["requests"].get("ok", 0) >= 1 and client["charged_nanoton"] > 0


def test_requests_are_sealed_to_the_workers_the_client_verified(echo_net: Net) -> None:
    """The client fetched the workers' certificates and verified them itself; the whole (non-streamed) answer
    opens too; every worker served sealed requests only (the proxy routes each to a worker it was sealed to)."""
    marker = "wm" + secrets.token_hex(8)
    for _ in range(4):
        req = urllib.request.Request(echo_net.api_url + "/chat/completions", data=json.dumps({
            "model": "fake-model", "max_tokens": 3, "messages": [{"role": "user", "content": marker}]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read())
        assert answer["choices"][0]["message"]["content"].startswith(marker[::-1])
        assert answer["usage"]["completion_tokens"] == 3 and answer["usage"]["cost_nanoton"] > 0
    log = (echo_net.state_dir / "logs" / "client-1.log").read_text()
    assert not re.search(r"refused a worker's certificate", log)


def test_a_client_configured_plain_shows_the_proxy_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The control: what sealing prevents happens without it (and the client said so loudly at start)."""
    monkeypatch.setenv("COCOON_SEAL_REQUESTS", "false")
    with localnet(tmp_path / "state", engine="fake", workers=1,
                  options=("echo=true", "tokens_per_s=40", f"reply_tokens={TOKENS}")) as net:
        marker = "pp" + secrets.token_hex(10)
        proxy_mem, _, _ = stream_and_scan(net, marker, marker[::-1])
        assert marker.encode() in proxy_mem and marker[::-1].encode() in proxy_mem
        log = (net.state_dir / "logs" / "client-1.log").read_text()
        assert "seal_requests is off: request bodies and answers travel in the clear" in log
