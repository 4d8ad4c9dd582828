"""The heartbeat/timeout failure detector: suspect a peer silent for longer than `timeout`.

Invariants:

* For each watched peer we keep the latest instant it was heard from
  (never moved backwards by a reordered call).
* After `check(now)`, a peer is suspected iff `now - last_heard > timeout`;
  `check` reports exactly the peers whose opinion changed, in the order they
  were first watched (deterministic).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from coord.failure.types import DetectorEvent, PeerId, Recover, Suspect


class DetectorConfigError(ValueError):
    """A detector configuration whose fields contradict each other."""


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    timeout: float = 3.0  # seconds of silence before a peer is suspected

    def validate(self) -> TimeoutConfig:
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise DetectorConfigError(f"timeout must be a finite number > 0, got {self.timeout}")
        return self


class TimeoutDetector:
    """Fixed-timeout detector: simple, and wrong in a predictable direction on slow links."""

    def __init__(self, config: TimeoutConfig) -> None:
        self._config = config.validate()
        self._last: dict[PeerId, float] = {}  # peer -> latest heartbeat (our clock)
        self._suspected: set[PeerId] = set()  # peers suspected at the last check

    def monitor(self, peer: PeerId, now: float) -> None:
        self._last.setdefault(peer, now)

    def forget(self, peer: PeerId) -> None:
        self._last.pop(peer, None)
        self._suspected.discard(peer)

    def heartbeat(self, peer: PeerId, now: float) -> None:
        self._last[peer] = max(now, self._last.get(peer, now))

    def suspected(self, peer: PeerId) -> bool:
        return peer in self._suspected

    def peers(self) -> Iterable[PeerId]:
        return tuple(self._last)

    def silence(self, peer: PeerId, now: float) -> float:
        """Seconds since `peer` was last heard from."""
        return now - self._last[peer]

    def check(self, now: float) -> list[DetectorEvent]:
        timeout = self._config.timeout
        events: list[DetectorEvent] = []
        for peer, last in self._last.items():
            quiet = now - last
            if quiet > timeout and peer not in self._suspected:
                self._suspected.add(peer)
                reason = f"no heartbeat for {quiet:.3f} s > timeout {timeout:.3f} s"
                events.append(Suspect(peer, now, reason))
            elif quiet <= timeout and peer in self._suspected:
                self._suspected.discard(peer)
                reason = f"heard {quiet:.3f} s ago <= timeout {timeout:.3f} s"
                events.append(Recover(peer, now, reason))
        return events
