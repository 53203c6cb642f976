"""The live worker links: who is connected and which models the network serves or served recently."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from cocoon.wire.connection import Connection
from cocoon.wire.messages import MEDIA_WORKLOAD, MediaParams, ModelInfo, WorkerParams

# A model seen recently but with no worker right now is "temporarily unavailable" (503), not unknown (404).
MODEL_MEMORY_S = 3600.0


@dataclass(eq=False)
class WorkerLink:
    conn: Connection
    params: WorkerParams
    key: str  # hex public key: stable across reconnects
    name: str
    connected_at: float = field(default_factory=time.time)
    seal_key_id: bytes = b""  # the key id of the HPKE key in its attested claims, that requests are sealed to


class WorkerRegistry:
    def __init__(self) -> None:
        self._links: set[WorkerLink] = set()
        self._serving: dict[str, int] = {}  # model → connected workers
        self._last_seen: dict[str, float] = {}
        self._by_seal_key: dict[bytes, list[WorkerLink]] = {}  # HPKE key id → the links holding it (one, usually)

    def add(self, link: WorkerLink) -> None:
        self._links.add(link)
        if link.seal_key_id:
            self._by_seal_key.setdefault(link.seal_key_id, []).append(link)
        for model in link.params.served:
            self._serving[model] = self._serving.get(model, 0) + 1
            self._last_seen[model] = time.time()

    def remove(self, link: WorkerLink) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        holders = self._by_seal_key.get(link.seal_key_id)
        if holders is not None:
            holders.remove(link)
            if not holders:
                del self._by_seal_key[link.seal_key_id]
        for model in link.params.served:
            self._serving[model] -= 1
            if not self._serving[model]:
                del self._serving[model]
            self._last_seen[model] = time.time()

    def workers(self) -> list[WorkerLink]:
        return list(self._links)

    def __len__(self) -> int:
        return len(self._links)

    def holding(self, key_ids: Iterable[bytes]) -> tuple[WorkerLink, ...]:
        """The linked workers holding one of these HPKE key ids (a sealed request's candidates), without going
        through every worker."""
        return tuple(link for key_id in key_ids for link in self._by_seal_key.get(key_id, ()))

    def knows(self, model: str) -> bool:
        seen = self._last_seen.get(model)
        return model in self._serving or (seen is not None and time.time() - seen < MODEL_MEMORY_S)

    def certificates(self, model: str, limit: int) -> list[bytes]:
        """The certificates of at most `limit` workers serving `model` that hold a key to seal to, picked at random
        each time, so that clients sealing to a few candidates spread their requests over every worker."""
        holders = [link for link in self._links if model in link.params.served and link.seal_key_id]
        return [link.conn.stream.peer_der for link in random.sample(holders, min(limit, len(holders)))]

    def models(self, active: Callable[[WorkerLink], int]) -> list[ModelInfo]:
        """Each served model with its worker count and free slots (`active`: requests a worker is running)."""
        free: dict[str, int] = dict.fromkeys(self._serving, 0)
        for link in self._links:
            slots = max(link.params.max_active_requests - active(link), 0)
            for model in link.params.served:
                free[model] += slots
        # the media workload is routed like a model but is none: its workers are counted by `media_workers`
        return [ModelInfo(id=m, workers=self._serving[m], free_slots=free[m]) for m in sorted(self._serving)
                if m != MEDIA_WORKLOAD]

    def media_workers(self) -> int:
        return self._serving.get(MEDIA_WORKLOAD, 0)

    def media(self) -> list[MediaParams]:
        """What the connected workers serving the media workload can do, each distinct announcement once."""
        distinct = {msgspec.msgpack.encode(link.params.media): link.params.media for link in self._links
                    if link.params.media is not None}
        return list(distinct.values())
