"""Files on disk: secrets and caches written so that no reader sees a partial file or a too-open mode, and the
SQLite databases (books, vouchers, the local chain) opened the one way they are all used."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def write_atomically(target: Path, data: bytes, mode: int) -> None:
    """Replace `target` with `data`; the file is created with its final mode, so a key is never readable
    by others, even briefly, and a crash leaves either the old file or the new one."""
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")  # per process: concurrent writers never collide
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)


def open_sqlite(path: str | os.PathLike[str], *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000,
                wal: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from worker threads (callers
    serialise access), in WAL mode so that readers never wait for the writer."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
    return db
