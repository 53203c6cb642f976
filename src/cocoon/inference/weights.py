"""The SHA-256 of the weights an engine serves: what a worker's claims and receipts name as its model hash.

Hashing a GGUF file reads all of it (93 MB for the embedded model, tens of GB for large ones), so a file's hash is
computed once and cached by (path, size, modification time): in the process, and in a JSON file when the caller
names one (a worker keeps it in its state directory), so a restart does not re-read the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import NamedTuple

from cocoon.fsutil import write_atomically

log = logging.getLogger(__name__)

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_lock = threading.Lock()
_memory: dict[tuple[str, int, int], str] = {}  # (absolute path, size, mtime_ns) -> hex SHA-256


class ModelHash(NamedTuple):
    """The weights' SHA-256 (hex); `declared`: stated by the operator (an engine whose weights this worker cannot
    read, such as an `openai:` one), not measured here."""

    sha256: str
    declared: bool = False


def declared_hash(value: str) -> ModelHash:
    """An operator's `model_hash` option; ValueError unless it is 64 lowercase hex characters."""
    if not isinstance(value, str) or not _HEX_SHA256.fullmatch(value):
        raise ValueError(f"model_hash {value!r} must be the weights' SHA-256 as 64 lowercase hex characters")
    return ModelHash(value, declared=True)


def file_sha256(path: str | os.PathLike[str], cache_file: Path | None = None) -> str:
    """The hex SHA-256 of the file at `path`, from the cache when its size and modification time are unchanged."""
    resolved = os.path.realpath(path)
    st = os.stat(resolved)
    key = (resolved, st.st_size, st.st_mtime_ns)
    with _lock:
        known = _memory.get(key) or _from_file(cache_file, key)
        if known is None:
            with open(resolved, "rb") as weights:
                known = hashlib.file_digest(weights, "sha256").hexdigest()
            log.info("hashed model weights", extra={"fields": {"path": resolved, "bytes": st.st_size}})
            _to_file(cache_file, key, known)
        _memory[key] = known
        return known


def _entry(key: tuple[str, int, int]) -> dict[str, int]:
    return {"size": key[1], "mtime_ns": key[2]}


def _read(cache_file: Path) -> dict[str, dict[str, object]]:
    try:
        doc = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _from_file(cache_file: Path | None, key: tuple[str, int, int]) -> str | None:
    if cache_file is None:
        return None
    entry = _read(cache_file).get(key[0])
    if not isinstance(entry, dict) or {k: entry.get(k) for k in ("size", "mtime_ns")} != _entry(key):
        return None
    value = entry.get("sha256")
    return value if isinstance(value, str) and _HEX_SHA256.fullmatch(value) else None


def _to_file(cache_file: Path | None, key: tuple[str, int, int], sha256: str) -> None:
    if cache_file is None:
        return
    doc = _read(cache_file)
    doc[key[0]] = {**_entry(key), "sha256": sha256}
    try:
        write_atomically(cache_file, json.dumps(doc, indent=1).encode(), 0o644)
    except OSError as exc:  # a cache that cannot be written costs a re-hash at the next start, nothing more
        log.warning("cannot cache the weights' hash", extra={"fields": {"file": str(cache_file),
                                                                         "error": str(exc)}})
