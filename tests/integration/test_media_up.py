"""Issue 13 through a real `cocoon up` with its defaults (workers serve the model and the media workload, the
client seals every request): the README's own commands, and a worker killed in the middle of a job.

- "Done when": the README's commands, read from the README itself, make a tone and transcode it with curl (the
  binary) against the network's port; the output is Ogg/Opus lasting the tone's 2 s within 50 ms.
- A worker SIGKILLed while it holds a job's input (its parts reached it, nothing of the answer left it): the proxy
  asks the client for the input again and moves the job to the other worker; the client sends it again from its
  spool, and the job completes, charged once (the one answer's cost, seconds × price).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from cocoon.media import samples
from cocoon.media.probe import measured_duration, probe
from cocoon.media.spool import PREFIX, leftovers
from tests.netutil import Net, localnet, log_records, transcode_with_curl

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with localnet(tmp_path_factory.mktemp("mediaup") / "state", workers=2, max_active=None) as running:
        yield running


def readme_commands() -> tuple[str, str]:
    """The README's two commands of its media section: making the tone, and transcoding it with curl."""
    text = README.read_text()
    make = re.search(r"^\.venv/bin/python -c (\".*tone_wav.*\")$", text, re.M)
    transcode = re.search(r"^curl -F file=@tone\.wav .*/v1/media/transcode -o tone\.ogg$", text, re.M)
    assert make and transcode, "the README's media commands moved"
    return shlex.split(make.group(1))[0], transcode.group(0)


def test_the_readmes_curl_command(net: Net, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("LOUDLY: curl is not installed, so the README's command cannot be run as written")
    code, command = readme_commands()
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=60)
    argv = shlex.split(command.replace("127.0.0.1:10000", f"127.0.0.1:{net.port}"))
    assert argv[-3] == f"http://127.0.0.1:{net.port}/v1/media/transcode"
    subprocess.run(argv, cwd=tmp_path, check=True, timeout=120, capture_output=True)
    [audio] = probe(tmp_path / "tone.ogg").streams
    assert audio.codec == "opus"
    assert abs(measured_duration(tmp_path / "tone.ogg") - 2.0) <= 0.05


def media_dirs(net: Net) -> dict[str, Path]:
    return {w["name"]: net.node_dir(w["name"]) / "media" for w in net.by_role("worker")}


def holding_input(directory: Path) -> bool:
    """Whether a job's spooled input has bytes in `directory` (its parts reached that worker)."""
    for path in directory.glob(f"{PREFIX}*"):
        try:
            if path.stat().st_size > 0:
                return True
        except FileNotFoundError:
            continue
    return False


def test_a_worker_killed_mid_job_moves_it_to_another_charged_once(net: Net, tmp_path: Path) -> None:
    source = samples.tone_wav(tmp_path / "long.wav", seconds=30.0, rate=48_000, channels=2)  # 5.8 MB: 22 parts
    before = net.stats("client-1")["charged_nanoton"]
    result: dict[str, object] = {}

    def post() -> None:
        result["answer"] = transcode_with_curl(net.api_url, source, tmp_path / "long.ogg", format="ogg",
                                               codec="libopus")

    posting = threading.Thread(target=post)
    posting.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and posting.is_alive() and time.monotonic() < deadline:
        victim = next((name for name, d in media_dirs(net).items() if holding_input(d)), None)
        time.sleep(0.005)
    assert victim is not None, "no worker was seen holding the job's input"
    os.kill(net.node(victim)["pid"], signal.SIGKILL)
    posting.join(180)
    assert not posting.is_alive()
    status, headers, body = result["answer"]  # type: ignore[misc]
    assert status == 200, body[:300]
    [audio] = probe(tmp_path / "long.ogg").streams
    assert audio.codec == "opus" and abs(measured_duration(tmp_path / "long.ogg") - 30.0) <= 0.05
    seconds = Decimal(headers["x-cocoon-media-seconds"])
    cost = int(headers["x-cocoon-cost-nanoton"])
    assert seconds == 30 and cost == seconds * net.stats("proxy-1")["prices"]["price_per_media_second"]
    assert net.stats("client-1")["charged_nanoton"] == before + cost  # charged once
    survivor = next(name for name in media_dirs(net) if name != victim)
    assert net.stats(survivor)["media"]["jobs"] >= 1
    assert leftovers(media_dirs(net)[survivor]) == []
    assert leftovers(net.node_dir("client-1") / "media") == []
    proxy_log = (net.state_dir / "logs" / "proxy-1.log").read_text()
    assert any(r.get("body_sent_again") for r in log_records(proxy_log))  # its parts had reached the killed worker
