"""DCAP collateral for TDX verification: Intel's signed TCB info, QE identity and CRLs for one platform.

Collateral depends only on the platform's FMSPC and PCK CA, not on the quote, and Intel signs it for about
a month; so it is fetched from a PCCS once per platform (in the background: see `CollateralCache`), cached on
disk as JSON together with its validity window, and reused until that window closes. Every lookup takes an
explicit `now` (offline tests).

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
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import dcap_qvl
from cryptography import x509

from cocoon.attest.types import AttestationError
from cocoon.fsutil import private_dir, write_atomically

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

    def stats(self) -> dict[str, int]:
        """Platforms with collateral, with a recent failed fetch, with a fetch in progress."""
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

    def stats(self) -> dict[str, int]:
        return {"cached": 1, "failed": 0, "fetching": 0}


class CollateralCache:
    """Collateral per (PCK CA, FMSPC): in memory, then on disk, then fetched from the PCCS in the background.

    Verification runs inside TLS handshakes, on the event loop, so a lookup never waits on the network: a miss
    starts a fetch in a thread of its own and is refused at once ("being fetched"); the peer's next attempt,
    once the fetch is done, finds the collateral (fetched once per platform per validity window, about a
    month). Peers presenting quotes from ever new platforms (a crafted quote can name any FMSPC) cost at most
    `max_fetches` threads at a time, each bounded by `fetch_timeout_s`: beyond that, misses are refused without
    a fetch. After a failed fetch the same platform is not retried for `retry_after_s`. Both the collateral and
    the failures are kept for the `cache_size` most recently used platforms.

    `block` (one-shot tools, never a node) makes a lookup wait for the fetch it starts.
    """

    def __init__(self, directory: Path | None, pccs_url: str | None, *, fetch_timeout_s: float = 10.0,
                 retry_after_s: float = 60.0, max_fetches: int = 4, cache_size: int = 256,
                 block: bool = False) -> None:
        if max_fetches < 1 or cache_size < 1:
            raise ValueError("max_fetches and cache_size must be at least 1")
        self.directory = directory
        self.pccs_url = pccs_url.rstrip("/") if pccs_url else None
        self.fetch_timeout_s = fetch_timeout_s
        self.retry_after_s = retry_after_s
        self.max_fetches = max_fetches
        self.cache_size = cache_size
        self.block = block
        # Read and written by the verifying thread (the event loop) and by fetch threads.
        self._lock = threading.Lock()
        self._memory: OrderedDict[tuple[str, str], Collateral] = OrderedDict()
        self._failed: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()  # -> (retry after, reason)
        self._fetching: dict[tuple[str, str], threading.Event] = {}

    def stats(self) -> dict[str, int]:
        """How many platforms have collateral, a recent failure, a fetch in progress (for /jsonstats)."""
        with self._lock:
            return {"cached": len(self._memory), "failed": len(self._failed), "fetching": len(self._fetching)}

    def _path(self, ca: str, fmspc: str) -> Path | None:
        return self.directory / f"tdx-collateral-{ca}-{fmspc.upper()}.json" if self.directory else None

    def get(self, raw_quote: bytes, fmspc: str, ca: str, now: float) -> Collateral:
        key = (ca, fmspc.upper())
        cached = self._cached(key, now)
        if cached is not None and cached.valid_at(now):
            return cached
        stale = (f"cached collateral expired at {utc_iso(cached.not_after)}" if cached
                 else "no cached collateral")
        if self.pccs_url is None:
            raise AttestationError(
                f"no valid DCAP collateral for platform FMSPC {key[1]} (PCK CA {ca}) at {utc_iso(now)}: {stale}, "
                "and no PCCS is configured (set pccs_url)"
            )
        unavailable = f"DCAP collateral for FMSPC {key[1]} is unavailable: {stale}"
        with self._lock:
            failed = self._failed.get(key)
            if failed is not None and now < failed[0]:
                self._failed.move_to_end(key)
                raise AttestationError(f"{unavailable}; last fetch from {self.pccs_url} failed: {failed[1]}")
            done = self._fetching.get(key)
            if done is None:
                if len(self._fetching) >= self.max_fetches:
                    raise AttestationError(f"{unavailable}; {len(self._fetching)} collateral fetches are already "
                                           "in progress: retry later")
                done = self._fetching[key] = threading.Event()
                threading.Thread(target=self._fetch_into_cache, args=(key, raw_quote, now, done), daemon=True,
                                 name=f"pccs-{key[1]}").start()
        if not self.block:
            raise AttestationError(f"{unavailable}; it is being fetched from {self.pccs_url}: retry in a few seconds")
        done.wait(self.fetch_timeout_s + 5)
        with self._lock:
            fetched, failed = self._memory.get(key), self._failed.get(key)
        if fetched is not None and fetched.valid_at(now):
            return fetched
        reason = failed[1] if failed is not None else "it did not finish in time"
        raise AttestationError(f"{unavailable}; fetching it from {self.pccs_url} failed: {reason}")

    def _cached(self, key: tuple[str, str], now: float) -> Collateral | None:
        with self._lock:
            cached = self._memory.get(key)
        if cached is None or not cached.valid_at(now):
            cached = self._load(key) or cached  # another process may have refreshed the file
            if cached is not None and cached.valid_at(now):
                self._remember(key, cached)
        elif cached is not None:
            with self._lock:
                self._memory.move_to_end(key)
        return cached

    def _remember(self, key: tuple[str, str], collateral: Collateral) -> None:
        with self._lock:
            self._memory[key] = collateral
            self._memory.move_to_end(key)
            self._failed.pop(key, None)
            while len(self._memory) > self.cache_size:
                self._memory.popitem(last=False)

    def _fetch_into_cache(self, key: tuple[str, str], raw_quote: bytes, now: float, done: threading.Event) -> None:
        """A fetch thread: the outcome goes to the cache, whatever happens (a thread that died silently would
        leave its platform "being fetched" for ever)."""
        try:
            fetched = Collateral.from_dcap(self._fetch(raw_quote))
            if fetched.fmspc != key[1]:
                raise AttestationError(f"the PCCS answered with collateral for FMSPC {fetched.fmspc}")
            if not fetched.valid_at(now):  # kept out of the cache: the PCCS is not refetched at every handshake
                raise AttestationError(f"the PCCS serves collateral valid from {utc_iso(fetched.not_before)} to "
                                       f"{utc_iso(fetched.not_after)}, not at {utc_iso(now)}")
            path = self._path(*key)
            if path is not None:
                private_dir(path.parent)
                write_atomically(path, fetched.to_json(key[0], time.time()).encode(), 0o644)
        except Exception as e:  # every failure of a fetch is recorded the same way
            reason = str(e) or type(e).__name__
            with self._lock:
                self._failed[key] = (now + self.retry_after_s, reason)
                self._failed.move_to_end(key)
                while len(self._failed) > self.cache_size:
                    self._failed.popitem(last=False)
            log.warning("DCAP collateral fetch failed", extra={"fields": {
                "fmspc": key[1], "ca": key[0], "pccs": self.pccs_url, "reason": reason}})
        else:
            self._remember(key, fetched)
            log.info("fetched DCAP collateral", extra={"fields": {
                "fmspc": fetched.fmspc, "ca": key[0], "pccs": self.pccs_url,
                "valid_from": utc_iso(fetched.not_before), "valid_until": utc_iso(fetched.not_after)}})
        finally:
            with self._lock:
                self._fetching.pop(key, None)
            done.set()

    def _load(self, key: tuple[str, str]) -> Collateral | None:
        path = self._path(*key)
        if path is None or not path.exists():
            return None
        try:
            loaded = Collateral.from_json(path.read_text())
        except (AttestationError, OSError) as e:
            log.warning("ignoring unreadable collateral cache file %s: %s", path, e)
            return None
        if loaded.fmspc != key[1]:
            log.warning("ignoring collateral cache file %s: it holds FMSPC %s", path, loaded.fmspc)
            return None
        return loaded

    def _fetch(self, raw_quote: bytes) -> dcap_qvl.QuoteCollateralV3:
        assert self.pccs_url is not None
        url, timeout = self.pccs_url, self.fetch_timeout_s

        async def fetch() -> dcap_qvl.QuoteCollateralV3:
            return await asyncio.wait_for(dcap_qvl.get_collateral(url, raw_quote), timeout)

        # dcap-qvl's fetch is a coroutine; this thread runs it on an event loop of its own.
        return asyncio.run(fetch())
