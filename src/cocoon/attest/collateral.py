"""DCAP collateral for TDX verification: Intel's signed TCB info, QE identity and CRLs for one platform.

Collateral depends only on the platform's FMSPC and PCK CA, not on the quote, and Intel signs it for about
a month; so it is fetched from a PCCS once per platform, cached on disk as JSON together with its validity
window, and reused until that window closes. Every lookup takes an explicit `now` (offline tests).

Cache file (one per CA and FMSPC, `tdx-collateral-<ca>-<FMSPC>.json`):

    {"fmspc": "B0C06F000000", "ca": "platform", "not_before": <unix s>, "not_after": <unix s>,
     "fetched_at": <unix s>, "collateral": <dcap-qvl QuoteCollateralV3 JSON object>}

The window is the intersection of the validity of its four signed parts: [latest issue date, earliest next
update]. dcap-qvl checks the same dates again when it verifies; the window only decides when to refetch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import dcap_qvl
from cryptography import x509

from cocoon.attest.types import AttestationError
from cocoon.fsutil import write_atomically

log = logging.getLogger(__name__)


def utc_iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_date(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclasses.dataclass(frozen=True)
class Collateral:
    dcap: dcap_qvl.QuoteCollateralV3
    fmspc: str  # uppercase hex, as in Intel's TCB info
    not_before: float
    not_after: float

    @classmethod
    def from_dcap(cls, dcap: dcap_qvl.QuoteCollateralV3) -> Collateral:
        """Reads the FMSPC and computes the validity window from the signed documents themselves."""
        try:
            tcb_info = json.loads(dcap.tcb_info)
            qe_identity = json.loads(dcap.qe_identity)
            crls = [x509.load_der_x509_crl(bytes(der)) for der in (dcap.pck_crl, dcap.root_ca_crl)]
            issued = [_parse_date(tcb_info["issueDate"]), _parse_date(qe_identity["issueDate"])]
            expires = [_parse_date(tcb_info["nextUpdate"]), _parse_date(qe_identity["nextUpdate"])]
            fmspc = str(tcb_info["fmspc"]).upper()
        except (ValueError, KeyError, TypeError) as e:
            raise AttestationError(f"DCAP collateral is malformed: {e}") from None
        for crl in crls:
            if crl.next_update_utc is None:
                raise AttestationError("DCAP collateral has a CRL without a next update date")
            issued.append(crl.last_update_utc.timestamp())
            expires.append(crl.next_update_utc.timestamp())
        return cls(dcap=dcap, fmspc=fmspc, not_before=max(issued), not_after=min(expires))

    @classmethod
    def from_json(cls, text: str) -> Collateral:
        """Either a cache file (see the module doc) or a bare dcap-qvl collateral JSON object."""
        try:
            data = json.loads(text)
            bare = data["collateral"] if "collateral" in data else data
            dcap = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(bare))
        except (ValueError, TypeError) as e:
            raise AttestationError(f"DCAP collateral JSON does not load: {e}") from None
        return cls.from_dcap(dcap)

    def to_json(self, ca: str, fetched_at: float) -> str:
        return json.dumps({
            "fmspc": self.fmspc,
            "ca": ca,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "fetched_at": fetched_at,
            "collateral": json.loads(self.dcap.to_json()),
        }, indent=1)

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now <= self.not_after

    def check_applies(self, fmspc: str, now: float) -> None:
        """Refuses collateral of another platform or outside its window, before DCAP runs, with a precise reason."""
        if fmspc.upper() != self.fmspc:
            raise AttestationError(
                f"DCAP collateral is for platform FMSPC {self.fmspc}, but the quote comes from FMSPC {fmspc.upper()}"
            )
        if not self.valid_at(now):
            raise AttestationError(
                f"DCAP collateral for FMSPC {self.fmspc} is valid from {utc_iso(self.not_before)} to "
                f"{utc_iso(self.not_after)}, not at {utc_iso(now)}"
            )


class CollateralSource(Protocol):
    def get(self, raw_quote: bytes, fmspc: str, ca: str, now: float) -> Collateral:
        """Collateral for the quote's platform valid at `now`, or AttestationError saying why there is none."""
        ...


