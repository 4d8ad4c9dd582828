"""The coordinator of the centralized algorithm (and the ring's regenerator), elected.

`ElectedLeader` is a `LeaderView` backed by a Bully election core
(coord.election): the mutex cores read `leader` from it on every event, and
whoever drives them (MutexService, the simulator) steps the election with
its messages, its timers and the same failure-detector transitions.

Invariants:
* Until the election has named anyone, the view is the configured initial
  coordinator (the highest id, the one that owns `INITIAL_EPOCH`); from then
  on it is exactly the election's view, None included (no coordinator while
  an election runs).  Every change of view makes the cores start a new
  epoch, so a wrong or transient view costs time, never safety (leases and
  the recovery wait carry that).
* `election_effects` keeps the election's effect order: sends first as they
  came, a leader change as a trace note where it happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard

from coord.election import BullyNode, ElectionConfig, LeaderChanged
from coord.election import NodeId as ElectionId
from coord.election import Send as ElectionSend
from coord.election.messages import (
    BullyCoordinator,
    BullyElection,
    BullyMessage,
    BullyOk,
    RingCoordinator,
    RingElection,
    label,
)
from coord.mutex.messages import label_of
from coord.mutex.types import Effect, NodeId, Note, Send

ELECTION_MESSAGES: tuple[type, ...] = (BullyElection, BullyOk, BullyCoordinator,
                                       RingElection, RingCoordinator)


class ElectedLeader:
    """A `LeaderView`: the Bully election's leader (the configured one before it speaks)."""

    def __init__(self, election: BullyNode, initial: NodeId) -> None:
        self.election = election
        self._initial = initial
        self._decided = False  # the election has named a leader at least once

    def leader(self, suspected: frozenset[NodeId]) -> NodeId | None:
        current = self.election.leader
        if current is not None:
            self._decided = True
        if not self._decided:
            return self._initial
        return None if current is None else NodeId(int(current))


def is_bully(msg: object) -> TypeGuard[BullyMessage]:
    return isinstance(msg, (BullyElection, BullyOk, BullyCoordinator))


def message_label(msg: object) -> str:
    """The trace label of any message a mutex node sends (election ones included)."""
    if isinstance(msg, (BullyElection, BullyOk, BullyCoordinator, RingElection,
                        RingCoordinator)):
        return label(msg)
    return label_of(msg)


def bully_for(me: NodeId, nodes: Sequence[NodeId],
              config: ElectionConfig | None = None) -> BullyNode:
    return BullyNode(ElectionId(int(me)), [ElectionId(int(n)) for n in nodes], config)


def election_effects(effects: Sequence[object]) -> list[Effect]:
    """The election's effects in mutex terms (a leader change becomes a trace note)."""
    out: list[Effect] = []
    for eff in effects:
        if isinstance(eff, ElectionSend):
            out.append(Send(NodeId(int(eff.to)), eff.msg))
        elif isinstance(eff, LeaderChanged):
            out.append(Note(f"election - coordinator now {eff.leader} (was {eff.previous})"))
    return out
