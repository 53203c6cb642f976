"""`cocoon bench`'s CPU accounting and report: /proc reading, per-request CPU, the JSON keys and README block."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cocoon import bench


def test_cpu_seconds_reads_this_process_and_grows_with_work() -> None:
    before = bench.cpu_seconds(os.getpid())
    deadline_ticks = before + 3 / os.sysconf("SC_CLK_TCK")
    spins = 0
    while bench.cpu_seconds(os.getpid()) < deadline_ticks and spins < 50_000_000:
        spins += 1  # bounded: stops after 3 clock ticks of CPU or this many turns
    assert bench.cpu_seconds(os.getpid()) > before


def test_cpu_seconds_counts_fields_after_a_command_name_with_spaces_and_parens(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # fields after "pid (comm) ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    line = "4242 (a) (b c)) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0\n"
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text",
                        lambda self, *a, **k: line if str(self) == "/proc/4242/stat" else real_read(self, *a, **k))
    assert bench.cpu_seconds(4242) == pytest.approx(400 / os.sysconf("SC_CLK_TCK"))


def test_cpu_meter_divides_by_requests_answered() -> None:
    meter = bench.CpuMeter({"loadgen": os.getpid()})
    meter.start()
    meter.stop()
    meter.used_s = {"loadgen": 0.5, "engine": 0.25}
    per = meter.per_request_ms(100)
    assert per == {"loadgen": 5.0, "engine": 2.5, "total": 7.5}


def test_machine_names_cores_and_cpu_model() -> None:
    m = bench.machine()
    assert m["cores"] == os.cpu_count() and isinstance(m["cpu_model"], str) and m["cpu_model"]


def _report() -> dict:
    cpu = {"loadgen": 0.4, "client-1": 1.1, "proxy-1": 0.7, "worker-1": 0.4, "engine": 0.6, "total": 3.2}
    return {"requests": 10, "concurrency": 2, "workers": 1, "chunks_per_answer": 50, "chunk_bytes": 128,
            "direct_rps": 900.0, "network_rps": 300.0, "ratio": 0.333, "direct_p50_ms": 30.0, "direct_p99_ms": 40.0,
            "network_p50_ms": 100.0, "network_p99_ms": 150.0, "direct_ttfb_p50_ms": 7.0, "network_ttfb_p50_ms": 40.0,
            "direct_errors": 0, "network_errors": 0, "c1_requests": 5, "direct_c1_p50_ms": 1.1,
            "network_c1_p50_ms": 6.7, "direct_c1_ttfb_p50_ms": 0.9, "network_c1_ttfb_p50_ms": 5.0,
            "direct_c1_headers_p50_ms": 0.3, "network_c1_headers_p50_ms": 4.5, "plain_c1_headers_p50_ms": 4.0,
            "plain_c1_hops_p50_ms": {"client": 3.1, "proxy": 1.2, "worker": 0.6},
            "direct_c1_errors": 0, "network_c1_errors": 1,
            "plain_rps": 400.0, "plain_p50_ms": 80.0, "plain_c1_p50_ms": 6.2, "plain_errors": 0, "sealed_ratio": 0.75,
            "hpke": {"candidates": 1, "seal_request_us": 300.0, "open_request_us": 250.0, "answer_us": 150.0,
                     "total_us": 700.0},
            "cpu_ms_per_request": {"direct": {"loadgen": 0.4, "engine": 0.5, "total": 0.9}, "network": cpu,
                                   "direct_c1": {"loadgen": 0.8, "engine": 0.8, "total": 1.6}, "network_c1": cpu,
                                   "plain": cpu, "plain_c1": cpu},
            "crypto": {"ed25519_sign_us": 15.0, "ed25519_verify_us": 40.0, "ed25519_us": 260.0, "total_us": 960.0},
            "machine": {"cores": 2, "cpu_model": "Test CPU"},
            "budget": {"goal_ratio": 0.5, "cpu_ms_per_request_at_goal": 4.444, "others_ms": 1.0,
                       "hops_budget_ms": 3.444, "hops_ms": 2.2, "crypto_floor_ms": 0.96}}


def test_the_budget_is_what_the_hops_may_spend_at_half_the_engines_rate() -> None:
    """2 cores at 450 req/s (half of 900) leave 4.444 ms of CPU per request; the engine and load generator take 1.0
    of it in the sealed run, the hops (client, proxy, workers) 2.2."""
    report = _report()
    report["network_rps"] = 300.0
    assert bench.budget(report) == report["budget"]
    crypto = bench.crypto_floor(report["hpke"], rounds=3)
    assert crypto["ed25519_us"] == pytest.approx(4 * crypto["ed25519_sign_us"] + 5 * crypto["ed25519_verify_us"],
                                                 abs=0.5)
    assert crypto["total_us"] == pytest.approx(crypto["ed25519_us"] + 700.0, abs=0.2)


def test_readme_block_is_replaced_between_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# before\n{bench.README_BEGIN}\nstale 0.42\n{bench.README_END}\nafter\n")
    bench.update_readme(readme, _report())
    text = readme.read_text()
    assert "stale 0.42" not in text and text.startswith("# before\n") and text.endswith("after\n")
    assert "2 cores, Test CPU" in text and "| network | 300.0 |" in text and "5.60 ms" in text
    assert "| network_c1 | 0.4 | 1.1 | 0.7 | 0.4 | 0.6 | 3.2 |" in text
    assert "sealed/plain **0.75**, +0.50 ms at concurrency 1" in text and "700.0 µs of CPU per request" in text
    assert "the client 3.1 ms from the request's parsing, the proxy 1.2 ms" in text
    assert "leaves the client, the proxy and the workers **3.444 ms** together. They took **2.2 ms**" in text
    assert "costs **0.96 ms** of it alone" in text


def test_every_run_is_shown_when_there_were_several(tmp_path: Path) -> None:
    first, last = _report(), _report()
    last["network_rps"], last["ratio"] = 330.0, 0.367
    report = {**last, "all_runs": [bench.run_summary(first), bench.run_summary(last)]}
    text = bench.markdown(report)
    assert "2 consecutive runs" in text
    assert "| 1 | 900.0 | 300.0 | 0.333 | 400.0 | 0.75 | 5.60 / 5.10 | 4.5 / 0.3 | 0.9 / 3.2 / 3.2 |" in text
    assert "| 2 | 900.0 | 330.0 | 0.367 |" in text
    assert "consecutive runs" not in bench.markdown({**first, "all_runs": [bench.run_summary(first)]})


def test_the_hpke_cost_covers_each_part_of_a_sealed_request() -> None:
    cost = bench.hpke_cost(candidates=2, rounds=3)
    assert cost["candidates"] == 2
    parts = [cost["seal_request_us"], cost["open_request_us"], cost["answer_us"]]
    assert all(p > 0 for p in parts) and cost["total_us"] == pytest.approx(sum(parts), abs=0.2)


def test_readme_without_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no block\n")
    with pytest.raises(ValueError, match="bench:begin"):
        bench.update_readme(readme, _report())
    assert readme.read_text() == "no block\n"


REPORT_KEYS = {"direct_c1_p50_ms", "network_c1_p50_ms", "direct_c1_ttfb_p50_ms", "network_c1_ttfb_p50_ms",
               "cpu_ms_per_request", "machine", "ratio", "direct_rps", "network_rps", "plain_rps", "sealed_ratio",
               "hpke", "direct_c1_headers_p50_ms", "network_c1_headers_p50_ms", "plain_c1_hops_p50_ms", "all_runs",
               "crypto", "budget"}


def test_committed_bench_json_has_the_report_keys_and_every_role() -> None:
    import json

    path = Path(__file__).resolve().parents[2] / "docs" / "bench.json"
    report = json.loads(path.read_text())
    assert REPORT_KEYS <= report.keys()
    roles = set(report["cpu_ms_per_request"]["network"])
    assert {"loadgen", "engine", "total"} <= roles
    assert any(r.startswith("client") for r in roles) and any(r.startswith("proxy") for r in roles)
    assert any(r.startswith("worker") for r in roles)
