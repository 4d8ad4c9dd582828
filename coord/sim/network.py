"""A seeded, in-memory network for deterministic protocol simulations.

Generic over the message type and node ids, so Raft, 2PC and mutex
simulators share it.  Time is an integer tick count supplied by the caller.

Faults it injects, all drawn from the one injected `random.Random`:
* drop (each message lost with probability `drop`),
* duplicate (a second copy with its own delay, probability `duplicate`),
* delay in [min_delay, max_delay] ticks, which also reorders messages,
* partitions: a set of blocked directed links, so asymmetric partitions
  (a can reach b, b cannot reach a) are just one blocked direction.

Invariants: a message is delivered at most (1 + duplicates) times, never
before its send tick + min_delay, and never over a link blocked at delivery
time (a partition also swallows messages already in flight); the delivery
order for a given seed and call sequence is always the same.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Msg = TypeVar("Msg")
Node = TypeVar("Node", bound=Hashable)


@dataclass(frozen=True, slots=True)
class NetConfig:
    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability a message is delivered twice
    min_delay: int = 1  # ticks
    max_delay: int = 1

    def validate(self) -> NetConfig:
        if not (0 <= self.drop < 1 and 0 <= self.duplicate < 1):
            raise ValueError(f"drop/duplicate must be probabilities in [0, 1): {self}")
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError(f"need 0 <= min_delay <= max_delay: {self}")
        return self


@dataclass(slots=True)
class NetStats:
    sent: int = 0
    dropped: int = 0  # lost by the drop probability
    blocked: int = 0  # lost to a partition or a down node
    duplicated: int = 0
    delivered: int = 0


@dataclass(slots=True)
class SimNetwork(Generic[Node, Msg]):
    rng: random.Random
    config: NetConfig = field(default_factory=NetConfig)
    stats: NetStats = field(default_factory=NetStats)
    blocked: set[tuple[Node, Node]] = field(default_factory=set)  # directed (src, dst)
    _queue: list[tuple[int, int, Node, Node, Msg]] = field(default_factory=list)
    _seq: int = 0  # tie-breaker: FIFO among messages due in the same tick

    def send(self, now: int, src: Node, dst: Node, msg: Msg) -> None:
        self.stats.sent += 1
        if (src, dst) in self.blocked:
            self.stats.blocked += 1
            return
        cfg, rng = self.config, self.rng
        if cfg.drop and rng.random() < cfg.drop:
            self.stats.dropped += 1
            return
        copies = 2 if cfg.duplicate and rng.random() < cfg.duplicate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            delay = cfg.min_delay
            if cfg.max_delay > cfg.min_delay:
                delay += int(rng.random() * (cfg.max_delay - cfg.min_delay + 1))
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, src, dst, msg))

    def due(self, now: int) -> list[tuple[Node, Node, Msg]]:
        """Pop every message due at or before `now` that may still cross its link."""
        out: list[tuple[Node, Node, Msg]] = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, _, src, dst, msg = heapq.heappop(queue)
            if (src, dst) in self.blocked:
                self.stats.blocked += 1
                continue
            out.append((src, dst, msg))
        self.stats.delivered += len(out)
        return out

    def in_flight(self) -> int:
        return len(self._queue)

    # -- partitions ---------------------------------------------------------
    def partition(self, groups: Iterable[Iterable[Node]]) -> None:
        """Block every link between different groups (both directions)."""
        sets = [set(g) for g in groups]
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                for x in a:
                    for y in b:
                        self.blocked.add((x, y))
                        self.blocked.add((y, x))

    def block(self, src: Node, dst: Node) -> None:
        """Asymmetric fault: src can no longer reach dst (dst may still reach src)."""
        self.blocked.add((src, dst))

    def heal(self) -> None:
        self.blocked.clear()
