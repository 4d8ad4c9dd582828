"""Two-phase commit vocabulary: ids, votes, decisions, states, named steps, config.

Invariants these types carry:

* A transaction is named by a `TxId` chosen by whoever starts it; a node is
  named by a `NodeName`.  Both are strings so that they read well in logs,
  traces and the decision store's key (`2pc/<txid>`).
* `Decision` is the only outcome vocabulary: coordinator log, participant log,
  decision store and messages all use it, so "the same decision" is equality.
* Every state enum below has a transition table next to it (`COORD_MOVES`,
  `PART_MOVES`); the cores move only along those edges (see `machine.py`).
* Every timing field of `TwoPcConfig` is in the caller's time unit (seconds
  for real drivers, ticks in the simulator); `validate()` checks the
  relations between them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import NewType

TxId = NewType("TxId", str)
NodeName = NewType("NodeName", str)


class Decision(enum.Enum):
    COMMIT = "commit"
    ABORT = "abort"


class Vote(enum.Enum):
    READY = "ready"  # prepared: undo/redo on stable storage, will obey either decision
    ABORT = "abort"  # refused; the voter has aborted (unilaterally, which it may)


class Answer(enum.Enum):
    """A reply in the cooperative termination protocol."""

    COMMIT = "commit"
    ABORT = "abort"
    UNCERTAIN = "uncertain"  # the asked node voted READY and knows no decision either


class CoordState(enum.Enum):
    PREPARING = "preparing"  # BEGIN logged, PREPAREs out, collecting votes
    DECIDING = "deciding"  # decision proposed to the decision store, answer awaited
    COMMITTED = "committed"  # COMMIT logged; sending it until every participant ACKed
    ABORTED = "aborted"  # ABORT logged; sending it until every participant ACKed
    ENDED = "ended"  # every participant ACKed; END logged (not forced)


class PartState(enum.Enum):
    INIT = "init"  # nothing logged: has not voted (may still abort unilaterally)
    PREPARED = "prepared"  # voted READY; waiting for the decision
    UNCERTAIN = "uncertain"  # decision overdue: asking the other participants
    RESOLVING = "resolving"  # asking the decision store (cas None -> ABORT)
    COMMITTED = "committed"
    ABORTED = "aborted"


COORD_MOVES: dict[CoordState | None, frozenset[CoordState]] = {
    None: frozenset({CoordState.PREPARING}),
    CoordState.PREPARING: frozenset({CoordState.DECIDING, CoordState.COMMITTED,
                                     CoordState.ABORTED}),
    CoordState.DECIDING: frozenset({CoordState.COMMITTED, CoordState.ABORTED}),
    CoordState.COMMITTED: frozenset({CoordState.ENDED}),
    CoordState.ABORTED: frozenset({CoordState.ENDED}),
    CoordState.ENDED: frozenset(),
}

_UNDECIDED = {PartState.PREPARED, PartState.UNCERTAIN, PartState.RESOLVING}
_OUTCOMES = frozenset({PartState.COMMITTED, PartState.ABORTED})

PART_MOVES: dict[PartState | None, frozenset[PartState]] = {
    None: frozenset({PartState.INIT}),
    # INIT -> COMMITTED is absent on purpose: a participant that never voted
    # READY can never learn COMMIT (the coordinator needs its READY first).
    PartState.INIT: frozenset({PartState.PREPARED, PartState.ABORTED}),
    PartState.PREPARED: frozenset({PartState.UNCERTAIN}) | _OUTCOMES,
    PartState.UNCERTAIN: frozenset({PartState.RESOLVING}) | _OUTCOMES,
    PartState.RESOLVING: frozenset({PartState.UNCERTAIN}) | _OUTCOMES,
    PartState.COMMITTED: frozenset(),
    PartState.ABORTED: frozenset(),
}


def undecided(state: PartState) -> bool:
    """True in the states where a participant is prepared and does not know the outcome."""
    return state in _UNDECIDED


class CoordStep(enum.Enum):
    """Named points of the coordinator's run, where a crash can be injected."""

    BEFORE_PREPARE = "before-prepare"  # BEGIN logged, no PREPARE sent yet
    AFTER_PREPARE_SENT = "after-prepare-sent"  # every PREPARE sent, no vote counted
    BEFORE_DECISION_RECORDED = "before-decision-recorded"  # decided, store not yet asked
    BEFORE_DECISION_LOGGED = "before-decision-logged"  # store answered; own log not written
    AFTER_DECISION_LOGGED = "after-decision-logged"  # decision fsynced, nothing sent
    AFTER_DECISION_SENT = "after-decision-sent"  # decision sent to all, ACKs awaited
    BEFORE_END = "before-end"  # every ACK in, END not logged


class PartStep(enum.Enum):
    """Named points of a participant's run, where a crash can be injected."""

    BEFORE_PREPARE_LOGGED = "before-prepare-logged"  # work done in memory, nothing logged
    AFTER_PREPARE_LOGGED = "after-prepare-logged"  # undo/redo fsynced, vote not sent
    AFTER_VOTE = "after-vote"  # READY sent: the uncertain period
    UNCERTAIN = "uncertain"  # decision overdue: termination queries just sent
    AFTER_DECISION_LOGGED = "after-decision-logged"  # applied + fsynced, ACK not sent
    AFTER_ACK = "after-ack"  # ACK sent


Step = CoordStep | PartStep


@dataclass(frozen=True, slots=True)
class Write:
    """One write of a transaction at one participant.

    With `check`, the participant votes ABORT unless the key's current value
    equals `expect` (None: the key must be absent): a transaction's business
    rule that only the participant holding the data can evaluate.
    """

    key: str
    value: bytes
    expect: bytes | None = None
    check: bool = False


class ConfigError(ValueError):
    """A configuration whose fields contradict each other."""


@dataclass(frozen=True, slots=True)
class TwoPcConfig:
    """Timing (seconds or ticks) and mode shared by coordinators and participants."""

    vote_timeout: float = 3.0  # coordinator: decide ABORT if not every vote is in by then
    prepare_retry: float = 0.3  # coordinator: resend PREPARE to participants not yet heard
    ack_retry: float = 0.3  # coordinator: resend the decision to participants not yet ACKed
    # participant: prepared this long -> start termination.  Not shorter than
    # vote_timeout, or participants abort (through the store) transactions a
    # live coordinator is still collecting votes for: safe, but wasteful.
    decision_timeout: float = 3.0
    query_retry: float = 0.5  # participant: one termination round (then store, or ask again)
    store_retry: float = 1.0  # both: re-ask the decision store when it has not answered
    use_store: bool = True  # record decisions in the decision store (False: textbook 2PC)

    def validate(self) -> TwoPcConfig:
        names = ("vote_timeout", "prepare_retry", "ack_retry", "decision_timeout",
                 "query_retry", "store_retry")
        for name in names:
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if self.prepare_retry >= self.vote_timeout:
            raise ConfigError("prepare_retry must be shorter than vote_timeout "
                              "(otherwise a lost PREPARE is never resent before aborting)")
        return self
