"""Through a relay (`cocoon up --relay`, issue 10): real processes (relay, proxy with its gateway, worker, a client
`--via-relay`), real sockets, real encapsulation. A chat through the relay is answered, charged to the relay's
channel and checked by it; the SDK does the same in-process; what the relay keeps holds no content and no user
address next to request data, in its logs, its files and its memory."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cocoon.ledger.receipts import Receipt
from cocoon.wire.messages import ResponseChunk
from tests import ohttputil
from tests.netutil import Net, devnet_call, free_port, localnet, transcode_with_curl

MODEL = "fake-model"


@pytest.fixture(scope="module")
def relay_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    state: Path = tmp_path_factory.mktemp("relaynet") / "state"
    # 40 paced words (4 s): a long answer still streaming while the memory is read
    with localnet(state, engine="fake", workers=1, relay=True, options=("reply_tokens=40", "tokens_per_s=10")) as net:
        yield net


def relay_url(net: Net) -> str:
    return net.by_role("relay")[0]["api_url"]


def test_localnet_names_the_relay_and_routes_the_client_through_it(relay_net: Net) -> None:
    relay, = relay_net.by_role("relay")
    client, = relay_net.by_role("client")
    assert relay["name"] == "relay-1" and relay["api_url"].startswith("http://127.0.0.1:")
    assert relay_net.stats("client-1")["via_relay"] == relay["api_url"]
    stats = relay_net.stats("relay-1")
    assert stats["proxy_connected"] and stats["balance_nanoton"] > 0
    assert client["api_url"] == relay_net.api_url
    shown = subprocess.run([sys.executable, "-m", "cocoon", "status", "--state-dir", str(relay_net.state_dir)],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"})
    assert shown.returncode == 0, shown.stderr
    assert "relays (counters only)" in shown.stdout and "relay-1" in shown.stdout


def test_a_chat_through_the_relay_is_answered_and_charged_to_the_relay(relay_net: Net) -> None:
    before = relay_net.stats("relay-1")
    answer = relay_net.sdk().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content and answer.usage.completion_tokens == 40
    cost = answer.usage.model_extra["cost_nanoton"]
    assert cost > 0
    after = relay_net.stats("relay-1")
    # two exchanges: the certificates of the workers to seal to (kept for a while by the client), then the chat
    assert after["requests"].get("ok", 0) == before["requests"].get("ok", 0) + 2
    assert after["vouchers_nanoton"] - before["vouchers_nanoton"] == cost  # the relay paid exactly the answer
    assert after["unexplained_nanoton"] == 0 and after["overcharges"] == 0
    chunks = list(relay_net.sdk().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].usage.model_extra["cost_nanoton"] == cost
    assert relay_net.stats("proxy-1")["ohttp"]["outcomes"]["ok"] >= 2


def _readable_memory(pid: int) -> bytes:
    """Every readable private mapping of process `pid`, read through /proc/PID/mem."""
    out = bytearray()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar]" in line or "[vsyscall]" in line:
                continue
            lo, hi = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(lo)
                out += mem.read(hi - lo)
            except (OSError, ValueError, OverflowError):
                continue
    return bytes(out)


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_the_relay_keeps_no_content_and_no_address_next_to_requests(relay_net: Net) -> None:
    """A unique marker in the prompt, and the answer it brings, are in the client's memory but never in the relay's
    or the proxy's memory (the request is sealed to the worker inside the encapsulation; both read while a long
    answer streams, and after), their logs or any file; the relay's log holds no line per request and never the
    device's address (a fixed source port)."""
    marker = f"zq{time.time_ns()}marker"
    relay, = relay_net.by_role("relay")
    proxy, = relay_net.by_role("proxy")
    client, = relay_net.by_role("client")
    relay_log = Path(relay["log"])
    logged_before = relay_log.read_text().count("\n")
    source_port = free_port()
    url = relay_url(relay_net)
    config = ohttputil.gateway_keys(url)
    # through the client process (--via-relay, sealed), streamed, read from memory while it streams
    openai = relay_net.sdk()
    stream = openai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": marker}], stream=True)
    first = next(iter(stream))
    # streamed chunk by chunk through the relay: the first chunk is here while the worker still generates the rest
    assert relay_net.stats("proxy-1")["active_requests"] == 1
    relay_memory_mid = _readable_memory(relay["pid"])
    proxy_memory_mid = _readable_memory(proxy["pid"])
    text = (first.choices[0].delta.content or "") + "".join(c.choices[0].delta.content or "" for c in stream
                                                            if c.choices)
    answer_marker = " ".join(text.split()[10:30]).encode()  # twenty words in a row: this answer only
    assert len(answer_marker) > 60
    proxy_memory_after = _readable_memory(proxy["pid"])
    # and from a device of our own (encapsulated, not sealed: the proxy may read this one), from a known source port
    device_marker = f"zd{time.time_ns()}device"
    enc, keys = ohttputil.encapsulate(config, ohttputil.chat(MODEL, device_marker))
    status, _, body = ohttputil.post(url, enc, source_port=source_port)
    assert status == 200
    device_text = b"".join(m.data for m in ohttputil.answers(keys, body) if isinstance(m, ResponseChunk))
    device_answer = json.loads(device_text)["choices"][0]["message"]["content"]
    device_answer_marker = " ".join(device_answer.split()[10:30]).encode()
    relay_memory_after = _readable_memory(relay["pid"])
    client_memory = _readable_memory(client["pid"])
    assert marker.encode() in client_memory  # the reading works: the user's side holds it in the clear
    for memory in (relay_memory_mid, relay_memory_after, proxy_memory_mid, proxy_memory_after):
        assert marker.encode() not in memory
        assert answer_marker not in memory
    for needle in (device_marker.encode(), device_answer_marker):
        assert needle not in relay_memory_after
    for needle in (marker.encode(), answer_marker, device_marker.encode(), device_answer_marker):
        assert _files_holding(relay_net.state_dir, needle) == []
    new_lines = relay_log.read_text().splitlines()[logged_before:]
    assert not [line for line in new_lines if "request_id" in line or str(source_port) in line], new_lines
    assert str(source_port).encode() not in relay_log.read_bytes()


