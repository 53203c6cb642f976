"""Writing secrets and caches to disk so that no reader ever sees a partial file or a too-open mode."""

from __future__ import annotations

import os
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
