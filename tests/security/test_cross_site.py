"""Issue 15 item 16, attack: cross-site requests to the keyless loopback API.

Any web page the operator opens could use the client's API: a `fetch` with a `text/plain` body is a "simple"
cross-origin request that browsers send without a CORS preflight, so the page spends the operator's money; and
with DNS rebinding (the page's own name re-resolved to 127.0.0.1, so the browser sends `Host: evil.example`)
the page reads the answers too. The real client process of `cocoon up` must refuse foreign `Host` values,
cross-origin browser requests and non-JSON bodies, while the SDK and curl keep working.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.netutil import Net, localnet

MODEL = "fake-model"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "spend the operator's money"}]})


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    state: Path = tmp_path_factory.mktemp("crosssite") / "state"
    with localnet(state, engine="fake", workers=1, options=("reply_tokens=4",)) as net:
        yield net


def send(net: Net, method: str, path: str, headers: dict[str, str], body: str | None = None) -> tuple[int, dict]:
    """One raw HTTP request to the client's API, headers exactly as given (`Host` included when given)."""
    url = urlsplit(net.api_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(method, url.path + path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def port(net: Net) -> int:
    port = urlsplit(net.api_url).port
    assert port is not None
    return port


def test_a_cross_origin_text_plain_post_is_refused(net: Net) -> None:
    """What `fetch(api, {method: "POST", body})` from another site sends: no preflight, text/plain."""
    status, doc = send(net, "POST", "/chat/completions", {
        "Content-Type": "text/plain;charset=UTF-8", "Origin": "http://evil.example",
        "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, BODY)
    assert status == 403 and doc["error"]["code"] == "cross_origin_request", doc


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ({}, 415, "unsupported_media_type"),
    ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403, "cross_origin_request"),
    ({"Content-Type": "application/json", "Origin": "null"}, 403, "cross_origin_request"),
    ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403, "cross_origin_request"),
    # another port of localhost is the same site but another origin
    ({"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403, "cross_origin_request"),
])
def test_browser_shaped_posts_are_refused(net: Net, headers: dict[str, str], status: int, code: str) -> None:
    got, doc = send(net, "POST", "/chat/completions", headers, BODY)
    assert (got, doc["error"]["code"]) == (status, code), doc
    assert doc["error"]["message"] and doc["error"]["type"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                  "localhost:1", "127.0.0.1:{port}0"])
def test_a_foreign_host_is_refused(net: Net, host: str) -> None:
    """DNS rebinding: the browser addresses the page's own name, now resolving to 127.0.0.1."""
    host = host.format(port=port(net))
    status, doc = send(net, "GET", "/models", {"Host": host})
    assert status == 403 and doc["error"]["code"] == "host_not_allowed", doc
    status, doc = send(net, "POST", "/chat/completions", {"Host": host, "Content-Type": "application/json"}, BODY)
    assert status == 403 and doc["error"]["code"] == "host_not_allowed", doc


def test_the_sdk_curl_and_same_origin_requests_still_work(net: Net) -> None:
    answer = net.sdk().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content
    url = net.api_url + "/chat/completions"
    out = subprocess.run(["curl", "-sS", "--max-time", "30", "-H", "Content-Type: application/json", "-d", BODY,
                          url], capture_output=True, check=True, timeout=60).stdout
    assert json.loads(out)["choices"][0]["message"]["content"]
    for host in (f"localhost:{port(net)}", f"127.0.0.1:{port(net)}", f"[::1]:{port(net)}"):
        status, doc = send(net, "GET", "/models", {"Host": host})
        assert status == 200 and doc["data"][0]["id"] == MODEL, host
    status, doc = send(net, "POST", "/chat/completions", {
        "Content-Type": "application/json; charset=utf-8", "Origin": f"http://127.0.0.1:{port(net)}",
        "Sec-Fetch-Site": "same-origin"}, BODY)
    assert status == 200 and doc["choices"][0]["message"]["content"], doc
