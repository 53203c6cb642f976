"""Choosing a worker for a request: expected latency, probation for newcomers, benching for failures.

Workers are grouped by (model, tool support, region): a worker whose engine handles tools and structured output
also sits in the plain group of its model, so requests using those features only ever reach it, and plain
requests reach every worker. Each group keeps two rank indices: workers still on probation,
ranked by how often they were tried (the least tried first), and established workers, ranked by their
expected latency (moving time-to-first-token and per-token estimates, success rate and current load).
A worker that is full, benched or excluded scores infinity and is skipped by the index itself, so a choice costs
O(log n) per region asked, whatever the number of workers; a request that only a few named workers may take (a
sealed one: those holding a key it was sealed to) is chosen among those alone, in O(their number). A share of the
choices (`probation_share`) goes to probation first, so that newcomers get measured without displacing proven
workers. Time to first token is measured at the proxy and so includes the network path: with no region asked, near
workers win.

Time comes from `clock`, so a simulation can drive this exact code (bench/sim_network.py).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from cocoon.config import SelectionConfig, SpotCheckConfig
from cocoon.proxy.rankindex import RankIndex, RankNode
from cocoon.proxy.reputation import Reputation, ReputationBook
from cocoon.proxy.spotcheck import SpotEvidence
from cocoon.wire.messages import WorkerParams


class Selectable(Protocol):
    key: str  # hex public key: what reputation is kept by
    name: str
    params: WorkerParams


W = TypeVar("W", bound=Selectable)


@dataclass(eq=False)
class _Entry(Generic[W]):
    worker: W
    rep: Reputation
    probation: bool
    active: int = 0
    benched: bool = False
    excluded: bool = False
    nodes: list[tuple[RankIndex[_Entry[W]], RankNode[_Entry[W]]]] = field(default_factory=list)


@dataclass(eq=False)
class _Group(Generic[W]):
    ranked: RankIndex[_Entry[W]]
    probation: RankIndex[_Entry[W]]

    def lane(self, probation: bool) -> RankIndex[_Entry[W]]:
        return self.probation if probation else self.ranked


def _group_keys(params: WorkerParams) -> list[tuple[str, bool]]:
    capabilities = (False, True) if params.supports_tools else (False,)
    return [(model, tools) for model in dict.fromkeys(params.served) for tools in capabilities]


def _fits(model: str, region: str, max_coefficient: int | None, tools: bool) -> Callable[[WorkerParams], bool]:
    """Whether a worker's params put it in a group a request asking for these may be routed to (`_groups_for`)."""

    def fits(params: WorkerParams) -> bool:
        return ((model, tools) in _group_keys(params) and (not region or params.region == region)
                and (max_coefficient is None or params.coefficient <= max_coefficient))

    return fits


def _best_in(groups: list[_Group[W]], probation: bool, max_coefficient: int | None) -> _Entry[W] | None:
    """The lowest-scored available entry of one lane across `groups`, within the price cap."""
    best: RankNode[_Entry[W]] | None = None
    for group in groups:
        node = group.lane(probation).best(max_coefficient)
        if node is not None and (best is None or node.score < best.score):
            best = node
    return best.item if best is not None else None


