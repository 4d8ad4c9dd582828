"""The 2PC coordinator: a sans-IO state machine per transaction.

    begin ──► PREPARING ──all READY──► (DECIDING) ──► COMMITTED ──all ACKs──► ENDED
                  │ any ABORT vote / vote timeout          ▲
                  └──────────────────► (DECIDING) ──► ABORTED ──all ACKs──► ENDED

DECIDING exists only with the decision store (`config.use_store`): the
decision is proposed to the store with a compare-and-set and the store's
answer *is* the decision (a participant may have recorded ABORT first).

Invariants:
* BEGIN is forced before the first PREPARE (so a recovered coordinator knows
  whom to tell the outcome).  The decision is recorded in the store (when
  used), then forced to the log, before the first decision message; so every
  decision ever sent is durable on both.  END is written after every ACK and
  not forced: losing it only makes recovery resend the decision.
* COMMIT is decided only when every participant voted READY; one ABORT vote
  or the vote timeout decides ABORT.
* Recovery: a transaction with BEGIN but no decision is aborted (presumed
  abort; with the store, ABORT is proposed and the store's answer wins, so a
  COMMIT recorded just before the crash is honoured); a decided one is resent
  to every participant until all ACK.
* Nothing here does I/O or reads a clock: `now` is an argument and the
  results are lists of effects (see `records.py`) to run in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coord.twopc.machine import Tracked
from coord.twopc.messages import (
    Ack,
    DecisionMsg,
    DecisionQuery,
    Message,
    Prepare,
    QueryReply,
    VoteMsg,
)
from coord.twopc.records import (
    BeginRecord,
    Checkpoint,
    DecisionRecord,
    Effect,
    EndRecord,
    LogRecord,
    Persist,
    PreparedRecord,
    ResolveDecision,
    Send,
)
from coord.twopc.types import (
    COORD_MOVES,
    Answer,
    CoordState,
    CoordStep,
    Decision,
    NodeName,
    TwoPcConfig,
    TxId,
    Vote,
    Write,
)

_INF = float("inf")


@dataclass(slots=True)
class _Txn:
    """The coordinator's view of one transaction."""

    st: Tracked[CoordState]
    participants: tuple[NodeName, ...]
    work: dict[NodeName, tuple[Write, ...]]  # for PREPARE retransmission (empty after recovery)
    votes: dict[NodeName, Vote] = field(default_factory=dict)
    acks: set[NodeName] = field(default_factory=set)
    decision: Decision | None = None  # set once logged (or being logged)
    proposal: Decision | None = None  # DECIDING: what we asked the store to record
    vote_deadline: float = _INF  # PREPARING: abort when reached
    timer: float = _INF  # next retransmission (PREPARE, store question or decision)


