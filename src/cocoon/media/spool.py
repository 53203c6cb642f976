"""Temporary files for a job's input and output, in the worker's state directory, removed whatever happens.

FFmpeg's demuxers seek (an MP4 may keep its index at the end) and some muxers rewrite their header when they
finish (WAV's length, WebM's duration), so the input is written to a file as its parts arrive and the output is
written to one before it is sent: memory stays bounded by one part whatever the file's size, and disk by the
limits.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from types import TracebackType

from cocoon.media.job import too_large

PREFIX = "media-"  # every file a job leaves behind would start so: tests look for them


class Spool:
    """One temporary file (owner-only), at most `limit` bytes; `close` removes it and is safe to repeat."""

    def __init__(self, directory: Path, limit: int, suffix: str = "") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=PREFIX, suffix=suffix, dir=directory)
        self.path = Path(name)
        self.limit = limit
        self.size = 0
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            raise too_large(f"the upload is larger than this network's limit of {self.limit} bytes", "file")
        self._file.write(data)
        self.size += len(data)

    def finish(self) -> Path:
        """Every part written: the file is ready to read."""
        self._file.close()
        return self.path

    def close(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def leftovers(directory: Path) -> list[Path]:
    """Temporary media files left in `directory` (none, unless a process died mid-job)."""
    return sorted(directory.glob(f"{PREFIX}*")) if directory.is_dir() else []