class FixedCollateral:
    """One collateral given by the caller (a file on the command line, tests): never fetched or refreshed."""

    def __init__(self, collateral: Collateral) -> None:
        self.collateral = collateral

    @classmethod
    def load(cls, path: Path) -> FixedCollateral:
        try:
            text = path.read_text()
        except OSError as e:
            raise AttestationError(f"cannot read DCAP collateral file {path}: {e.strerror}") from None
        return cls(Collateral.from_json(text))

    def get(self, raw_quote: bytes, fmspc: str, ca: str, now: float) -> Collateral:
        return self.collateral


class CollateralCache:
    """Collateral per (PCK CA, FMSPC): in memory, then on disk, then fetched from the PCCS.

    A fetch blocks its caller (inside a TLS handshake: the event loop) for one PCCS round trip, bounded by
    `fetch_timeout_s`; it happens once per platform per validity window (about a month). After a failed
    fetch the same platform is not retried for `retry_after_s`, so peers presenting quotes from unknown
    platforms cannot make every handshake wait on the PCCS.
    """

    def __init__(self, directory: Path | None, pccs_url: str | None, *, fetch_timeout_s: float = 10.0,
                 retry_after_s: float = 60.0) -> None:
        self.directory = directory
        self.pccs_url = pccs_url.rstrip("/") if pccs_url else None
        self.fetch_timeout_s = fetch_timeout_s
        self.retry_after_s = retry_after_s
        self._memory: dict[tuple[str, str], Collateral] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}  # key -> (retry after, reason)

    def _path(self, ca: str, fmspc: str) -> Path | None:
        return self.directory / f"tdx-collateral-{ca}-{fmspc.upper()}.json" if self.directory else None

    def get(self, raw_quote: bytes, fmspc: str, ca: str, now: float) -> Collateral:
        key = (ca, fmspc.upper())
        cached = self._memory.get(key)
        if cached is None or not cached.valid_at(now):
            cached = self._load(key) or cached  # another process may have refreshed the file
        if cached is not None and cached.valid_at(now):
            self._memory[key] = cached
            return cached
        stale = (f"cached collateral expired at {utc_iso(cached.not_after)}" if cached
                 else "no cached collateral")
        if self.pccs_url is None:
            raise AttestationError(
                f"no valid DCAP collateral for platform FMSPC {key[1]} (PCK CA {ca}) at {utc_iso(now)}: {stale}, "
                "and no PCCS is configured (set pccs_url)"
            )
        failed = self._failed.get(key)
        if failed is not None and now < failed[0]:
            raise AttestationError(f"DCAP collateral for FMSPC {key[1]} is unavailable: {stale}; last fetch from "
                                   f"{self.pccs_url} failed: {failed[1]}")
        try:
            fetched = Collateral.from_dcap(self._fetch(raw_quote))
        except (AttestationError, ValueError, RuntimeError, TimeoutError) as e:
            reason = str(e) or type(e).__name__
            self._failed[key] = (now + self.retry_after_s, reason)
            raise AttestationError(f"DCAP collateral for FMSPC {key[1]} is unavailable: {stale}; fetching it from "
                                   f"{self.pccs_url} failed: {reason}") from None
        self._failed.pop(key, None)
        self._memory[key] = fetched
        path = self._path(*key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, fetched.to_json(ca, time.time()).encode(), 0o644)
        log.info("fetched DCAP collateral", extra={"fields": {
            "fmspc": fetched.fmspc, "ca": ca, "pccs": self.pccs_url,
            "valid_from": utc_iso(fetched.not_before), "valid_until": utc_iso(fetched.not_after)}})
        return fetched

    def _load(self, key: tuple[str, str]) -> Collateral | None:
        path = self._path(*key)
        if path is None or not path.exists():
            return None
        try:
            return Collateral.from_json(path.read_text())
        except (AttestationError, OSError) as e:
            log.warning("ignoring unreadable collateral cache file %s: %s", path, e)
            return None

    def _fetch(self, raw_quote: bytes) -> dcap_qvl.QuoteCollateralV3:
        assert self.pccs_url is not None
        url, timeout = self.pccs_url, self.fetch_timeout_s

        async def fetch() -> dcap_qvl.QuoteCollateralV3:
            return await asyncio.wait_for(dcap_qvl.get_collateral(url, raw_quote), timeout)

        # dcap-qvl's fetch is a coroutine, but verification is synchronous and may run inside a running
        # event loop (the TLS verify callback): run it on a loop of its own in a helper thread.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pccs") as pool:
            return pool.submit(asyncio.run, fetch()).result()
