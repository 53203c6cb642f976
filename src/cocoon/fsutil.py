"""Files on disk: secrets and caches written so that no reader sees a partial file or a too-open mode, and the
SQLite databases (books, vouchers, the local chain) opened the one way they are all used.

Every state directory is created owner-only (0700) and every secret owner-only (0600); both helpers below are the
only way the project creates them. A directory that already exists keeps its mode (it may be a shared one the
operator chose), which is why each secret carries its own 0600.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
SECRET_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a directory, created (with every missing parent) owner-only."""
    path = Path(path)
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process created it meanwhile
            p.mkdir(mode=PRIVATE_DIR_MODE)
    return path


def write_atomically(target: Path, data: bytes, mode: int) -> None:
    """Replace `target` with `data`, durably: the file is created with its final mode, so a key is never
    readable by others, even briefly, and a crash (or power cut) leaves either the old file or the new one."""
    tmp = _write_temporary(target, data, mode)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def create_once(target: Path, data: bytes, mode: int) -> bytes:
    """Create `target` holding `data` unless it exists, durably and with its final mode; what it holds then.
    Processes racing to create it all read back the one that won: link() creates the name only if it is
    absent, with complete contents."""
    if not target.exists():
        tmp = _write_temporary(target, data, mode)
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        _fsync_dir(target.parent)
    return target.read_bytes()


def _write_temporary(target: Path, data: bytes, mode: int) -> Path:
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")  # per process: concurrent writers never collide
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _fsync_dir(directory: Path) -> None:
    """Make a rename or link in `directory` durable (the entry lives in the directory, not the file)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_sqlite(path: str | os.PathLike[str], *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000,
                wal: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from worker threads (callers
    serialise access), in WAL mode so that readers never wait for the writer."""
    private_dir(Path(path).parent)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
    return db
