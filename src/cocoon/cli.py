"""The `cocoon` command: run a role, a whole local network, or a benchmark."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import typer

from cocoon.chain.cli import app as chain_app
from cocoon.config import (
    ClientConfig,
    CommonConfig,
    ConfigError,
    KeysConfig,
    ProxyConfig,
    WorkerConfig,
    load_config,
)
from cocoon.ledger_cli import app as ledger_app
from cocoon.log_cli import app as log_app
from cocoon.receipt_cli import app as receipt_app

app = typer.Typer(help="cocoon: confidential, attested, paid AI inference.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

C = TypeVar("C", bound=CommonConfig)
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="TOML config file for this role.")]


def _run_role(role: str, path: Path, kind: type[C], main: Callable[[C, asyncio.Event], Awaitable[None]]) -> None:
    from cocoon.ledger.base import LedgerError
    from cocoon.ledger.books import BooksError
    from cocoon.runtime import run_until_signal, setup_logging

    try:
        cfg = load_config(path, kind)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(role, cfg)
    try:
        run_until_signal(lambda stop: main(cfg, stop))
    except (ConfigError, OSError, ValueError, LedgerError, BooksError) as exc:  # BooksError: rolled-back books
        typer.echo(f"error: {role} {cfg.name} cannot run: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def proxy(config: ConfigOption) -> None:
    """Run a proxy: accepts workers and clients over RA-TLS, routes requests, keeps the books."""
    from cocoon.proxy.server import run_proxy

    _run_role("proxy", config, ProxyConfig, run_proxy)


@app.command()
def worker(config: ConfigOption) -> None:
    """Run a worker: serves an inference engine to the proxy it dials."""
    from cocoon.worker.runner import run_worker

    _run_role("worker", config, WorkerConfig, run_worker)


@app.command()
def client(
    config: ConfigOption,
    via_relay: Annotated[str | None, typer.Option(
        "--via-relay", metavar="URL", help=(
            "Send every request through this Oblivious HTTP relay (`cocoon relay`, e.g. http://relay.example:10300) "
            "instead of a proxy link: encapsulated to the proxy's attested gateway; the relay pays."))] = None,
) -> None:
    """Run a client: the OpenAI-compatible API, forwarding to an attested proxy (or through a relay)."""
    import os

    from cocoon.client.node import run_client

    if via_relay is not None:
        os.environ["COCOON_VIA_RELAY"] = via_relay  # the config's `via_relay`, overridden as any field can be
    _run_role("client", config, ClientConfig, run_client)


keys_app = typer.Typer(help=(
    "The key service: derives keys from its master secret and hands them over RA-TLS to peers whose image the "
    "root registry allows for their role (`cocoon keys --config FILE` runs it)."), add_completion=False)
app.add_typer(keys_app, name="keys")


@keys_app.callback(invoke_without_command=True)
def keys(ctx: typer.Context, config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="TOML config file of the key service.")] = None) -> None:
    """Run the key service (with --config), or one of its commands."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    from cocoon.keys.service import run_keys

    _run_role("keys", config, KeysConfig, run_keys)


