"""The live worker registry: who is connected, what they serve, how busy they are."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from cocoon.wire.connection import Connection
from cocoon.wire.messages import ModelInfo, WorkerParams

# A model seen recently but with no worker right now is "temporarily unavailable" (503), not unknown (404).
MODEL_MEMORY_S = 3600.0


@dataclass(eq=False)
class WorkerLink:
    conn: Connection
    params: WorkerParams
    key: str  # hex public key: stable across reconnects
    name: str
    active: int = 0
    served: int = 0
    failed: int = 0
    connected_at: float = field(default_factory=time.time)

    @property
    def free_slots(self) -> int:
        return max(self.params.max_active_requests - self.active, 0)


class WorkerRegistry:
    def __init__(self) -> None:
        self._by_model: dict[str, list[WorkerLink]] = {}
        self._last_seen: dict[str, float] = {}

    def add(self, link: WorkerLink) -> None:
        for model in link.params.models:
            self._by_model.setdefault(model, []).append(link)
            self._last_seen[model] = time.time()

    def remove(self, link: WorkerLink) -> None:
        for model in link.params.models:
            links = self._by_model.get(model, [])
            if link in links:
                links.remove(link)
            if not links:
                self._by_model.pop(model, None)
            self._last_seen[model] = time.time()

    def workers(self) -> list[WorkerLink]:
        return list({id(w): w for links in self._by_model.values() for w in links}.values())

    def knows(self, model: str) -> bool:
        seen = self._last_seen.get(model)
        return model in self._by_model or (seen is not None and time.time() - seen < MODEL_MEMORY_S)

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, workers=len(links), free_slots=sum(w.free_slots for w in links))
                for m, links in sorted(self._by_model.items())]

    def select_worker(self, model: str, max_coefficient: int | None) -> WorkerLink | None:
        """The least loaded eligible worker (fraction of its slots in use); ties broken at random."""
        best: list[WorkerLink] = []
        best_load = 2.0
        for link in self._by_model.get(model, ()):
            if link.free_slots == 0 or link.conn.closed:
                continue
            if max_coefficient is not None and link.params.coefficient > max_coefficient:
                continue
            load = link.active / link.params.max_active_requests
            if load < best_load:
                best, best_load = [link], load
            elif load == best_load:
                best.append(link)
        return random.choice(best) if best else None
