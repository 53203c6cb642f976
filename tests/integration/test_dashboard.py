"""The dashboards in a real browser: `cocoon up`'s network view and each process's own page, live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser import Browser, chromium_path
from tests.netutil import Net, get_json

MODEL = "fake-model"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = chromium_path()
    if binary is None:
        reason = ("Chromium is not installed (Debian package `chromium`; `make test` installs it when it can): "
                  "the dashboard's browser tests did NOT run")
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    chromium = Browser(binary)
    try:
        yield chromium
    finally:
        chromium.close()


def ton(nano: int) -> str:
    """The page's own rendering of a nanoTON amount (app.js `ton`)."""
    whole, frac = divmod(abs(nano), 10**9)
    digits = f"{frac:09d}".rstrip("0")
    return f"{'-' if nano < 0 else ''}{whole:,}{'.' + digits if digits else ''} TON"


def traffic(net: Net, n: int = 12) -> None:
    client = net.sdk(timeout=30)
    for i in range(n):
        if i % 2:
            list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}],
                                                max_tokens=6, stream=True))
        else:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=6)


def test_the_network_dashboard_shows_the_live_network(fake_net: Net, browser: Browser, tmp_path: Path) -> None:
    url = fake_net.info["dashboard_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/dashboard")
    traffic(fake_net)
    client = fake_net.by_role("client")[0]["name"]
    charged = fake_net.stats(client)["charged_nanoton"]
    assert charged > 0
    browser.open(url)
    workers = [w["name"] for w in fake_net.by_role("worker")]
    # live data arrived: one panel per process, the client's charge as the client's stats give it
    browser.wait_for(f"document.querySelectorAll('[data-process]').length === {len(fake_net.info['processes'])} "
                     f"&& document.querySelector('[data-process=\"{client}\"] [data-field=\"charged_nanoton\"]')"
                     f"?.dataset.value === '{charged}'")
    assert browser.evaluate("document.getElementById('status').dataset.state") == "live"
    shown = browser.evaluate("Array.from(document.querySelectorAll('[data-table=workers] [data-worker]'))"
                             ".map(e => e.textContent)")
    assert sorted(shown) == sorted(workers)
    for name in workers:
        assert browser.evaluate(f"!!document.querySelector('section[data-process=\"{name}\"][data-role=worker]')")
    charge_text = browser.evaluate(f"document.querySelector('[data-process=\"{client}\"] "
                                   "[data-field=\"charged_nanoton\"] .value').textContent")
    assert charge_text == ton(charged)
    # the proxy's latency chart has points (a line, or a dot for a lone bucket)
    points = browser.evaluate("Array.from(document.querySelectorAll('[data-role=proxy] svg[data-chart=latency] "
                              "path[data-series=p50]')).map(p => +p.dataset.points)")
    assert points and points[0] >= 1
    browser.screenshot(tmp_path / "network-dashboard.png")
    assert (tmp_path / "network-dashboard.png").stat().st_size > 10_000
    # nothing left the page's own origin: no CDN, font, image or beacon
    origin = urlsplit(url)._replace(path="", query="", fragment="").geturl()
    requested = browser.requested_urls()
    assert any(u.endswith("/jsonstats") for u in requested)
    foreign = [u for u in requested if not u.startswith(origin + "/") and not u.startswith("data:")]
    assert not foreign, foreign


def test_each_process_serves_its_own_dashboard_readable_on_a_phone(fake_net: Net, browser: Browser,
                                                                  tmp_path: Path) -> None:
    proxy = fake_net.by_role("proxy")[0]
    traffic(fake_net, 2)
    browser.open(proxy["stats_url"] + "/dashboard", width=390, height=844, mobile=True)
    browser.wait_for(f"!!document.querySelector('[data-process=\"{proxy['name']}\"][data-role=proxy] "
                     "[data-table=workers]')")
    # nothing wider than the phone's screen: wide tables scroll inside their own box
    width, viewport = browser.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= viewport
    browser.screenshot(tmp_path / "proxy-phone.png")
    origin = proxy["stats_url"]
    assert all(u.startswith(origin + "/") or u.startswith("data:") for u in browser.requested_urls())


def test_no_prompt_answer_or_key_reaches_the_stats(fake_net: Net) -> None:
    secret_prompt = "the-launch-code-is-4242"
    done = fake_net.sdk().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": secret_prompt}],
                                                  max_tokens=6)
    answer = done.choices[0].message.content or ""
    assert answer
    joined = json.dumps(get_json(fake_net.info["dashboard_url"].removesuffix("/dashboard") + "/jsonstats"))
    assert secret_prompt not in joined and answer not in joined
    assert "PRIVATE KEY" not in joined


def test_the_page_allows_nothing_from_elsewhere(fake_net: Net) -> None:
    url = fake_net.info["dashboard_url"]
    with urllib.request.urlopen(url, timeout=5) as resp:
        policy = resp.headers["Content-Security-Policy"]
        page = resp.read().decode()
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    # every resource the page names is on its own origin (absolute paths, no scheme)
    for attr in ("src=", "href="):
        for part in page.split(attr)[1:]:
            target = part[1:].split(part[0])[0]
            assert target.startswith("/dashboard/") or target.startswith("data:"), target
    script = urllib.request.urlopen(url + "/app.js", timeout=5).read().decode()
    assert "http://" not in script.replace("http://www.w3.org/2000/svg", "") and "https://" not in script
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url + "/../../etc/passwd", timeout=5)
    assert missing.value.code == 404


def settled_charge(net: Net, client: str) -> int:
    """The client's charge once its answers have settled: equal on reads 0.3 s apart (bounded to 20 s)."""
    last = net.stats(client)["charged_nanoton"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = net.stats(client)["charged_nanoton"]
        if now == last:
            return now
        last = now
    return last


def test_cocoon_status_shows_the_network_in_a_terminal(fake_net: Net) -> None:
    traffic(fake_net, 2)
    client = fake_net.by_role("client")[0]["name"]
    settled_charge(fake_net, client)
    env = {**os.environ, "COLUMNS": "400"}  # wide enough that rich never elides a cell
    for args in (["--state-dir", str(fake_net.state_dir)], ["--url", fake_net.info["dashboard_url"]]):
        before = fake_net.stats(client)["charged_nanoton"]
        done = subprocess.run([sys.executable, "-m", "cocoon", "status", *args], capture_output=True, text=True,
                              timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        # the charge read on either side of the status call: an answer settling meanwhile moves it
        charged = {before, fake_net.stats(client)["charged_nanoton"]}
        for worker in fake_net.by_role("worker"):
            assert worker["name"] in done.stdout
        assert client in done.stdout and "proxy-1" in done.stdout
        assert any(ton(c) in done.stdout for c in charged), (charged, done.stdout)
    # a process whose stats cannot be read is named, and the exit status says so
    dead = subprocess.run([sys.executable, "-m", "cocoon", "status", "--url", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert dead.returncode == 1 and "no stats" in dead.stdout
