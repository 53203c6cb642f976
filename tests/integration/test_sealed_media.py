"""Issue 13, item 5: media bodies sealed end to end, like prompts (cocoon/seal).

Through `cocoon up` (real processes, every hop RA-TLS): a WAV whose samples spell a unique marker, transcoded to a
WAV (PCM is copied sample for sample, so the output carries the marker too). The proxy's whole memory, read from
/proc/PID/mem once the job is done, holds no copy of it, and neither do the network's files (logs, books, keys)
nor the worker's temporary files (gone); the client's memory does (the scan finds what is there). With the client
configured plain (`seal_requests = false`), the proxy's memory holds the marker: the check is a real one. The
answer's receipt (`x-cocoon-receipt`) covers the input and output files and the sealed parts and answer the proxy
relayed, and the proxy countersigned it.
"""

from __future__ import annotations

import hashlib
import secrets
import wave
from pathlib import Path

import pytest

from cocoon.ledger.receipts import Receipt, parts_digest
from cocoon.media.job import TranscodeJob
from cocoon.media.spool import leftovers
from tests.memscan import files_holding, process_memory_holds
from tests.netutil import Net, localnet, transcode_with_curl


def marked_wav(path: Path, marker: bytes, size: int = 600_000) -> Path:
    """A 16 kHz mono WAV whose samples are `marker` over and over (noise to the ear, valid PCM)."""
    samples = (marker * (size // len(marker) + 1))[:size // 2 * 2]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(samples)
    return path


def transcode_marked(net: Net, tmp: Path) -> tuple[bytes, dict[str, str], Path, Path]:
    """A marked WAV copied to WAV through the network: the marker, the answer's headers, input and output."""
    marker = b"mm" + secrets.token_hex(12).encode()
    source = marked_wav(tmp / "in.wav", marker)
    status, headers, body = transcode_with_curl(net.api_url, source, tmp / "out.wav", format="wav",
                                                codec="pcm_s16le")
    assert status == 200, body[:300]
    assert marker in body  # the output carries it
    return marker, headers, source, tmp / "out.wav"


@pytest.fixture(scope="module")
def sealed_net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    with localnet(tmp_path_factory.mktemp("sealedmedia") / "state", engine="fake", workers=2) as net:
        yield net


def test_the_proxy_never_holds_the_media_in_the_clear(sealed_net: Net, tmp_path: Path) -> None:
    marker, _, _, _ = transcode_marked(sealed_net, tmp_path)
    assert process_memory_holds(sealed_net.node("client-1")["pid"], [marker]) == {marker}  # the scan finds it
    assert process_memory_holds(sealed_net.node("proxy-1")["pid"], [marker]) == set()
    assert files_holding(sealed_net.state_dir, [marker]) == []
    for worker in sealed_net.by_role("worker"):
        assert leftovers(sealed_net.node_dir(worker["name"]) / "media") == []


def test_the_receipt_covers_the_files_and_what_the_proxy_relayed(sealed_net: Net, tmp_path: Path) -> None:
    _, headers, source, output = transcode_marked(sealed_net, tmp_path)
    receipt = Receipt.from_base64(headers["x-cocoon-receipt"])
    counter = receipt.verify()
    assert receipt.endpoint == receipt.model == "media"
    assert receipt.request_id == headers["x-request-id"]
    job = TranscodeJob(format="wav", codec="pcm_s16le").to_body()
    assert receipt.request_hash == parts_digest(job, hashlib.sha256(source.read_bytes()).digest())
    assert receipt.answer_hash == hashlib.sha256(output.read_bytes()).digest()  # what sha256sum says
    assert receipt.sealed_request_hash and receipt.sealed_answer_hash  # checked by the proxy before it charged
    assert counter.cost_nanoton == int(headers["x-cocoon-cost-nanoton"]) > 0
    assert counter.usage.media_ms == round(float(headers["x-cocoon-media-seconds"]) * 1000)
    client = sealed_net.stats("client-1")
    assert client["receipts"]["refused"] == 0 and client["receipts"]["held"] >= 2
    assert sealed_net.stats("proxy-1")["receipts"]["refused"] == 0


def test_a_client_configured_plain_shows_the_proxy_the_media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """The control: what sealing prevents happens without it."""
    monkeypatch.setenv("COCOON_SEAL_REQUESTS", "false")
    with localnet(tmp_path / "state", engine="fake", workers=1) as net:
        marker, headers, _, _ = transcode_marked(net, tmp_path)
        assert process_memory_holds(net.node("proxy-1")["pid"], [marker]) == {marker}
        receipt = Receipt.from_base64(headers["x-cocoon-receipt"])  # a plain job has its receipt too
        assert not receipt.sealed_request_hash and receipt.verify().cost_nanoton > 0