@keys_app.command("recovery-key")
def keys_recovery_key(out: Annotated[Path, typer.Option(
        help="Where the private recovery key goes (mode 0600): keep it offline.", dir_okay=False)]) -> None:
    """Make the operator's offline recovery key: prints the public half for the key service's
    `recovery_public_key`."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from cocoon.fsutil import SECRET_MODE, create_once

    key = X25519PrivateKey.generate()
    if out.exists():
        typer.echo(f"error: {out} exists: a recovery key is never overwritten", err=True)
        raise typer.Exit(1)
    create_once(out, key.private_bytes_raw().hex().encode(), SECRET_MODE)
    typer.echo(key.public_key().public_bytes_raw().hex())


@keys_app.command("restore")
def keys_restore(
    config: ConfigOption,
    backup: Annotated[Path, typer.Option(help="The master backup (STATE_DIR/NAME.master-backup of the lost service).",
                                         exists=True, dir_okay=False)],
    recovery_key: Annotated[Path, typer.Option(help="The private recovery key file (`cocoon keys recovery-key`).",
                                               exists=True, dir_okay=False)],
) -> None:
    """Put a lost key service's master secret, from its backup, into the instance this config describes (sealed
    to its platform): it then derives the very same keys for every node."""
    from cocoon.keys.service import MasterSecret, decrypt_backup
    from cocoon.nodekeys import KeysUnavailable, NodeKeys

    try:
        cfg = load_config(config, KeysConfig)
        master = decrypt_backup(backup.read_bytes(), bytes.fromhex(recovery_key.read_text().strip()))
        MasterSecret(cfg, NodeKeys("keys", cfg)).load(initial=master)
    except (ConfigError, KeysUnavailable, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"restored the master secret into {cfg.state_path}")


@app.command()
def relay(config: ConfigOption) -> None:
    """Run an Oblivious HTTP relay (RFC 9458) for a VPN provider: devices POST message/ohttp-req to /ohttp, it
    forwards them to the proxy's gateway and pays as the client of record; it keeps counters, never records."""
    from cocoon.config import RelayConfig
    from cocoon.relay.node import run_relay

    _run_role("relay", config, RelayConfig, run_relay)


@app.command()
def up(
    workers: Annotated[int, typer.Option("--workers", "-n", min=1, help="Number of workers.")] = 2,
    proxies: Annotated[int, typer.Option("--proxies", min=1, help=(
        "Number of proxies, each registered in the root registry; clients and workers find them there (nearest "
        "first, failing over down the list) and every worker serves all of them."))] = 1,
    clients: Annotated[int, typer.Option("--clients", min=1, help=(
        "Number of clients, each with its own API port (the first on --port) and its own channels."))] = 1,
    hosts: Annotated[bool, typer.Option("--hosts", help=(
        "Root only: every process but the clients on a host of its own (a Linux network namespace with its own "
        "address on a private bridge, 10.213.0.0/24), with a key service the proxies and workers take their keys "
        "from; everything created is removed at the stop (and what a crashed run left, at the next start)."))] = False,
    engine: Annotated[str, typer.Option(help=(
        "Worker engine: embedded (the bundled SmolLM2-135M on llama.cpp) | fake | openai:URL (any OpenAI-compatible "
        "server). fake answers every prompt with reply_tokens words (16), each piece token_bytes long (0: the "
        "word), paced at tokens_per_s (0: at once), all set with -o; `cocoon bench` measures -o reply_tokens=50 "
        "-o token_bytes=128."))] = "embedded",
    port: Annotated[int | None, typer.Option(
        help="Client API port on 127.0.0.1 [default: 10000, or the first free port of --port-range].")] = None,
    port_range: Annotated[str | None, typer.Option(
        "--port-range", metavar="A-B",
        help="Take every port the network opens (proxy, each stats port, client API, dashboard) from A-B.")] = None,
    state_dir: Annotated[Path, typer.Option(help="Where configs, logs, databases and localnet.json go.")] = Path(
        ".cocoon"),
    engine_option: Annotated[list[str] | None, typer.Option(
        "--engine-option", "-o", help="Engine option key=value (e.g. tokens_per_s=50 for fake); repeatable.")] = None,
    max_active: Annotated[int | None, typer.Option(min=1, help=(
        "Concurrent requests per worker [default: from the engine and cores: embedded 2 (llama.cpp generates one "
        "at a time), fake 32 per core, openai:URL 8 per core]."))] = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for every process to be ready.")] = 300.0,
    relay: Annotated[bool, typer.Option(help=(
        "Add an Oblivious HTTP relay (`cocoon relay`, role `relay` in localnet.json) and send the client's requests "
        "through it, encapsulated to the proxy's gateway; the relay pays."))] = False,
    workloads: Annotated[str, typer.Option(
        metavar="LIST", help="What each worker serves, comma-separated: llm (the engine's models), media "
                             "(transcoding: POST /v1/media/transcode).")] = "llm,media",
    block_interval: Annotated[float, typer.Option(min=0.01, help="Seconds between the devnet's blocks.")] = 0.5,
) -> None:
    """Start a local network (a devnet chain, proxies, workers, client) and keep it up until Ctrl-C or SIGTERM.

    Writes STATE_DIR/localnet.json with every process's role, name, pid and URLs, and `dashboard_url`: a page
    showing the whole network live (each process also has its own at STATS_URL/dashboard).
    """
    from cocoon.localnet import parse_options, parse_workloads, run_up

    try:
        options = parse_options(engine_option or [])
        served = parse_workloads(workloads)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    sys.exit(run_up(state_dir, workers=workers, engine=engine, port=port, engine_options=options,
                    max_active=max_active, ready_timeout_s=ready_timeout, port_range=port_range, relay=relay,
                    proxies=proxies, clients=clients, hosts=hosts, workloads=served,
                    block_interval_s=block_interval))


