"""Failure-detector vocabulary: peer ids, the events a detector reports, its interface.

Invariants:

* A detector reports a peer's *transitions* only: `Suspect` when a trusted
  peer becomes suspected, `Recover` when a suspected peer becomes trusted
  again; they alternate per peer, starting with `Suspect`.
* Every event carries a human-readable `reason` with the numbers that caused
  it, so a driver's log explains each decision.
* A suspicion is an opinion, not a fact: a slow or partitioned node is
  suspected exactly like a dead one.  Nothing built on a detector may rely on
  a suspicion being true; safety comes from leases and fencing tokens, and a
  suspicion may only speed up what timing would do anyway (e.g. stop renewing
  a lease, never revoke one early).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NewType, Protocol

PeerId = NewType("PeerId", str)


@dataclass(frozen=True, slots=True)
class Suspect:
    peer: PeerId
    at: float  # the detector's clock
    reason: str


@dataclass(frozen=True, slots=True)
class Recover:
    peer: PeerId
    at: float
    reason: str


DetectorEvent = Suspect | Recover


class FailureDetector(Protocol):
    """The interface both detectors implement (sans-IO: time is an argument)."""

    def monitor(self, peer: PeerId, now: float) -> None:
        """Start watching `peer` as if it had just sent a heartbeat."""

    def forget(self, peer: PeerId) -> None:
        """Stop watching `peer` (no event is reported)."""

    def heartbeat(self, peer: PeerId, now: float) -> None:
        """`peer` was heard from at `now` (starts watching it if needed)."""

    def check(self, now: float) -> list[DetectorEvent]:
        """Report the suspicions and recoveries that happened by `now`."""

    def suspected(self, peer: PeerId) -> bool:
        """The current opinion about `peer` (as of the last `check`)."""

    def peers(self) -> Iterable[PeerId]:
        """The watched peers."""
