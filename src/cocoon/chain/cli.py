"""`cocoon chain serve` and `cocoon chain faucet`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_PORT = 10090
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
INFO_FILE = "devnet.json"

app = typer.Typer(help="A devnet serving the toncenter-v2 HTTP API: cocoon's contracts and standard wallets in the "
                       "TVM emulator, a block every interval, a faucet.", no_args_is_help=True)


@app.command()
def serve(
    state_dir: Annotated[Path, typer.Option(help="The chain's own directory (created; reused when it holds one).")
                         ] = Path(".cocoon/chain"),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one; see devnet.json).")
                    ] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    block_interval: Annotated[float, typer.Option(min=0.01, help="Seconds between blocks; messages sent execute at "
                                                                 "the next one.")] = 1.0,
    owner_key: Annotated[str | None, typer.Option(help="Hex Ed25519 public key whose standard wallet v4r2 owns the "
                                                       "root registry and signs its log: handed over at the first "
                                                       "start that names it.")] = None,
) -> None:
    """Serve the devnet at http://HOST:PORT/api/v2 until Ctrl-C or SIGTERM; writes STATE_DIR/devnet.json (url, root,
    global id, pid) once it listens."""
    from aiohttp import web

    from cocoon.chain.api import make_app, produce_blocks
    from cocoon.chain.devnet import Devnet
    from cocoon.ledger.base import LedgerError
    from cocoon.runtime import JsonFormatter, run_until_signal

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter("chain", "devnet"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)
    try:
        devnet = Devnet(state_dir, owner_key=bytes.fromhex(owner_key) if owner_key is not None else None)
    except (OSError, LedgerError, ValueError) as exc:
        typer.echo(f"error: the devnet in {state_dir} cannot start: {exc}", err=True)
        raise typer.Exit(1) from None

    async def main(stop: asyncio.Event) -> None:
        runner = web.AppRunner(make_app(devnet, block_interval), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise typer.Exit(_fail(f"cannot listen on {host}:{port}: {exc}")) from None
        url = f"http://{host}:{runner.addresses[0][1]}"
        info = {"url": url, "api": f"{url}/api/v2", "root": devnet.root, "global_id": devnet.chain.global_id,
                "owner": devnet.ledger.root_owner_address(),
                "faucet": devnet.faucet.address, "block_interval_s": block_interval, "pid": os.getpid()}
        (state_dir / INFO_FILE).write_text(json.dumps(info))
        typer.echo(f"chain serving {url}/api/v2 (root {devnet.root}, a block every {block_interval} s)", err=True)
        blocks = asyncio.create_task(produce_blocks(devnet, block_interval, stop))
        stopped = asyncio.create_task(stop.wait())
        try:
            # a block producer that fails ends the process (an API without blocks would hang every sender)
            await asyncio.wait([blocks, stopped], return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            await blocks
        finally:
            stopped.cancel()
            await runner.cleanup()

    try:
        run_until_signal(main)
    finally:
        devnet.close()


def _fail(message: str) -> int:
    typer.echo(f"error: {message}", err=True)
    return 1


@app.command()
def faucet(
    address: Annotated[str, typer.Argument(help="The address to fund (raw or user-friendly; deployed or not).")],
    amount: Annotated[str, typer.Argument(help="TON, up to 9 decimals (1.5 = 1,500,000,000 nanoTON).")],
    url: Annotated[str, typer.Option(help="The running devnet.")] = DEFAULT_URL,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the block that pays.")] = 30.0,
) -> None:
    """Fund ADDRESS with AMOUNT TON from a running devnet's faucet; waits for the block that pays it."""
    from cocoon.ledger.base import LedgerError
    from cocoon.ledger.devnet import faucet as pay
    from cocoon.ledger.vouchers import nanoton, ton

    try:
        nano = nanoton(amount)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="AMOUNT") from None
    try:
        balance = pay(url, address, nano, timeout_s=timeout)
    except LedgerError as exc:
        raise typer.Exit(_fail(str(exc))) from None
    typer.echo(f"funded {address} with {ton(nano)} TON; its balance is {ton(balance)} TON")
