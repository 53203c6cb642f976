"""The functions `bench/costs.py` measures inside the running nodes, and the wrappers that measure them."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# (module, class or None, function): synchronous work done once per request (or per frame) on the hot path
TARGETS = [
    ("cocoon.seal.request", None, "seal_request"),  # client: HPKE to each candidate worker
    ("cocoon.client.receipts", None, "check_receipt"),  # client: the receipt's two signatures and hashes
    ("cocoon.client.payments", "ClientPayments", "end"),  # client: the voucher (signature, book), receipts book
    ("cocoon.openai.schema", None, "parse_chat_request"),  # client: the body's validation
    ("cocoon.worker.sealing", None, "open_sealed"),  # worker: HPKE open
    ("cocoon.worker.notary", "Notary", "receipt"),  # worker: the receipt, signed
    ("cocoon.worker.payments", "WorkerPayments", "accept"),  # worker: the payout voucher (signature, book)
    ("cocoon.worker.execution", "Execution", "_engine_request"),  # worker: the body decoded for the engine
    ("cocoon.ledger.books", "ProxyBooks", "settle"),  # proxy: the books' transaction, two vouchers signed
    ("cocoon.proxy.forwarding", "RunningRequest", "_checked"),  # proxy: the worker's receipt checked
    ("cocoon.proxy.forwarding", "RunningRequest", "_receipt"),  # proxy: the receipt countersigned
    ("cocoon.proxy.forwarding", "RunningRequest", "_admit"),  # proxy: id, limits, reservation
    ("cocoon.proxy.forwarding", "RunningRequest", "_finish"),  # proxy: release, metrics, log
    ("cocoon.wire.frames", "FrameReader", "feed"),  # every process: frames decoded
    ("cocoon.ratls.tls", "TlsStream", "_send_pending"),  # every process: TLS records encrypted and sent
    ("logging", "Logger", "_log"),  # every process: log lines
]

_sums: dict[str, list[float]] = {}


def _wrap(label: str, func: Callable[..., Any]) -> Callable[..., Any]:
    clock = time.thread_time

    @functools.wraps(func)
    def measured(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return func(*args, **kwargs)
        finally:
            entry = _sums.get(label)
            if entry is None:
                entry = _sums[label] = [0.0, 0]
            entry[0] += clock() - started
            entry[1] += 1

    return measured


def install(out_dir: str, role: str) -> None:
    for module_name, class_name, name in TARGETS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        owner = getattr(module, class_name) if class_name else module
        func = getattr(owner, name, None)
        if func is None or inspect.iscoroutinefunction(func):
            continue
        label = f"{class_name}.{name}" if class_name else name
        wrapped = _wrap(label, func)
        setattr(owner, name, wrapped)
        if class_name is None:  # modules that imported it by name call it through their own global
            for other in list(sys.modules.values()):
                if getattr(other, "__name__", "").startswith("cocoon") and getattr(other, name, None) is func:
                    setattr(other, name, wrapped)
    path = os.path.join(out_dir, f"{os.getpid()}.json")

    def dump() -> None:
        while True:
            snapshot = {"role": role, "argv": sys.argv, "cpu_s": time.process_time(),
                        "sums": {k: list(v) for k, v in list(_sums.items())}}
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(snapshot, f)
            os.replace(tmp, path)
            time.sleep(1.0)

    threading.Thread(target=dump, daemon=True, name="cocoon-costs-dump").start()
