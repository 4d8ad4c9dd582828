"""Vocabulary shared by the three mutual-exclusion cores: ids, epochs, grants,
configuration, effects and the interfaces a core is driven through.

Invariants these types carry:

* A `Grant` is a lease: its holder may act on the protected resource only
  while `now < expires_at` on its own clock, and must present `token` with
  every action.  `expires_at` is computed from an instant *before* the grant
  could have been issued (the holder's own request or token pass), minus
  `epsilon`, so the holder's view of the lease ends before anyone else's
  view of it (see docs/mutex.md, "Why leases").
* Fencing tokens grow with the order in which grants are issued, within an
  algorithm's own rules; `Epoch` (number, owner) is totally ordered and goes
  into the high bits of every token, so a token issued in a later epoch beats
  every token of an earlier one.
* Instants (`now`, `expires_at`) are local-clock seconds (ticks in the
  simulator) and never cross the network; only durations do.
* Effects are plain data; a core never performs I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NewType, Protocol

from coord.lease.types import FencingToken

NodeId = NewType("NodeId", int)  # > 0; also the priority in ties and elections
LockName = NewType("LockName", str)

EPOCH_BITS = 40  # low bits of a fencing token: the sequence within an epoch
OWNER_SPAN = 1 << 12  # node ids are < 4096 (they share the epoch's bits)


class MutexConfigError(ValueError):
    """A configuration whose fields contradict each other."""


@dataclass(frozen=True, slots=True, order=True)
class Epoch:
    """A coordinator's or a token's generation: (number, owner), compared as a pair."""

    number: int
    owner: int  # the node that started it (0 for the configured initial epoch)

    def next_for(self, node: NodeId) -> Epoch:
        return Epoch(self.number + 1, int(node))

    def token(self, seq: int) -> FencingToken:
        """A fencing token of this epoch; later epochs always give larger tokens."""
        if not 0 <= seq < (1 << EPOCH_BITS) or not 0 <= self.owner < OWNER_SPAN:
            raise ValueError(f"token out of range: epoch {self} seq {seq}")
        return FencingToken(((self.number * OWNER_SPAN + self.owner) << EPOCH_BITS) | seq)


INITIAL_EPOCH = Epoch(1, 0)


def token_text(token: int) -> str:
    """A fencing token for people: "e3.5.7" (epoch 3 of node 5, grant 7) or the number."""
    if token < 1 << EPOCH_BITS:
        return str(token)
    high, seq = token >> EPOCH_BITS, token & ((1 << EPOCH_BITS) - 1)
    return f"e{high // OWNER_SPAN}.{high % OWNER_SPAN}.{seq}"


@dataclass(frozen=True, slots=True)
class MutexConfig:
    """Timing of the three algorithms (seconds; simulator ticks in the simulator).

    `max_delay` is the bound on message delivery between running nodes that
    the lease arithmetic assumes; a new coordinator (centralized) or a token
    regenerator (ring) waits `recovery_wait` = max_delay + lease + epsilon
    before its first grant, which outlasts every lease an earlier epoch could
    still have running.
    """

    lease: float = 2.0  # a grant's term, from the holder's anchor instant
    epsilon: float = 0.1  # holder expires this much early, grantors wait this much late
    max_delay: float = 0.5
    loss_timeout: float = 1.5  # ring: no token seen for this long -> regenerate
    idle_pass: float = 0.02  # ring: a node not wanting keeps the token this long
    request_retry: float = 3.0  # centralized: re-send a request unanswered this long
    drift_bound: float = 1e-3  # clock rate error: a duration measured elsewhere is cut by it
    pause_gap: float = 0.25  # centralized: a gap this long between events means we were frozen

    def validate(self) -> MutexConfig:
        for name in ("lease", "epsilon", "max_delay", "loss_timeout", "idle_pass",
                     "request_retry", "drift_bound", "pause_gap"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise MutexConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.drift_bound >= 1:
            raise MutexConfigError(f"drift_bound is a rate error (< 1), got {self.drift_bound}")
        if self.lease <= 2 * self.epsilon:
            raise MutexConfigError(f"lease {self.lease} must exceed 2 * epsilon {self.epsilon}")
        if self.loss_timeout <= self.idle_pass + self.max_delay:
            raise MutexConfigError("loss_timeout must exceed idle_pass + max_delay "
                                   "(a live token would be declared lost)")
        return self

    @property
    def recovery_wait(self) -> float:
        return self.max_delay + self.lease + self.epsilon


@dataclass(frozen=True, slots=True)
class Grant:
    """What `hold()` yields: the lease on one lock."""

    lock: LockName
    holder: NodeId
    token: FencingToken
    expires_at: float  # the holder's clock: act only before this instant


# ----------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Send:
    to: NodeId
    msg: object  # one of coord.mutex.messages' dataclasses


@dataclass(frozen=True, slots=True)
class Enter:
    """This node now holds the lock (the driver wakes the waiting `hold()`)."""

    grant: Grant


@dataclass(frozen=True, slots=True)
class LeaseOver:
    """The held lease reached its expiry before `release`: stop acting now."""

    grant: Grant


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth a line in the trace (an election, a regenerated token)."""

    text: str


Effect = Send | Enter | LeaseOver | Note


class LeaderView(Protocol):
    """Who the coordinator is, as far as this node knows.

    The default (`HighestTrusted`) is the outcome the Bully algorithm converges
    to: the highest id the failure detector does not suspect.  An election
    core (coord/election) fits behind the same method.
    """

    def leader(self, suspected: frozenset[NodeId]) -> NodeId | None: ...


class HighestTrusted:
    """The highest-numbered node that is not suspected (this node always trusts itself)."""

    def __init__(self, me: NodeId, nodes: Sequence[NodeId]) -> None:
        self._me = me
        self._nodes = tuple(sorted(set(nodes)))

    def leader(self, suspected: frozenset[NodeId]) -> NodeId | None:
        live = [n for n in self._nodes if n == self._me or n not in suspected]
        return max(live) if live else None


class MutexCore(Protocol):
    """The interface every algorithm's core offers its driver (one core per lock)."""

    me: NodeId
    lock: LockName

    def want(self, now: float) -> list[Effect]: ...
    def release(self, now: float) -> list[Effect]: ...
    def receive(self, msg: object, now: float) -> list[Effect]: ...
    def tick(self, now: float) -> list[Effect]: ...
    def suspect(self, peer: NodeId, now: float) -> list[Effect]: ...
    def recover(self, peer: NodeId, now: float) -> list[Effect]: ...
    def next_wakeup(self, now: float) -> float: ...

    @property
    def held(self) -> Grant | None: ...

    @property
    def wanting(self) -> bool: ...