@app.command()
def status(
    state_dir: Annotated[Path, typer.Option(help="The local network's state dir (its localnet.json).")] = Path(
        ".cocoon"),
    url: Annotated[list[str] | None, typer.Option(
        "--url", help="A stats URL (http://HOST:PORT) or a network dashboard's, instead of the local network; "
                      "repeatable.")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token of stats ports that need one (stats_token).",
                                              envvar="COCOON_STATS_TOKEN")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw every --interval seconds until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between redraws with --watch.")] = 2.0,
) -> None:
    """The network at a glance: proxy, workers and clients from their /jsonstats (what the dashboard shows).

    Exits 1 when a process's stats cannot be read (without --watch).
    """
    import time

    from rich.console import Console
    from rich.live import Live

    from cocoon.status import StatusError, collect, localnet_sources, render

    def snapshot() -> list[dict[str, object]]:
        sources = [] if url else localnet_sources(state_dir)
        return collect(sources, url or [], token)

    console = Console()
    try:
        if not watch:
            processes = snapshot()
            console.print(render(processes))
            raise typer.Exit(1 if any("error" in p for p in processes) else 0)
        with Live(render(snapshot()), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(snapshot()))
    except StatusError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


@app.command()
def engine(
    engine: Annotated[str, typer.Argument(help="embedded | fake")] = "fake",
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    engine_option: Annotated[list[str] | None, typer.Option("--engine-option", "-o",
                                                            help="Engine option key=value; repeatable.")] = None,
) -> None:
    """Serve a local engine as an OpenAI-compatible HTTP server (for benchmarks and the openai: engine)."""
    from cocoon.inference.factory import make_engine
    from cocoon.inference.server import serve
    from cocoon.localnet import parse_options
    from cocoon.runtime import run_until_signal

    eng = make_engine(engine, **parse_options(engine_option or []))

    async def main(stop: asyncio.Event) -> None:
        await eng.start()
        runner, bound = await serve(eng, "127.0.0.1", port)
        typer.echo(f"engine {engine} serving http://127.0.0.1:{bound}/v1", err=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            await eng.close()

    run_until_signal(main)


@app.command()
def bench(
    requests: Annotated[int, typer.Option(help="Streamed requests per run.")] = 2000,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 32,
    workers: Annotated[int, typer.Option(help="Workers in the network run.")] = 2,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    c1_requests: Annotated[int, typer.Option(help="Streamed requests in the concurrency-1 phase.")] = 200,
    runs: Annotated[int, typer.Option(
        help="Consecutive runs; the report keeps every run's headline figures (`all_runs`), details of the last.")] = 1,
    chunks: Annotated[int, typer.Option(
        help="Chunks per answer (1 measures what a request costs apart from relaying its chunks).")] = 50,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON report to this file.")] = None,
    readme: Annotated[Path | None, typer.Option(
        help="Rewrite the figures between this file's bench markers (the README's benchmark section).")] = None,
) -> None:
    """Measure the network path against the engine alone (fake engine, 50 chunks of 128 bytes): rates and
    latencies at --concurrency and at 1, and CPU ms per request of every process."""
    import json

    from cocoon.bench import run_bench, run_summary, update_readme

    if chunks < 1:
        raise typer.BadParameter("at least one chunk per answer", param_hint="--chunks")
    if runs < 1:
        raise typer.BadParameter("at least one run", param_hint="--runs")
    summaries = []
    for i in range(runs):
        if runs > 1:
            typer.echo(f"run {i + 1} of {runs}", err=True)
        report = run_bench(requests, concurrency, workers, json_out, c1_requests, chunks)
        summaries.append(run_summary(report))
    report["all_runs"] = summaries
    if json_out:
        typer.echo(json.dumps(report))
    if out is not None:
        out.write_text(json.dumps(report, indent=1) + "\n")
    if readme is not None:
        update_readme(readme, report)


attest_app = typer.Typer(help="Inspect and verify attestation quotes and RA-TLS certificates.",
                         no_args_is_help=True)
app.add_typer(attest_app, name="attest")
EvidenceFile = Annotated[Path, typer.Argument(help="A quote (TDX or fake), or an RA-TLS certificate (PEM or DER).",
                                              exists=True, dir_okay=False, readable=True)]


@attest_app.command("show")
def attest_show(
    file: EvidenceFile,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object, lowercase hex.")] = False,
) -> None:
    """Print what a quote or certificate claims (kind, MRTD, RTMRs, report_data, image hash, claims).

    Nothing is verified: use `cocoon attest verify` for that.
    """
    import json

    from cocoon.attest.types import AttestationError
    from cocoon.ratls.evidence import evidence_dict, read_evidence

    try:
        info = evidence_dict(read_evidence(file.read_bytes()))
    except (AttestationError, ValueError) as exc:
        typer.echo(f"error: {file} is neither a quote nor an RA-TLS certificate: {exc}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(info))
        return
    lines: list[tuple[str, object]] = []
    for key, value in info.items():
        if key == "rtmr" and value:
            lines += [(f"rtmr{i}", reg) for i, reg in enumerate(value)]
        elif isinstance(value, dict):
            lines += [(f"{key}.{sub}", v) for sub, v in value.items()]
        else:
            lines.append((key, value))
    for label, value in lines:
        typer.echo(f"{label:<22} {value if value not in (None, '') else '-'}")


@attest_app.command("config-hash")
def attest_config_hash(
    role: Annotated[Literal["worker", "proxy", "client"], typer.Option(help="The role the config file is for.")],
    config: ConfigOption,
) -> None:
    """Print the hash of a node's trust-deciding configuration, as its claims will carry it (`config_hash`):
    what a policy's `config_hashes` pins. Environment overrides (COCOON_*) apply, as when the node runs."""
    from cocoon.attest.policy import PolicyError, load_policy
    from cocoon.attest.trustconfig import trust_config

    kinds: dict[str, type[CommonConfig]] = {"worker": WorkerConfig, "proxy": ProxyConfig, "client": ClientConfig}
    try:
        cfg = load_config(config, kinds[role])
        typer.echo(trust_config(role, cfg, load_policy(cfg.policy)).digest().hex())
    except (ConfigError, PolicyError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@attest_app.command("verify")
def attest_verify(
    file: EvidenceFile,
    policy: Annotated[str, typer.Option(help="Policy: dev, tdx-any, production, or a TOML policy file.")],
    collateral: Annotated[Path | None, typer.Option(
        help="DCAP collateral JSON for TDX quotes (dcap-qvl format, or a cocoon collateral cache file).",
        exists=True, dir_okay=False)] = None,
    pccs_url: Annotated[str | None, typer.Option(help="Fetch TDX collateral from this PCCS instead.")] = None,
    now: Annotated[float | None, typer.Option(help="Verify as of this unix time (default: now).")] = None,
    role: Annotated[Literal["worker", "proxy", "client"], typer.Option(
        help="Whose rules judge a bare quote (a certificate names its own role).")] = "worker",
    ledger: Annotated[str | None, typer.Option(
        help="The chain holding the root registry (for policies that read image hashes from it): a toncenter-v2 "
             "API URL (http://HOST:PORT/api/v2, with --root), or a local ledger file.")] = None,
    root: Annotated[str | None, typer.Option(help="The root contract's address on the chain at --ledger (a URL).")
                    ] = None,
) -> None:
    """Verify a quote or certificate against a policy: exit 0 and a verdict, or exit 1 and the reason."""
    import time

    from cocoon.attest.collateral import CollateralCache, FixedCollateral
    from cocoon.attest.policy import PolicyError, load_policy
    from cocoon.attest.registry import RegistryImages
    from cocoon.attest.types import AttestationError
    from cocoon.ledger.base import LedgerError
    from cocoon.ledger.local import LocalLedger
    from cocoon.ledger.onchain import OnChainLedger
    from cocoon.ledger.ton import TonLedger
    from cocoon.ledger.toncenter import ToncenterTransport
    from cocoon.ratls.check import verify_evidence

    try:
        rules = load_policy(policy)
    except PolicyError as exc:
        raise typer.BadParameter(str(exc), param_hint="--policy") from None
    if rules.needs_registry and ledger is None:
        raise typer.BadParameter(f"policy {rules.name!r} reads image hashes from the root registry: "
                                 "pass the ledger file", param_hint="--ledger")
    registry = None
    if ledger is not None and rules.needs_registry:
        chain: OnChainLedger
        if ledger.startswith(("http://", "https://")):
            if not root:
                raise typer.BadParameter("a chain API needs the root registry's address", param_hint="--root")
            try:
                chain = TonLedger(root, ToncenterTransport(ledger), sync_s=3600)
            except (LedgerError, ValueError) as exc:
                typer.echo(f"error: the registry at {ledger}: {exc}", err=True)
                raise typer.Exit(2) from None
        elif Path(ledger).is_file():
            chain = LocalLedger(ledger)
        else:
            raise typer.BadParameter(f"{ledger} is neither a chain API URL nor a ledger file", param_hint="--ledger")
        registry = RegistryImages(chain)
    try:
        source = FixedCollateral.load(collateral) if collateral else CollateralCache(None, pccs_url, block=True)
        verdict = verify_evidence(file.read_bytes(), rules, role=role, now=time.time() if now is None else now,
                                  collateral=source, registry=registry)
    except (AttestationError, ValueError) as exc:
        typer.echo(f"refused: {exc}")
        raise typer.Exit(1) from None
    finally:
        if registry is not None:
            registry.ledger.close()
    typer.echo(verdict)


@app.command("gen-cert")
def gen_cert(
    out: Annotated[Path, typer.Option(help="Directory for cert.pem and key.pem (mode 0600).", file_okay=False)],
    role: Annotated[Literal["worker", "proxy", "client"], typer.Option(help="Role named in the claims.")],
    attestation: Annotated[Literal["fake", "tdx", "none"], typer.Option(
        help="Who quotes: fake (software), tdx (this TD, via the Linux TSM interface), none.")] = "fake",
    image: Annotated[str, typer.Option(help="Image name the fake backend derives measurements from.")] = "cocoon-dev",
    lifetime: Annotated[int, typer.Option(min=60, help="Certificate lifetime in seconds.")] = 86400,
) -> None:
    """Write a fresh RA-TLS certificate and its Ed25519 key to OUT/cert.pem and OUT/key.pem."""
    from cocoon.attest.backends import get_backend
    from cocoon.attest.types import AttestationError
    from cocoon.ratls.cert import make_identity, save_identity

    try:
        identity = make_identity(role, get_backend(attestation, image=image), lifetime_s=lifetime)
    except AttestationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    save_identity(identity, out)
    typer.echo(f"wrote {out / 'cert.pem'} and {out / 'key.pem'} "
               f"({role}, {attestation}, key {identity.public_key.hex()})")


app.add_typer(ledger_app, name="ledger")
app.add_typer(log_app, name="log")
app.add_typer(receipt_app, name="receipt")
app.add_typer(chain_app, name="chain")


def main() -> None:
    app()