def test_the_sdk_through_the_relay_sync_async_and_streaming(relay_net: Net, tmp_path: Path) -> None:
    from cocoon.sdk import ApiError, AsyncClient, Client

    url = relay_url(relay_net)
    with Client(relay=url, state_dir=tmp_path / "sdk") as client:
        assert [m.id for m in client.models.list().data] == [MODEL]
        answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=5)
        assert answer.usage.completion_tokens == 5 and answer.usage.cost_nanoton > 0
        # checked by the SDK and shown as the client API shows a stream's: the proxy's charge for it included
        assert Receipt.from_base64(answer.usage.receipt).verify().cost_nanoton == answer.usage.cost_nanoton
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=5, stream=True)
        words = "".join(c.choices[0].delta.get("content") or "" for c in stream if c.choices)
        assert words == answer.choices[0].message.content
        assert stream.usage is not None and stream.usage.cost_nanoton == answer.usage.cost_nanoton
        with pytest.raises(ApiError) as err:
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status == 404 and err.value.code == "model_not_found"

    async def run() -> tuple[int, int]:
        async with AsyncClient(relay=url, state_dir=tmp_path / "sdk") as client:
            whole = await client.chat.completions.create(model=MODEL, max_tokens=3,
                                                         messages=[{"role": "user", "content": "hi"}])
            stream = await client.chat.completions.create(model=MODEL, max_tokens=3, stream=True,
                                                          messages=[{"role": "user", "content": "hi"}])
            chunks = [c async for c in stream]
            assert chunks and stream.usage is not None
            return whole.usage.cost_nanoton, stream.usage.cost_nanoton

    whole_cost, stream_cost = asyncio.run(run())
    assert whole_cost == stream_cost > 0


def test_the_readme_example_runs(relay_net: Net, tmp_path: Path) -> None:
    """The README's SDK example, run as written against this network's relay."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"<!-- sdk-example -->\n```python\n(.*?)```", readme, re.S)
    assert example is not None, "the README has no SDK example"
    code = textwrap.dedent(example.group(1)).replace("http://127.0.0.1:10300", relay_url(relay_net))
    code = code.replace('model="SmolLM2-135M-Instruct"', f'model="{MODEL}"')
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cost" in done.stdout


def test_the_sdk_straight_to_a_proxy_pays_from_its_own_channel(relay_net: Net) -> None:
    """Without a relay: the SDK dials the proxy itself (RA-TLS, attestation checked), opens its own channel with its
    own wallet (funded here as `cocoon up` funds its clients) and checks each charge, like `cocoon client`."""
    from cocoon.config import ClientConfig
    from cocoon.nodekeys import NodeKeys
    from cocoon.sdk import Client

    name = "sdk-direct"
    state = relay_net.node_dir(name)
    chain = {"ton_api": relay_net.chain["api"], "root": relay_net.chain["root"]}
    wallet = NodeKeys("client", ClientConfig(name=name, state_dir=str(state), **chain)).wallet()
    devnet_call(relay_net.chain, "faucet", {"address": wallet.address, "amount": 20_000_000_000})
    proxy = f"127.0.0.1:{relay_net.stats('proxy-1')['port']}"
    with Client(proxy=proxy, state_dir=state, name=name, payments=True, chain=chain) as client:
        answer = client.chat.completions.create(model=MODEL, max_tokens=4,
                                                messages=[{"role": "user", "content": "direct"}])
        assert answer.usage.completion_tokens == 4 and answer.usage.cost_nanoton > 0
        payments = client._async._core.upstream.payments
        assert payments is not None and payments.charged_nanoton == answer.usage.cost_nanoton
        assert payments.unexplained_nanoton == 0 and payments.overcharges == 0
        # the charge is backed by the receipt the SDK checked, and kept as evidence
        assert payments.unbacked_answers == 0
        receipt = Receipt.from_base64(answer.usage.receipt)
        assert receipt.verify().cost_nanoton == answer.usage.cost_nanoton
        (charge,) = payments.receipts.charges(payments.purses[proxy].channel)
        assert charge.receipt == receipt


def test_a_media_job_through_the_relay_is_a_clean_501_naming_why(relay_net: Net, tmp_path: Path) -> None:
    from cocoon.media.samples import tone_wav
    from cocoon.media.spool import leftovers

    before = relay_net.stats("client-1")["charged_nanoton"]
    status, _, body = transcode_with_curl(relay_net.api_url, tone_wav(tmp_path / "tone.wav"), tmp_path / "out",
                                          format="ogg", codec="libopus")
    error = json.loads(body)["error"]
    assert (status, error["code"], error["type"]) == (501, "media_needs_direct_link", "api_error")
    assert "relay" in error["message"] and "direct link to a proxy" in error["message"]
    assert relay_net.stats("client-1")["charged_nanoton"] == before
    assert leftovers(relay_net.node_dir("client-1") / "media") == []