class Coordinator:
    def __init__(self, name: NodeName, config: TwoPcConfig) -> None:
        self.name = name
        self.config = config.validate()
        self._txns: dict[TxId, _Txn] = {}
        self._live: set[TxId] = set()  # not ENDED: these have timers

    # ------------------------------------------------------------------ queries

    def state(self, txid: TxId) -> CoordState | None:
        txn = self._txns.get(txid)
        return None if txn is None else txn.st.state

    def decision(self, txid: TxId) -> Decision | None:
        txn = self._txns.get(txid)
        return None if txn is None else txn.decision

    def participants(self, txid: TxId) -> tuple[NodeName, ...]:
        return self._txns[txid].participants

    def transactions(self) -> dict[TxId, CoordState]:
        return {txid: txn.st.state for txid, txn in self._txns.items()}

    def history(self, txid: TxId) -> list[str]:
        return self._txns[txid].st.history

    def next_wakeup(self) -> float:
        """The earliest `now` at which `tick` has something to do (inf: nothing)."""
        out = _INF
        for txid in self._live:
            txn = self._txns[txid]
            out = min(out, txn.timer, txn.vote_deadline)
        return out

    # ------------------------------------------------------------------ events

    def begin(self, txid: TxId, work: Mapping[NodeName, Sequence[Write]],
              now: float) -> list[Effect]:
        """Start `txid` with each participant's writes.  A repeat of a known txid is a no-op."""
        if txid in self._txns:
            return []
        if not work or self.name in work:
            raise ValueError("need at least one participant, other than the coordinator")
        participants = tuple(sorted(work))
        txn = _Txn(Tracked(f"coordinator {self.name}", txid, COORD_MOVES), participants,
                   {p: tuple(w) for p, w in work.items()})
        txn.st.move(CoordState.PREPARING, "begin", now)
        txn.vote_deadline = now + self.config.vote_timeout
        txn.timer = now + self.config.prepare_retry
        self._txns[txid] = txn
        self._live.add(txid)
        out: list[Effect] = [Persist(BeginRecord(txid, participants)),
                             Checkpoint(CoordStep.BEFORE_PREPARE, txid)]
        out += [Send(p, self._prepare(txid, txn, p)) for p in participants]
        out.append(Checkpoint(CoordStep.AFTER_PREPARE_SENT, txid))
        return out

    def receive(self, msg: Message, now: float) -> list[Effect]:
        if isinstance(msg, VoteMsg):
            return self._on_vote(msg, now)
        if isinstance(msg, Ack):
            return self._on_ack(msg, now)
        if isinstance(msg, DecisionQuery):
            return self._on_query(msg)
        return []  # PREPARE/DECISION/QUERY_REPLY are not addressed to a coordinator

    def store_answer(self, txid: TxId, decision: Decision, now: float) -> list[Effect]:
        """The decision store's recorded decision for `txid` (answer to ResolveDecision)."""
        txn = self._txns.get(txid)
        if txn is None or txn.st.state is not CoordState.DECIDING:
            return []  # a duplicate answer: the decision is already logged
        return self._log_and_send(txid, txn, decision, "recorded in the store", now)

    def tick(self, now: float) -> list[Effect]:
        out: list[Effect] = []
        for txid in sorted(self._live):  # sorted: deterministic effect order
            txn = self._txns[txid]
            if now >= txn.vote_deadline or now >= txn.timer:
                out += self._on_timer(txid, txn, now)
        return out

    # ------------------------------------------------------------------ recovery

    @classmethod
    def recover(cls, name: NodeName, config: TwoPcConfig, records: Iterable[LogRecord],
                now: float) -> tuple[Coordinator, list[Effect]]:
        """Rebuild from the log; return the core and the effects that finish its work."""
        self = cls(name, config)
        for rec in records:
            self._replay(rec, now)
        out: list[Effect] = []
        for txid in sorted(self._live):
            txn = self._txns[txid]
            if txn.decision is None:
                txn.st.note("recovered without a decision: presumed abort", now)
                out += self._decide(txid, txn, Decision.ABORT, "recovered undecided", now)
            else:
                txn.st.note("recovered decided: resending to all", now)
                txn.timer = now + self.config.ack_retry
                out += self._send_decision(txid, txn, txn.participants)
        return self, out

    def _replay(self, rec: LogRecord, now: float) -> None:
        if isinstance(rec, BeginRecord):
            txn = _Txn(Tracked(f"coordinator {self.name}", rec.txid, COORD_MOVES),
                       rec.participants, {})
            txn.st.move(CoordState.PREPARING, "log: BEGIN", now)
            self._txns[rec.txid] = txn
            self._live.add(rec.txid)
        elif isinstance(rec, DecisionRecord):
            txn = self._txns[rec.txid]
            txn.decision = rec.decision
            txn.st.move(_decided(rec.decision), "log: decision", now)
        elif isinstance(rec, EndRecord):
            self._txns[rec.txid].st.move(CoordState.ENDED, "log: END", now)
            self._live.discard(rec.txid)
        elif isinstance(rec, PreparedRecord):
            raise ValueError(f"a participant's record in a coordinator log: {rec}")

    # ------------------------------------------------------------------ handlers

    def _on_vote(self, msg: VoteMsg, now: float) -> list[Effect]:
        txn = self._txns.get(msg.txid)
        if txn is None:
            # No BEGIN: we never sent PREPARE for it, so it cannot have committed.
            return [Send(msg.sender, DecisionMsg(msg.txid, self.name, Decision.ABORT))]
        if msg.sender not in txn.participants:
            txn.st.note(f"vote from a stranger {msg.sender} ignored", now)
            return []
        state = txn.st.state
        if state is CoordState.PREPARING:
            txn.votes.setdefault(msg.sender, msg.vote)  # the first vote counts
            if msg.vote is Vote.ABORT:
                return self._decide(msg.txid, txn, Decision.ABORT, f"{msg.sender} voted ABORT", now)
            if len(txn.votes) == len(txn.participants) and all(
                v is Vote.READY for v in txn.votes.values()
            ):
                return self._decide(msg.txid, txn, Decision.COMMIT, "every vote READY", now)
            return []
        if state is CoordState.DECIDING:
            return []  # the store has not answered yet; the decision will follow
        # Decided: the voter (recovered, or its vote was late) is waiting for the outcome.
        assert txn.decision is not None
        return [Send(msg.sender, DecisionMsg(msg.txid, self.name, txn.decision))]

    def _on_ack(self, msg: Ack, now: float) -> list[Effect]:
        txn = self._txns.get(msg.txid)
        if txn is None or txn.st.state not in (CoordState.COMMITTED, CoordState.ABORTED):
            return []
        if msg.decision is not txn.decision or msg.sender not in txn.participants:
            txn.st.note(f"ACK {msg.decision.name} from {msg.sender} ignored", now)
            return []
        txn.acks.add(msg.sender)
        if len(txn.acks) < len(txn.participants):
            return []
        txn.st.move(CoordState.ENDED, "every participant ACKed", now)
        self._live.discard(msg.txid)
        return [Checkpoint(CoordStep.BEFORE_END, msg.txid),
                Persist(EndRecord(msg.txid), sync=False)]

    def _on_query(self, msg: DecisionQuery) -> list[Effect]:
        txn = self._txns.get(msg.txid)
        if txn is None:
            answer = Answer.ABORT  # never begun here: presumed abort
        elif txn.decision is None:
            return []  # still deciding: the decision itself will be sent
        else:
            answer = Answer(txn.decision.value)
        return [Send(msg.sender, QueryReply(msg.txid, self.name, answer))]

    def _on_timer(self, txid: TxId, txn: _Txn, now: float) -> list[Effect]:
        state = txn.st.state
        if state is CoordState.PREPARING:
            if now >= txn.vote_deadline:
                return self._decide(txid, txn, Decision.ABORT, "vote timeout", now)
            txn.timer = now + self.config.prepare_retry
            silent = [p for p in txn.participants if p not in txn.votes]
            return [Send(p, self._prepare(txid, txn, p)) for p in silent]
        if state is CoordState.DECIDING:
            txn.timer = now + self.config.store_retry
            assert txn.proposal is not None
            return [ResolveDecision(txid, txn.proposal)]
        txn.timer = now + self.config.ack_retry
        return self._send_decision(txid, txn, [p for p in txn.participants if p not in txn.acks])

    # ------------------------------------------------------------------ deciding

    def _decide(self, txid: TxId, txn: _Txn, decision: Decision, why: str,
                now: float) -> list[Effect]:
        txn.vote_deadline = _INF
        if not self.config.use_store:
            return self._log_and_send(txid, txn, decision, why, now)
        txn.st.move(CoordState.DECIDING, f"propose {decision.name}: {why}", now)
        txn.timer = now + self.config.store_retry
        txn.proposal = decision
        return [Checkpoint(CoordStep.BEFORE_DECISION_RECORDED, txid),
                ResolveDecision(txid, decision)]

    def _log_and_send(self, txid: TxId, txn: _Txn, decision: Decision, why: str,
                      now: float) -> list[Effect]:
        txn.decision = decision
        txn.st.move(_decided(decision), why, now)
        txn.timer = now + self.config.ack_retry
        return [Checkpoint(CoordStep.BEFORE_DECISION_LOGGED, txid),
                Persist(DecisionRecord(txid, decision)),
                Checkpoint(CoordStep.AFTER_DECISION_LOGGED, txid),
                *self._send_decision(txid, txn, txn.participants),
                Checkpoint(CoordStep.AFTER_DECISION_SENT, txid)]

    def _send_decision(self, txid: TxId, txn: _Txn,
                       to: Iterable[NodeName]) -> list[Effect]:
        assert txn.decision is not None
        return [Send(p, DecisionMsg(txid, self.name, txn.decision)) for p in to]

    def _prepare(self, txid: TxId, txn: _Txn, participant: NodeName) -> Prepare:
        return Prepare(txid, self.name, txn.participants, txn.work.get(participant, ()))


def _decided(decision: Decision) -> CoordState:
    return CoordState.COMMITTED if decision is Decision.COMMIT else CoordState.ABORTED
