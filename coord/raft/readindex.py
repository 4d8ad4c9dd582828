"""ReadIndex bookkeeping for linearizable reads (thesis §6.4), without the log.

Leader side, a read moves through:
  awaiting_term_commit  (the leader has not yet committed an entry of its term)
  -> unsent             (queued; every read queued before a broadcast shares it)
  -> rounds             (heartbeat round `id` broadcast with read index = commit)
  -> confirmed          (a majority acknowledged round >= id)
A heartbeat reply for round r acknowledges leadership *after* round r left, so
it confirms every round <= r: one integer per follower suffices, and many
reads share one round trip (batching).

Both sides: a confirmed read waits in `waiting_apply` until the state machine
has applied its index; then it becomes a `ReadState` in Ready.

Invariant: round ids strictly increase over the tracker's life, and every
round in `rounds` was recorded with the commit index at its broadcast.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from coord.raft.messages import ReadCtx
from coord.raft.types import LogIndex, NodeId


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read that may be served now: the state machine has applied >= index."""

    ctx: ReadCtx
    index: LogIndex


@dataclass(frozen=True, slots=True)
class PendingRead:
    ctx: ReadCtx
    origin: NodeId  # the node whose client asked (the leader itself or a follower)


@dataclass(frozen=True, slots=True)
class ConfirmedRead:
    ctx: ReadCtx
    origin: NodeId
    index: LogIndex


class ReadIndexTracker:
    __slots__ = ("awaiting_term_commit", "last_round", "rounds", "unsent", "waiting_apply")

    def __init__(self) -> None:
        self.awaiting_term_commit: list[PendingRead] = []
        self.unsent: list[PendingRead] = []
        self.rounds: deque[tuple[int, LogIndex, list[PendingRead]]] = deque()
        self.last_round = 0  # id of the latest broadcast round (heartbeat context)
        self.waiting_apply: list[ReadState] = []

    def request(self, read: PendingRead, committed_in_term: bool) -> None:
        (self.unsent if committed_in_term else self.awaiting_term_commit).append(read)

    def term_committed(self) -> None:
        """The leader committed its first entry of the term: held reads may proceed."""
        self.unsent.extend(self.awaiting_term_commit)
        self.awaiting_term_commit.clear()

    def start_round(self, commit: LogIndex) -> int | None:
        """Open a heartbeat round for every unsent read; None if nothing is queued."""
        if not self.unsent:
            return None
        self.last_round += 1
        self.rounds.append((self.last_round, commit, self.unsent))
        self.unsent = []
        return self.last_round

    def confirm(self, up_to_round: int) -> list[ConfirmedRead]:
        """A quorum acknowledged `up_to_round`: release every round up to it."""
        done: list[ConfirmedRead] = []
        while self.rounds and self.rounds[0][0] <= up_to_round:
            _, index, reads = self.rounds.popleft()
            done.extend(ConfirmedRead(r.ctx, r.origin, index) for r in reads)
        return done

    def abandon(self) -> list[PendingRead]:
        """Leadership lost: every unconfirmed read fails (clients retry)."""
        failed = [*self.awaiting_term_commit, *self.unsent]
        for _, _, reads in self.rounds:
            failed.extend(reads)
        self.awaiting_term_commit, self.unsent = [], []
        self.rounds.clear()
        return failed

    def servable(self, committed: LogIndex) -> bool:
        """Some confirmed read can be served once the committed entries are applied
        (reads waiting for entries this node has not even committed do not count, so
        a driver looping on has_ready() does not spin)."""
        return any(r.index <= committed for r in self.waiting_apply)

    def take_ready(self, applied: LogIndex) -> list[ReadState]:
        if not self.waiting_apply:
            return []
        ready = [r for r in self.waiting_apply if r.index <= applied]
        if ready:
            self.waiting_apply = [r for r in self.waiting_apply if r.index > applied]
        return ready