class Selector(Generic[W]):
    def __init__(self, cfg: SelectionConfig, reputations: ReputationBook, *,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.reputations = reputations
        self.clock = clock
        self._rng = rng or random.Random()
        self._entries: dict[W, _Entry[W]] = {}
        self._groups: dict[tuple[str, bool], dict[str, _Group[W]]] = {}  # (model, tools) → region → group
        self._benched: list[tuple[float, int, _Entry[W]]] = []  # heap by bench end
        self._seq = itertools.count()
        self._probation_credit = 0.0

    # -- membership ----------------------------------------------------------------------------------------
    def add(self, worker: W) -> Reputation:
        now = self.clock()
        rep = self.reputations.attach(worker.key, worker.name, now)
        entry = _Entry(worker, rep, probation=rep.on_probation(self.cfg))
        if rep.benched_until > now:  # benched before it reconnected: the bench still holds
            self._bench(entry)
        self._entries[worker] = entry
        self._place(entry)
        return rep

    def remove(self, worker: W) -> None:
        entry = self._entries.pop(worker, None)
        if entry is None:
            return
        for index, node in entry.nodes:
            index.remove(node)
        region = worker.params.region
        for key in _group_keys(worker.params):
            regions = self._groups[key]
            group = regions[region]
            if not group.ranked and not group.probation:
                del regions[region]
            if not regions:
                del self._groups[key]
        self.reputations.detach(entry.rep, self.clock())

    def _place(self, entry: _Entry[W]) -> None:
        """Put the entry in its lane (probation or ranked) of the group of each model it serves."""
        params = entry.worker.params
        score = self._score(entry)
        entry.nodes = []
        for key in _group_keys(params):
            regions = self._groups.setdefault(key, {})
            group = regions.get(params.region)
            if group is None:
                group = regions[params.region] = _Group(RankIndex(self._rng), RankIndex(self._rng))
            index = group.lane(entry.probation)
            entry.nodes.append((index, index.insert(entry, params.coefficient, score)))

    # -- choosing ------------------------------------------------------------------------------------------
    def serves(self, model: str, region: str = "", max_coefficient: int | None = None, tools: bool = False
               ) -> bool:
        """Whether any connected worker could take this request at all (busy and benched ones count)."""
        for group in self._groups_for(model, region, tools):
            for index in (group.ranked, group.probation):
                cheapest = index.cheapest_price()
                if cheapest is not None and (max_coefficient is None or cheapest <= max_coefficient):
                    return True
        return False

    def choose(self, model: str, region: str = "", max_coefficient: int | None = None,
               exclude: Iterable[W] = (), tools: bool = False, only: Collection[W] | None = None) -> W | None:
        """The best available worker, now counted as busy with this request; None when none is free. With `only`,
        the best of those workers (a sealed request's candidates: the few holding a key it was sealed to), found
        among them alone, so that the choice costs O(len(only)) rather than marking every other worker."""
        self._end_benches()
        if only is not None:
            entries = [e for e in (self._entries.get(w) for w in only) if e is not None]
            fits = _fits(model, region, max_coefficient, tools)
            entry = self._pick(lambda probation: self._best_among(entries, probation, fits, exclude))
        else:
            groups = self._groups_for(model, region, tools)
            if not groups:
                return None
            masked = [e for e in (self._entries.get(w) for w in exclude) if e is not None]
            for entry in masked:
                entry.excluded = True
                self._refresh(entry)
            try:
                entry = self._pick(lambda probation: _best_in(groups, probation, max_coefficient))
            finally:
                for e in masked:
                    e.excluded = False
                    self._refresh(e)
        if entry is None:
            return None
        entry.active += 1
        self._refresh(entry)
        return entry.worker

    def _pick(self, best: Callable[[bool], _Entry[W] | None]) -> _Entry[W] | None:
        """The entry `best` finds in the lane whose turn it is (probation or ranked), else in the other one."""
        share = self.cfg.probation_share
        probation_turn = self._probation_credit + share >= 1.0 - 1e-9
        for probation in (probation_turn, not probation_turn):
            entry = best(probation)
            if entry is not None:
                # credit accrues per choice made; a probation turn taken spends one whole choice of it
                self._probation_credit = min(self._probation_credit + share, 1.0)
                if probation and probation_turn:
                    self._probation_credit -= 1.0
                return entry
        return None

    def _best_among(self, entries: list[_Entry[W]], probation: bool, fits: Callable[[WorkerParams], bool],
                    exclude: Iterable[W]) -> _Entry[W] | None:
        """The lowest-scored available entry of `entries` in the given lane that `fits`, cheapest first on ties
        (as a rank index orders them)."""
        skip = set(exclude)
        best: _Entry[W] | None = None
        best_rank = (math.inf, 0)
        for entry in entries:
            if entry.probation is not probation or entry.worker in skip or not fits(entry.worker.params):
                continue
            rank = (self._score(entry), entry.worker.params.coefficient)
            if rank[0] < math.inf and rank < best_rank:
                best, best_rank = entry, rank
        return best

    def _groups_for(self, model: str, region: str, tools: bool) -> list[_Group[W]]:
        regions = self._groups.get((model, tools))
        if not regions:
            return []
        if region:
            group = regions.get(region)
            return [group] if group is not None else []
        return list(regions.values())

    def release(self, worker: W) -> None:
        """The request chosen for `worker` is over (whatever its outcome)."""
        entry = self._entries.get(worker)
        if entry is not None:
            entry.active -= 1
            self._refresh(entry)

    # -- learning ------------------------------------------------------------------------------------------
    def record_stream(self, worker: W, ttft_ms: float, generation_ms: float, tokens: int) -> None:
        self._learn(worker, lambda rep: rep.record_stream(ttft_ms, generation_ms, tokens))

    def record_whole(self, worker: W, total_ms: float, tokens: int) -> None:
        self._learn(worker, lambda rep: rep.record_whole(total_ms, tokens))

    def record_failure(self, worker: W) -> None:
        """A failure the worker caused (lost link, stall, server error); repeated ones bench it."""
        self._learn(worker, lambda rep: rep.record_failure(self.clock(), self.cfg))

    def record_misreport(self, worker: W) -> None:
        """The worker reported usage beyond its request's bounds: benched at once (reputation.py)."""
        self._learn(worker, lambda rep: rep.record_misreport(self.clock(), self.cfg))

    def record_spot_check(self, worker: W, verdict: str, evidence: SpotEvidence | None, blamed: bool,
                          cfg: SpotCheckConfig) -> None:
        """A spot check the worker took part in; repeated blame benches it (reputation.py)."""
        self._learn(worker, lambda rep: rep.record_spot_check(verdict, evidence, blamed, self.clock(), cfg))

    def _learn(self, worker: W, update: Callable[[Reputation], bool | None]) -> None:
        entry = self._entries.get(worker)
        # a worker whose link broke mid-request is gone from the groups, but its reputation is kept by key
        rep = entry.rep if entry is not None else self.reputations.get(worker.key)
        if rep is None:
            return
        benched = update(rep)
        if entry is not None:
            if benched:
                self._bench(entry)
            self._refresh(entry)

    def _bench(self, entry: _Entry[W]) -> None:
        entry.benched = True
        heapq.heappush(self._benched, (entry.rep.benched_until, next(self._seq), entry))

    def _end_benches(self) -> None:
        if not self._benched:
            return
        now = self.clock()
        while self._benched and self._benched[0][0] <= now:
            _, _, entry = heapq.heappop(self._benched)
            if entry.benched and entry.rep.benched_until <= now:
                entry.benched = False
                if self._entries.get(entry.worker) is entry:
                    self._refresh(entry)

    # -- scores --------------------------------------------------------------------------------------------
    def _score(self, entry: _Entry[W]) -> float:
        max_active = entry.worker.params.max_active_requests
        if entry.excluded or entry.benched or entry.active >= max_active:
            return math.inf
        rep = entry.rep
        if entry.probation:
            return float(rep.answered + rep.failed + entry.active)  # the least tried newcomer first
        return rep.expected_ms(entry.active, max_active, self.cfg)

    def _refresh(self, entry: _Entry[W]) -> None:
        if entry.probation and not entry.rep.on_probation(self.cfg):
            entry.probation = False  # graduated: ranked by its measured latency from now on
            for index, node in entry.nodes:
                index.remove(node)
            self._place(entry)
            return
        score = self._score(entry)
        for index, node in entry.nodes:
            index.update(node, score)

    # -- views ---------------------------------------------------------------------------------------------
    def active(self, worker: W) -> int:
        entry = self._entries.get(worker)
        return entry.active if entry is not None else 0

    def describe(self, worker: W) -> dict[str, Any]:
        entry = self._entries[worker]
        expected = entry.rep.expected_ms(entry.active, worker.params.max_active_requests, self.cfg)
        return {"active": entry.active, "probation": entry.probation, "benched": entry.benched,
                "expected_ms": round(expected, 2) if expected < math.inf else None}
