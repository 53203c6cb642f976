"""`cocoon ledger`: the money of a local network, from the command line (amounts in TON, 9 decimals).

Every command works on the state directory `cocoon up` wrote: its chain, read and written over the devnet's HTTP API
(STATE_DIR/chain/devnet.json says where; a state dir holding an in-process local chain, ledger.sqlite, is read
directly), each node's wallet and vouchers in its own directory, and each node's config for the proxy it talks to.
A wallet is sealed to its node: the command opens it through the
same key service as the node itself (`cocoon.nodekeys`), so it works for the operator on the same platform and
with the node's config, and nowhere else.
"""

from __future__ import annotations

import datetime
import json
import tomllib
from pathlib import Path
from typing import Annotated

import typer

from cocoon.attest.types import AttestationError
from cocoon.ledger.base import LedgerError
from cocoon.ledger.contracts import Tag
from cocoon.ledger.devnet import devnet_call, ledger_path, vouchers_path
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.onchain import OnChainLedger, RegisteredProxy
from cocoon.ledger.purse import ClientPurse, WorkerPurse
from cocoon.ledger.ton import TonLedger
from cocoon.ledger.toncenter import ToncenterTransport
from cocoon.ledger.vouchers import VoucherBook, nanoton, ton
from cocoon.ledger.wallet import Wallet
from cocoon.nodekeys import WALLET, node_dir, operator_keys

app = typer.Typer(help="Money on the local ledger: status, deposits, withdrawals, closes, redeems.",
                  no_args_is_help=True)

StateDir = Annotated[Path, typer.Option("--state-dir", help="The state directory of `cocoon up`.")]
Name = Annotated[str, typer.Option("--name", help="The node whose wallet acts (as in `cocoon up`: client-1...).")]


