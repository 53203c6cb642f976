"""Busy workers, hang-ups and authentication, through real processes."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cocoon.client.node import ClientNode
from cocoon.config import ClientConfig, ConfigError
from tests.integration.test_api import chat_body, post
from tests.netutil import Net, free_port, localnet


@pytest.fixture(scope="module")
def slow_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """One worker with one slot and a slow engine (20 tokens/s, 400 tokens: 20 s per answer)."""
    state: Path = tmp_path_factory.mktemp("slownet") / "state"
    with localnet(state, engine="fake", workers=1, max_active=1,
                  options=("tokens_per_s=20", "reply_tokens=400")) as net:
        yield net


def open_stream(api_url: str) -> http.client.HTTPConnection:
    """Start a streamed chat and read its first event; the caller hangs up by closing the connection."""
    url = urlsplit(api_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("POST", url.path + "/chat/completions", body=chat_body(stream=True, max_tokens=400),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")
    return conn


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_no_free_worker_gives_503_with_retry_after_and_hangup_cancels(slow_net: Net) -> None:
    worker = slow_net.by_role("worker")[0]["name"]
    busy = open_stream(slow_net.api_url)
    try:
        assert slow_net.stats(worker)["active_requests"] == 1
        status, headers, raw = post(slow_net.api_url + "/chat/completions", chat_body())
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        assert json.loads(raw)["error"]["code"] == "no_worker_available"
    finally:
        busy.close()  # the app hangs up mid-stream
    # the generation stops on the worker long before its 20 s would have run out
    assert wait_for(lambda: slow_net.stats(worker)["active_requests"] == 0, timeout=5)
    proxy = slow_net.by_role("proxy")[0]["name"]
    assert wait_for(lambda: slow_net.stats(proxy)["active_requests"] == 0, timeout=5)
    # and the freed slot serves the next request
    status, _, _ = post(slow_net.api_url + "/chat/completions", chat_body(max_tokens=2))
    assert status == 200


def test_api_key_is_enforced_when_configured(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'name = "c"\nstate_dir = "{tmp_path}"\nproxy = "127.0.0.1:{free_port()}"\n'
                   f'api_port = {port}\napi_key = "sekrit"\n')
    proc = subprocess.Popen([sys.executable, "-m", "cocoon", "client", "--config", str(cfg)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        assert wait_for(lambda: _reachable(port), timeout=20)
        status, _, raw = post(url, chat_body())
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        status, _, raw = post(url, chat_body(), {"Authorization": "Bearer wrong"})
        assert status == 401
        # the right key gets past authentication (no proxy is running, so the answer is a clean 503)
        status, headers, raw = post(url, chat_body(), {"Authorization": "Bearer sekrit"})
        assert status == 503 and json.loads(raw)["error"]["code"] == "proxy_unavailable"
        assert "Retry-After" in headers
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_non_loopback_api_requires_a_key(tmp_path: Path) -> None:
    cfg = ClientConfig(name="c", state_dir=str(tmp_path), api_host="0.0.0.0")
    with pytest.raises(ConfigError, match="api_key"):
        ClientNode(cfg)
