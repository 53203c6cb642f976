"""The ledger interface the proxy, workers and clients use; backends: local (embedded), ton (later)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import msgspec

from cocoon.config import Prices


class RootParams(msgspec.Struct, frozen=True):
    """The root registry's parameters that the hot path needs (DESIGN §3)."""

    version: int
    prices: Prices


class Ledger(ABC):
    @abstractmethod
    def root_params(self) -> RootParams:
        """The registry as last seen (cached: never a network round trip on the request path)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections."""
