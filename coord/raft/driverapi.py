"""The driver's vocabulary: what it needs from a state machine and a transport
(`StateMachine`, `Transport`, `Applied`), the errors its callers see
(`RaftUnavailable` and its kinds), the waiters it keeps for proposals and
reads, and its status report (`DriverStatus`, `status_dict`).  Kept apart
from `coord.raft.driver` so that file holds the loop itself; everything here
is re-exported there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import trio

from coord.raft.messages import Message
from coord.raft.readindex import ReadState
from coord.raft.types import Entry, LogIndex, NodeId, Term

log = logging.getLogger("coord.raft.driver")


class Applied(Protocol):
    """What a state machine reports for one applied entry."""

    @property
    def index(self) -> LogIndex: ...


A = TypeVar("A", bound=Applied)
A_co = TypeVar("A_co", bound=Applied, covariant=True)


class StateMachine(Protocol[A_co]):
    """A replicated state machine whose applied index commits with its state."""

    @property
    def applied_index(self) -> LogIndex: ...

    def apply(
        self,
        entries: Sequence[Entry],
        announce: Callable[[Sequence[A_co]], None] | None = None,
    ) -> Sequence[A_co]:
        """Apply in one transaction; call `announce(outcomes)` (if given) before
        it commits, so clients can be answered during the state store's fsync."""
        ...


class Transport(Protocol):
    """Sends a batch of Raft messages to one peer (best effort, may raise)."""

    async def send(self, peer: NodeId, messages: Sequence[Message]) -> None: ...


class RaftUnavailable(Exception):
    """The request could not be served here; `leader` is where to retry (None: unknown)."""

    def __init__(self, message: str, leader: NodeId | None) -> None:
        super().__init__(message)
        self.leader = leader


class ProposalLost(RaftUnavailable):
    """The proposal's entry was overwritten by a new leader: it was not committed."""


class Busy(RaftUnavailable):
    """The leader holds too many uncommitted bytes, or a transfer runs; retry shortly."""


class ChangeRefused(RaftUnavailable):
    """The leader refused a membership change or a transfer; the message says why."""


@dataclass(slots=True)
class Waiter(Generic[A]):
    """A proposal waiting for the entry applied at its index (see RaftDriver.propose)."""

    term: Term
    early: bool = False  # answer before the state store commits (see propose)
    done: trio.Event | None = None  # `propose` waits on it ...
    on_done: Callable[[A | ProposalLost], None] | None = None  # ... `propose_nowait` is called
    result: A | None = None
    lost: bool = False
    finished: bool = False
    index: int = 0  # the LogIndex it was proposed at
    leader: Callable[[], NodeId | None] | None = None  # for ProposalLost's hint

    def finish(self) -> None:
        """Answer the proposer, once (called on the trio thread)."""
        if self.finished:
            return
        self.finished = True
        if self.done is not None:
            self.done.set()
        if self.on_done is not None:
            if self.lost or self.result is None:
                hint = self.leader() if self.leader is not None else None
                outcome: A | ProposalLost = ProposalLost(
                    f"entry {self.index} was overwritten by a new leader", hint)
            else:
                outcome = self.result
            try:
                self.on_done(outcome)
            except Exception:  # the proposer's bug must not break the applier
                log.exception("proposal callback failed")


Proposal = Waiter  # what `propose_nowait` returns: a handle to `abandon` it


@dataclass(slots=True)
class ReadWaiter:
    """A linearizable read waiting for its ReadIndex to be applied."""

    done: trio.Event = field(default_factory=trio.Event)
    index: LogIndex | None = None  # None with done set: the read failed


# Committed entries to apply and the reads to release once they are applied.
ApplyJob = tuple[tuple[Entry, ...], tuple[ReadState, ...]]


@dataclass(frozen=True, slots=True)
class DriverStatus:
    node_id: NodeId
    role: str
    term: int
    leader: NodeId | None
    commit_index: int
    applied_index: int
    last_index: int
    peers: tuple[NodeId, ...]
    match: Mapping[NodeId, int]  # leader only: replicated index per follower
    fsyncs: int = 0  # durable commits of the Raft log so far (storage adapters that count)
    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()
    first_index: int = 1  # first entry still in the log (compaction point + 1)
    snapshot_index: int = 0  # newest snapshot this member holds (0: none)
    snapshots_taken: int = 0  # since start
    snapshots_installed: int = 0  # received from a leader, since start


def status_dict(st: DriverStatus) -> dict[str, Any]:
    """A JSON-friendly form of the status (for `ddfs raft status`)."""
    return {
        "id": st.node_id, "role": st.role, "term": st.term, "leader": st.leader,
        "commit_index": st.commit_index, "applied_index": st.applied_index,
        "last_index": st.last_index, "peers": list(st.peers),
        "voters": list(st.voters), "learners": list(st.learners),
        "lag": {str(p): st.last_index - m for p, m in st.match.items()},
        "fsyncs": st.fsyncs,
        "first_index": st.first_index, "snapshot_index": st.snapshot_index,
        "snapshots_taken": st.snapshots_taken, "snapshots_installed": st.snapshots_installed,
    }
