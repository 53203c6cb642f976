"""Issue 15, item 13 (last rule: bound the memory a link's partial frame may hold), and what fuzzing the wire
decoder (issue 15, "Also") found around it.

An attested peer (a client key costs nothing under the dev policy) announces a 1 GiB frame and streams its body:
the proxy must refuse it at the header, hold none of it, tell the peer why and keep serving everyone else. Before
the hello that refusal escaped the proxy's listener as an unhandled exception (a traceback in its log), and a
message whose type tag was not UTF-8 made msgspec raise UnicodeDecodeError, which no layer expected. On the
dialing side the same errors killed the dialer's task for good: a proxy answering a hello with a garbled frame
left its client (or worker) never linking again."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from cocoon.attest.fake import FakeBackend
from cocoon.attest.none import NoneBackend
from cocoon.attest.policy import DEV_POLICY
from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, make_identity
from cocoon.wire import frames
from cocoon.wire.connection import hello
from cocoon.wire.messages import HelloAck, Message, ModelsQuery, ModelsReply, Refuse
from tests.netutil import free_port
from tests.security.procs import proxy_config, role_process, wait_stats

GIB = 2**30
SENT_BODY = 32 * 2**20  # what the attacker pushes after the header, were the proxy to keep reading
RSS_SLACK = 16 * 2**20  # less than the body: a proxy that buffered it would exceed this
GARBLED_TAG = b"\x00\x00\x00\x05\x81\xa1t\xa1\x80"  # {"t": <one byte that is not UTF-8>}


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def dial(port: int) -> tls.TlsStream:
    return await tls.connect("127.0.0.1", port, make_identity("client", NoneBackend()),
                             CertVerifier(DEV_POLICY, {"proxy"}))


async def read_until_closed(stream: tls.TlsStream, timeout: float = 15.0) -> list[Message]:
    """Every message the peer sends until it closes the link (a peer still waiting for us fails the wait)."""
    reader, out = frames.FrameReader(), []
    async with asyncio.timeout(timeout):
        # a proxy that closes with our bytes still unread resets the connection (our next write then breaks the
        # pipe), which may drop its last words
        with contextlib.suppress(ConnectionError):
            while data := await stream.read():
                out += reader.feed(data)
    return out


async def say_hello(stream: tls.TlsStream) -> None:
    stream.write(frames.encode(hello("client", "attacker")))
    reader = frames.FrameReader()
    async with asyncio.timeout(10):
        while not (msgs := reader.feed(await stream.read())):
            pass
    assert isinstance(msgs[0], HelloAck)


async def send_garbage(port: int, *, after_hello: bool, garbage: bytes, body: int = 0) -> list[Message]:
    stream = await dial(port)
    try:
        if after_hello:
            await say_hello(stream)
        stream.write(garbage)
        with contextlib.suppress(ConnectionError, OSError):  # the proxy hangs up as soon as it read the header
            await stream.drain()
            for _ in range(body // 2**20):
                stream.write(b"\x00" * 2**20)
                await stream.drain()
        return await read_until_closed(stream)
    finally:
        await stream.close()


def refusal(msgs: list[Message]) -> str:
    assert msgs and isinstance(msgs[-1], Refuse), f"the proxy closed the link without saying why: {msgs}"
    return msgs[-1].reason


def test_a_huge_or_garbled_frame_is_refused_at_once_without_memory_or_crash(tmp_path: Path) -> None:
    port, stats = free_port(), free_port()
    config = proxy_config(tmp_path, port, stats)
    log = tmp_path / "proxy.log"
    with role_process("proxy", config, log) as proc:
        wait_stats(stats, proc, log)

        async def attack() -> None:
            huge = GIB.to_bytes(4, "big")
            start = rss(proc.pid)
            for after_hello in (False, True):
                reason = refusal(await send_garbage(port, after_hello=after_hello, garbage=huge))
                assert f"{GIB}-byte frame" in reason and "limit" in reason
                # streaming the body meanwhile: the link still ends at once (else the read times out)
                await send_garbage(port, after_hello=after_hello, garbage=huge, body=SENT_BODY)
                assert "undecodable" in refusal(await send_garbage(port, after_hello=after_hello,
                                                                   garbage=GARBLED_TAG))
            assert rss(proc.pid) - start < RSS_SLACK
            # and the proxy still serves an honest peer
            stream = await dial(port)
            try:
                await say_hello(stream)
                stream.write(frames.encode(ModelsQuery(call_id=1)))
                reader = frames.FrameReader()
                async with asyncio.timeout(10):
                    while not (msgs := reader.feed(await stream.read())):
                        pass
                assert isinstance(msgs[0], ModelsReply)
            finally:
                await stream.close()

        asyncio.run(attack())
    text = log.read_text()
    assert "Traceback" not in text and "Unhandled exception" not in text, text[-3000:]
    assert text.count("refused peer at hello") == 3 and text.count("protocol error") >= 6


def test_a_garbled_answer_to_its_hello_does_not_stop_a_client_from_linking_again(tmp_path: Path) -> None:
    port, api, stats = free_port(), free_port(), free_port()
    config = tmp_path / "client.toml"
    config.write_text(f'name = "client"\nstate_dir = "{tmp_path}"\nproxy = "127.0.0.1:{port}"\n'
                      f'api_port = {api}\nstats_port = {stats}\n')
    log = tmp_path / "client.log"
    answers = [GIB.to_bytes(4, "big"), GARBLED_TAG]  # alternately: a 1 GiB frame, a tag that is not UTF-8

    async def run() -> int:
        dials = 0
        third = asyncio.Event()

        async def garbling_proxy(stream: tls.TlsStream) -> None:
            nonlocal dials
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                async with asyncio.timeout(5):
                    await stream.read()  # its hello
                stream.write(answers[dials % 2])
                await stream.drain()
            dials += 1
            if dials >= 3:
                third.set()

        server = await tls.serve(garbling_proxy, "127.0.0.1", port, make_identity("proxy", FakeBackend("proxy")),
                                 CertVerifier(DEV_POLICY, {"client"}))
        try:
            with role_process("client", config, log):
                with contextlib.suppress(TimeoutError):
                    # the dialer backs off 0.2 s, then 0.4 s... between rounds; the client starts in ~2 s
                    await asyncio.wait_for(third.wait(), 30)
        finally:
            server.close()
        return dials

    dials = asyncio.run(run())
    text = log.read_text()
    assert dials >= 3, f"the client stopped dialing after {dials} garbled answer(s):\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert "cannot link" in text
