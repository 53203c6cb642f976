"""`cocoon status`: the dashboard's essentials in a terminal, for the local network or any stats URLs.

Reads the same /jsonstats the dashboard reads (a process's, or the network view's that joins them) and draws
one table per role with rich; `--watch` redraws it until Ctrl-C.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

FETCH_TIMEOUT_S = 5.0  # a loaded 2-core node answers /jsonstats in seconds, not milliseconds


class StatusError(Exception):
    pass


def localnet_sources(state_dir: Path) -> list[tuple[str, str, str]]:
    """(role, name, stats URL) of every process `cocoon up` started in `state_dir`."""
    path = state_dir / "localnet.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise StatusError(f"no local network in {state_dir} ({path} is missing): start one with `cocoon up`, "
                          "or pass --url") from None
    except ValueError as exc:
        raise StatusError(f"{path} is not valid JSON: {exc}") from None
    return [(p["role"], p["name"], p["stats_url"]) for p in info.get("processes", [])]


def fetch(url: str, token: str | None = None) -> dict[str, Any]:
    base = url.rstrip("/").removesuffix("/dashboard")  # a dashboard's address reads as its stats URL
    request = urllib.request.Request(base + "/jsonstats",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def collect(sources: Iterable[tuple[str, str, str]], urls: Iterable[str], token: str | None) -> list[dict[str, Any]]:
    """One entry per process: role, name and its stats, or the error that kept them away."""
    out: list[dict[str, Any]] = []
    for role, name, url in sources:
        out.append(_one(role, name, url, token))
    for url in urls:
        try:
            data = fetch(url, token)
        except (OSError, ValueError) as exc:
            out.append({"role": "?", "name": url, "error": _reason(exc)})
            continue
        if data.get("network"):  # a network view: it joined its processes already
            out.extend(data.get("processes", []))
        else:
            out.append({"role": data.get("role", "?"), "name": data.get("name", url), "stats": data})
    return out


def _one(role: str, name: str, url: str, token: str | None) -> dict[str, Any]:
    try:
        return {"role": role, "name": name, "stats": fetch(url, token)}
    except (OSError, ValueError) as exc:
        return {"role": role, "name": name, "error": _reason(exc)}


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}" + (" (needs --token)" if exc.code == 401 else "")
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


# ---- drawing ----


def ton(nano: int | None) -> str:
    if nano is None:
        return "–"
    whole, frac = divmod(abs(int(nano)), 10**9)
    digits = f"{frac:09d}".rstrip("0")
    return f"{'-' if nano < 0 else ''}{whole:,}{'.' + digits if digits else ''} TON"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _pair(recent: dict[str, Any] | None) -> str:
    recent = recent or {}
    return f"{_ms(recent.get('p50'))} / {_ms(recent.get('p99'))}"


def _rate(series: dict[str, Any] | None, name: str, buckets: int = 5) -> str:
    counts = ((series or {}).get("counts") or {}).get(name) or []
    recent = counts[-buckets - 1:-1]
    if not recent:
        return "–"
    return f"{sum(recent) / (len(recent) * series['bucket_s']):.1f}"  # type: ignore[index]


def _link(up: bool | None) -> Text:
    return Text("linked", style="green") if up else Text("down", style="bold red")


def _errors(outcomes: dict[str, int] | None) -> str:
    failed = sorted(((c, n) for c, n in (outcomes or {}).items() if c != "ok"), key=lambda cn: -cn[1])
    return ", ".join(f"{c} {n}" for c, n in failed[:3]) or "none"


def render(processes: list[dict[str, Any]]) -> Group:
    parts: list[Any] = []
    down = [p for p in processes if "error" in p]
    by_role: dict[str, list[dict[str, Any]]] = {}
    for p in processes:
        if "stats" in p:
            by_role.setdefault(p["role"], []).append(p)
    for p in by_role.get("proxy", []):
        st = p["stats"]
        books = st.get("books") or {}
        head = Table(title=f"proxy {p['name']}", title_justify="left", expand=False)
        for col in ("workers", "clients", "req/s", "latency p50/p99", "first token p50", "active/waiting",
                    "charged", "commission", "errors"):
            head.add_column(col, overflow="fold")
        head.add_row(str(len(st.get("workers") or [])), str(st.get("clients", 0)), _rate(st.get("series"), "requests"),
                     _pair(st.get("latency_ms")), _ms((st.get("ttft_ms") or {}).get("p50")),
                     f"{st.get('active_requests', 0)}/{st.get('waiting_requests', 0)}",
                     ton(books.get("charged_nanoton")), ton(books.get("commission_nanoton")),
                     _errors(st.get("requests")))
        parts.append(head)
        workers = Table(title=f"workers linked to {p['name']}", title_justify="left")
        for col in ("name", "models", "region", "attestation", "load", "success", "first token", "earned"):
            workers.add_column(col, overflow="fold")
        for w in st.get("workers") or []:
            success = w.get("success")
            workers.add_row(w["name"], ", ".join(w.get("models") or []), w.get("region", ""),
                            w.get("attestation") or "–", f"{w.get('active', 0)}/{w.get('max_active', 0)}",
                            "–" if success is None else f"{success * 100:.0f}%", _ms(w.get("ttft_ms")),
                            ton(w.get("earned_nanoton")))
        parts.append(workers)
    if by_role.get("worker"):
        table = Table(title="workers", title_justify="left")
        for col in ("name", "engine", "model", "proxy", "active", "served", "tokens/s", "earned", "redeemed"):
            table.add_column(col, overflow="fold")
        for p in by_role["worker"]:
            st = p["stats"]
            table.add_row(p["name"], st.get("engine", "?"), ", ".join(st.get("models") or []),
                          _link(st.get("proxy_connected")),
                          f"{st.get('active_requests', 0)}/{st.get('max_active_requests', 0)}",
                          str(st.get("served", 0)),
                          _rate(st.get("series"), "completion_tokens"), ton(st.get("earned_nanoton")),
                          ton(st.get("redeemed_nanoton")))
        parts.append(table)
    if by_role.get("client"):
        table = Table(title="clients", title_justify="left")
        for col in ("name", "proxy", "requests ok/all", "latency p50/p99", "charged", "balance", "errors"):
            table.add_column(col, overflow="fold")
        for p in by_role["client"]:
            st = p["stats"]
            outcomes = st.get("requests") or {}
            table.add_row(p["name"], _link(st.get("proxy_connected")),
                          f"{outcomes.get('ok', 0)}/{sum(outcomes.values())}", _pair(st.get("latency_ms")),
                          ton(st.get("charged_nanoton")), ton(st.get("balance_nanoton")), _errors(outcomes))
        parts.append(table)
    if by_role.get("relay"):
        table = Table(title="relays (counters only)", title_justify="left")
        for col in ("name", "proxy", "requests ok/all", "subscribers", "bytes in/out", "paid", "balance", "errors"):
            table.add_column(col, overflow="fold")
        for p in by_role["relay"]:
            st = p["stats"]
            outcomes = st.get("requests") or {}
            table.add_row(p["name"], _link(st.get("proxy_connected")),
                          f"{outcomes.get('ok', 0)}/{sum(outcomes.values())}", str(len(st.get("per_subscriber") or {})),
                          f"{st.get('bytes_in', 0)}/{st.get('bytes_out', 0)}", ton(st.get("vouchers_nanoton")),
                          ton(st.get("balance_nanoton")), _errors(outcomes))
        parts.append(table)
    for p in down:
        parts.append(Text(f"{p['role']} {p['name']}: no stats ({p['error']})", style="bold red"))
    if not processes:
        parts.append(Text("no processes", style="yellow"))
    parts.append(Text(f"as of {time.strftime('%H:%M:%S')}", style="dim"))
    return Group(*parts)
