"""Election vocabulary: node ids, timing config, the effects a core returns.

Invariants:

* A node is named by a `NodeId`, an integer: both algorithms elect the
  *highest* id, so ids must be totally ordered and unique.
* A core never performs I/O: every outgoing message is a `Send` effect and
  every change of the node's view of the coordinator is a `LeaderChanged`
  effect, returned in the order they happened.  A driver executes them in
  that order (send, then tell the application).
* `LeaderChanged` is emitted exactly when the `leader` view changes value
  (None included), never for a re-announcement of the same leader.
* Every timing field of `ElectionConfig` is in the caller's time unit
  (seconds in real drivers, simulated seconds in the simulator);
  `validate()` checks the relations between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, NewType, TypeVar

NodeId = NewType("NodeId", int)

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Send(Generic[M]):
    """Deliver `msg` to node `to` (one-way; the core retries on its own timers)."""

    to: NodeId
    msg: M


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """This node's view of the coordinator changed from `previous` to `leader`."""

    leader: NodeId | None  # None: no coordinator known (the old one is suspected)
    previous: NodeId | None
    at: float  # the `now` of the event that caused the change


class ElectionConfigError(ValueError):
    """An election configuration whose fields contradict each other."""


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    """Timeouts of both algorithms.

    Defaults suit loopback processes; the simulator passes its own.  Each
    timeout must exceed the round trip it waits for, or elections restart
    needlessly (safe, but they cost messages and may not settle).
    """

    # Bully: an ELECTION sent to higher ids; no OK by then -> this node wins.
    ok_timeout: float = 0.5
    # Bully: an OK arrived; no COORDINATOR by then -> start again.  Covers the
    # higher node's own OK wait, so it must be longer than ok_timeout.
    coordinator_timeout: float = 1.5
    # Ring: a started or forwarded ELECTION; no COORDINATOR by then -> start
    # again.  Must cover two trips round the ring.
    ring_timeout: float = 2.0

    def validate(self) -> ElectionConfig:
        for name in ("ok_timeout", "coordinator_timeout", "ring_timeout"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ElectionConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if self.coordinator_timeout <= self.ok_timeout:
            raise ElectionConfigError(
                "coordinator_timeout must be longer than ok_timeout (a higher node that "
                "answered OK first waits ok_timeout for its own higher nodes)")
        return self