def parse_ton(text: str) -> int:
    """'1.5' -> 1_500_000_000 nanoTON, exactly; at most 9 decimals."""
    try:
        return nanoton(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


DEVNET_INFO = Path("chain") / "devnet.json"  # written by `cocoon chain serve` in its directory


class Chain:
    """The network's chain as this command reaches it: its ledger, its clock, and a test network's privilege of
    moving that clock."""

    def __init__(self, state_dir: Path) -> None:
        info_path = state_dir / DEVNET_INFO
        self.url: str | None = None
        self.where = str(ledger_path(state_dir))
        if info_path.exists():
            info = json.loads(info_path.read_text())
            self.url, self.where = info["url"], info["api"]
            try:
                self.ledger: OnChainLedger = TonLedger(info["root"], ToncenterTransport(info["api"], attempts=2),
                                                       sync_s=3600)
            except LedgerError as exc:
                typer.echo(f"error: the chain of {state_dir} does not answer at {info['api']} (is `cocoon up` "
                           f"running?): {exc}", err=True)
                raise typer.Exit(2) from None
        elif ledger_path(state_dir).exists():
            self.ledger = LocalLedger(ledger_path(state_dir))
        else:
            typer.echo(f"error: no local ledger in {state_dir} (start `cocoon up` first)", err=True)
            raise typer.Exit(2)

    def now(self) -> int:
        if isinstance(self.ledger, LocalLedger):
            return self.ledger.chain.now()
        return int(devnet_call(str(self.url), "info")["now"])

    def advance(self, seconds: int) -> int:
        if isinstance(self.ledger, LocalLedger):
            return self.ledger.advance(seconds)
        return int(devnet_call(str(self.url), "advance", {"seconds": seconds})["now"])


def _open(state_dir: Path) -> OnChainLedger:
    return Chain(state_dir).ledger


def _vouchers(state_dir: Path, name: str) -> Path:
    return vouchers_path(node_dir(state_dir, name), name)


def _proxy_of(ledger: OnChainLedger, state_dir: Path, name: str) -> RegisteredProxy:
    """The registered proxy that node `name` dials (its config's `proxy`)."""
    config = state_dir / f"{name}.toml"
    try:
        endpoint = tomllib.loads(config.read_text())["proxy"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        typer.echo(f"error: {config} names no proxy: is {name!r} a client or worker of `cocoon up`?", err=True)
        raise typer.Exit(2) from None
    return ledger.find_proxy(endpoint)


def _open_wallet(state_dir: Path, name: str) -> Wallet:
    """Node `name`'s wallet, unsealed; ValueError (KeysUnavailable, SealedFileError, AttestationError...) saying
    why it cannot be."""
    return operator_keys(state_dir, name).wallet()


def _wallet(state_dir: Path, name: str) -> Wallet:
    try:
        return _open_wallet(state_dir, name)
    except (ValueError, AttestationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _client(state_dir: Path, name: str) -> tuple[OnChainLedger, ClientPurse]:
    ledger = _open(state_dir)
    proxy = _proxy_of(ledger, state_dir, name)
    purse = ClientPurse(ledger, _wallet(state_dir, name), proxy.address, VoucherBook(_vouchers(state_dir, name)))
    return ledger, purse


def _run(action: str, op: object) -> None:
    try:
        outcome = op()  # type: ignore[operator]
    except LedgerError as exc:
        typer.echo(f"error: {action}: {exc}", err=True)
        raise typer.Exit(1) from None
    fees = getattr(outcome, "fees", None)
    typer.echo(f"{action}: done" + (f" (chain fees {ton(fees)} TON)" if fees is not None else ""))


@app.command()
def status(state_dir: StateDir = Path(".cocoon")) -> None:
    """The chain, the registry, every proxy contract and every party's wallet, channel and vouchers."""
    chain = Chain(state_dir)
    ledger = chain.ledger
    now = chain.now()
    params = ledger.refresh()
    p, t = params.prices, params.terms
    typer.echo(f"chain {chain.where}  time {datetime.datetime.fromtimestamp(now, datetime.UTC):%F %T}Z"
               f"  root {ledger.root}  version {params.version}")
    typer.echo(f"prices (nanoTON/token): client {p.price_per_token}, worker {p.worker_fee_per_token}; multipliers "
               f"(‰) prompt {p.prompt_multiplier}, cached {p.cached_multiplier}, completion "
               f"{p.completion_multiplier}, reasoning {p.reasoning_multiplier}")
    typer.echo(f"terms: client close delay {t.client_close_delay} s, proxy close delay {t.proxy_close_delay} s, "
               f"min client stake {ton(t.min_client_stake)} TON, min proxy stake {ton(t.min_proxy_stake)} TON")
    for entry in ledger.proxies():
        s = ledger.proxy_state(entry.address)
        typer.echo(f"proxy {entry.address} at {entry.endpoint}: {s.status}, stake {ton(s.stake)} TON, earned "
                   f"{ton(s.earned)} TON, paid out {ton(s.paid_out)} TON, {s.open_clients} open channel(s), "
                   f"commit #{s.commit_seqno}")
    for path in sorted([*state_dir.glob(f"*.{WALLET}"), *state_dir.glob(f"*/*.{WALLET}")]):
        name = path.name.removesuffix(f".{WALLET}")
        try:
            wallet = _open_wallet(state_dir, name)
        except (ValueError, AttestationError) as exc:
            typer.echo(f"{name}: wallet not opened: {exc}")
            continue
        typer.echo(f"{name}: wallet {wallet.address} {ton(ledger.balance(wallet.address))} TON")
        if not (state_dir / f"{name}.toml").exists() or not _vouchers(state_dir, name).exists():
            continue
        try:
            proxy = _proxy_of(ledger, state_dir, name)
        except LedgerError:
            continue
        book = VoucherBook(_vouchers(state_dir, name))
        if name.startswith("client"):
            purse = ClientPurse(ledger, wallet, proxy.address, book)
            c = purse.state()
            typer.echo(f"  channel {c.address} ({c.state}): balance {ton(c.balance)} TON (stake {ton(c.stake)}), "
                       f"charged {ton(purse.charged)} TON by vouchers, {ton(c.charged)} TON on chain")
        else:
            worker = WorkerPurse(ledger, wallet, proxy.address, book, redeem_threshold=0)
            typer.echo(f"  worker channel {worker.channel}: earned {ton(worker.earned)} TON by vouchers, "
                       f"redeemed {ton(worker.redeemed())} TON")


@app.command()
def deposit(amount: Annotated[str, typer.Argument(help="TON to add to the channel.")],
            stake: Annotated[str, typer.Option(help="TON of it to add to the stake.")] = "0",
            name: Name = "client-1", state_dir: StateDir = Path(".cocoon")) -> None:
    """Top up the client's channel with its proxy (opening it if it has none)."""
    ledger, purse = _client(state_dir, name)
    nano, stake_nano = parse_ton(amount), parse_ton(stake)
    if purse.state().state == "new":
        _run("open channel", lambda: ledger.open_channel(purse.wallet, purse.proxy, nano, stake_nano, purse.nonce))
    else:
        _run("deposit", lambda: ledger.deposit(purse.wallet, purse.channel, nano, stake_nano))


@app.command()
def withdraw(amount: Annotated[str, typer.Argument(help="TON to take back (only what is above the stake).")],
             name: Name = "client-1", state_dir: StateDir = Path(".cocoon")) -> None:
    """Take money back from the client's channel to its wallet."""
    ledger, purse = _client(state_dir, name)
    _run("withdraw", lambda: ledger.withdraw(purse.wallet, purse.channel, parse_ton(amount)))


@app.command()
def close(name: Name = "client-1", state_dir: StateDir = Path(".cocoon")) -> None:
    """Close the client's channel without the proxy: the first call starts the close delay, a call after it
    refunds everything left (balance and stake) to the wallet."""
    chain = Chain(state_dir)
    ledger, purse = _client(state_dir, name)
    state = purse.state()
    if state.state == "open":
        _run("request close", lambda: ledger.request_close(purse.wallet, purse.channel))
        state = purse.state()
        typer.echo(f"the channel can be finalized after {state.unlock_at - chain.now()} s: run this again")
    elif state.state == "closing":
        if chain.now() < state.unlock_at:
            typer.echo(f"the close delay ends in {state.unlock_at - chain.now()} s")
            raise typer.Exit(1)
        _run("finalize close", lambda: ledger.finalize_close(purse.wallet, purse.channel))
    else:
        typer.echo(f"the channel is {state.state}: nothing to close")
        raise typer.Exit(1)


@app.command()
def advance(seconds: Annotated[int, typer.Argument(min=1, help="Seconds to move chain time forward.")],
            state_dir: StateDir = Path(".cocoon")) -> None:
    """Move the local chain's clock forward (a test network's privilege: close delays pass at once)."""
    now = Chain(state_dir).advance(seconds)
    typer.echo(f"chain time is now {datetime.datetime.fromtimestamp(now, datetime.UTC):%F %T}Z")


@app.command()
def redeem(name: Name = "worker-1", state_dir: StateDir = Path(".cocoon")) -> None:
    """Redeem the worker's latest payout voucher on chain, whatever its amount."""
    ledger = _open(state_dir)
    proxy = _proxy_of(ledger, state_dir, name)
    worker = WorkerPurse(ledger, _wallet(state_dir, name), proxy.address, VoucherBook(_vouchers(state_dir, name)),
                         redeem_threshold=0)  # whatever its amount
    if worker.vouchers.latest(worker.channel, Tag.PAYOUT) is None:
        typer.echo("no payout voucher yet")
        raise typer.Exit(1)
    before = ledger.balance(worker.wallet.address)
    _run("redeem", lambda: worker.redeem_if_due(force=True))
    typer.echo(f"wallet change {ton(ledger.balance(worker.wallet.address) - before)} TON; redeemed "
               f"{ton(worker.redeemed())} TON of {ton(worker.earned)} TON earned")


@app.command()
def dispute(name: Name = "client-1", state_dir: StateDir = Path(".cocoon"),
            request_id: Annotated[str | None, typer.Option(help="Only this request's charge (the vouchers' totals "
                                                                 "are still given).")] = None,
            out: Annotated[Path | None, typer.Option(help="Write the evidence here (default: standard output).")
                           ] = None) -> None:
    """Export the evidence for a contested charge: per channel, the newest charge voucher, every charge the client
    saw with the receipt backing it, and the amount no receipt backs (JSON)."""
    import json

    from cocoon.client.receipts import ReceiptBook, dispute_evidence, receipts_path

    home = node_dir(state_dir, name)
    path = receipts_path(home, name)
    if not path.exists() or not _vouchers(state_dir, name).exists():
        typer.echo(f"error: {name} keeps no receipts and vouchers in {home} (a client with payments on does)",
                   err=True)
        raise typer.Exit(2)
    book, vouchers = ReceiptBook(path), VoucherBook(_vouchers(state_dir, name))
    try:
        channels = dispute_evidence(book, vouchers, request_id)
    finally:
        book.close()
        vouchers.close()
    if request_id is not None and not channels:
        typer.echo(f"error: {name} saw no charge for request {request_id}", err=True)
        raise typer.Exit(1)
    evidence = json.dumps({"client": name, "channels": channels}, indent=1)
    if out is not None:
        out.write_text(evidence + "\n")
    else:
        typer.echo(evidence)
    for ch in channels:  # the summary goes where it does not mix with the JSON
        voucher = ch["voucher"]
        typer.echo(f"channel {ch['channel']}: voucher #{voucher['seqno'] if voucher else '-'} charges "
                   f"{ton(voucher['amount_nanoton'] if voucher else 0)} TON; receipts back "
                   f"{ton(ch['backed_nanoton'])} TON, broken streams {ton(ch['broken_stream_nanoton'])} TON; "
                   f"contested {ton(ch['contested_nanoton'])} TON", err=out is None)
