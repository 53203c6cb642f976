"""Loaded by every Python process of `bench/costs.py` (it puts this folder first on PYTHONPATH): in a cocoon node,
wraps the functions of `bench/costs.py`'s TARGETS to add up the CPU of their thread while they run, and writes the
sums to COCOON_COSTS_DIR/<pid>.json every second. Nothing happens without COCOON_COSTS_DIR."""

from __future__ import annotations

import os

if os.environ.get("COCOON_COSTS_DIR"):
    import threading

    def _start() -> None:
        import sys
        import time

        time.sleep(1.0)  # sys.argv is set, and the node has imported what it runs, by then
        if "cocoon" not in " ".join(sys.argv[:2]) or "bench" in sys.argv:
            return
        from costs_targets import install  # this folder's own module

        install(os.environ["COCOON_COSTS_DIR"], " ".join(sys.argv[1:2]))

    threading.Thread(target=_start, daemon=True, name="cocoon-costs-probe").start()
