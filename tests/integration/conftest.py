from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netutil import Net, localnet


@pytest.fixture(scope="module")
def fake_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """`cocoon up --engine fake --workers 2`: real processes, real sockets, deterministic answers."""
    state: Path = tmp_path_factory.mktemp("fakenet") / "state"
    with localnet(state, engine="fake", workers=2, options=("reply_tokens=12",)) as net:
        yield net
