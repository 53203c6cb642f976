"""`cocoon bench` as an operator runs it (issue 15, "Done when"): an honest run, payments on, ends with the client's
/jsonstats showing no refused voucher and no unexplained nanoTON, every nanoTON charged covered by a voucher."""

from __future__ import annotations

import json
import subprocess
import sys


def test_an_honest_bench_run_leaves_the_client_books_without_alarm() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "cocoon", "bench", "--requests", "120", "--concurrency", "16", "--workers", "2",
         "--c1-requests", "10", "--json"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert (report["network_errors"], report["network_c1_errors"]) == (0, 0)
    payments = report["client_payments"]
    assert (payments["refused_vouchers"], payments["unexplained_nanoton"]) == (0, 0)
    assert payments["vouchers_nanoton"] == payments["charged_nanoton"] > 0
    assert (payments["overcharges"], payments["overpriced_nanoton"], payments["unseen_answers"]) == (0, 0, 0)
