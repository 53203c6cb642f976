"""TDX quote generation through the Linux TSM configfs interface (kernel 6.7+, `CONFIG_TSM_REPORTS`).

One report entry per quote: create a directory under /sys/kernel/config/tsm/report, write the 64-byte
report_data to `inblob`, read the quote from `outblob`, remove the directory. `generation` counts writes to
the entry, so a concurrent writer (whose inblob we would be quoting) is detected rather than trusted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cocoon.attest.types import AttestationError

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")


class TsmQuoter:
    def __init__(self, root: Path = TSM_REPORT_ROOT) -> None:
        self.root = root

    def quote(self, report_data: bytes) -> bytes:
        if len(report_data) != 64:
            raise ValueError(f"report_data has {len(report_data)} bytes, expected 64")
        if not self.root.is_dir():
            raise AttestationError(
                f"cannot produce a TDX quote: the Linux TSM interface {self.root} is missing. This is not a "
                "TDX guest, or its kernel lacks CONFIG_TSM_REPORTS and the tdx_guest driver (Linux 6.7+), or "
                "configfs is not mounted (mount -t configfs none /sys/kernel/config); use attestation 'fake' "
                "on machines without TDX"
            )
        entry = self.root / f"cocoon-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            entry.mkdir()
        except OSError as e:
            raise AttestationError(f"cannot create TSM report entry {entry}: {e.strerror} "
                                   "(quoting needs root or write access to configfs)") from None
        try:
            return self._quote_in(entry, report_data)
        except OSError as e:
            raise AttestationError(f"TSM report entry {entry} failed: {e.strerror or e}") from None
        finally:
            # configfs removes the entry's attribute files with the directory.
            with contextlib.suppress(OSError):
                entry.rmdir()

    @staticmethod
    def _quote_in(entry: Path, report_data: bytes) -> bytes:
        provider = (entry / "provider").read_text().strip()
        if provider != "tdx_guest":
            raise AttestationError(f"TSM provider is {provider!r}, expected 'tdx_guest': this is not a TDX guest")
        generation = int((entry / "generation").read_text())
        (entry / "inblob").write_bytes(report_data)
        quote = (entry / "outblob").read_bytes()
        if int((entry / "generation").read_text()) != generation + 1:
            raise AttestationError(f"TSM report entry {entry} was written by another process while quoting")
        if not quote:
            raise AttestationError(f"TSM report entry {entry} returned an empty quote")
        return quote
