"""The 2PC participant: a sans-IO resource manager that votes, obeys, and
terminates cooperatively when the coordinator falls silent.

    PREPARE ─► INIT ─work ok─► PREPARED ─decision overdue─► UNCERTAIN ─round over─► RESOLVING
                 │ (locked, check failed: vote ABORT)  │ decision (any source)  │         │
                 ▼                                     ▼                        ▼         ▼
              ABORTED                         COMMITTED / ABORTED  ◄────────────┴─────────┘

The data is a key -> bytes map updated *in place* at PREPARE (locks keep
other transactions off the keys until the outcome), so ABORT restores the
undo images from the log; COMMIT only writes its record.

Invariants:
* READY is sent only after the PreparedRecord (undo + redo) and the in-place
  writes are forced, in one atomic write.  A participant with no record for
  a transaction has therefore never voted READY for it.
* A decision is applied, forced (with the undo writes on ABORT) and only then
  ACKed or announced; locks are released when it is applied.
* Termination (cooperative): when the decision is overdue the participant
  asks the coordinator and every other participant.  A node that knows the
  decision answers it; a node that has not voted aborts unilaterally (forcing
  ABORT first) and answers ABORT; a prepared node answers UNCERTAIN.  If
  every other participant is UNCERTAIN and the coordinator is silent, the
  textbook protocol is *blocked*: it keeps asking.  With the decision store
  (`config.use_store`) the participant then proposes ABORT to the store
  (compare-and-set on an empty record) and obeys whatever the store holds.
* `now` is an argument; results are effect lists to run in order.
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
    Change,
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
    PART_MOVES,
    Answer,
    Decision,
    NodeName,
    PartState,
    PartStep,
    TwoPcConfig,
    TxId,
    Vote,
    Write,
    undecided,
)

_INF = float("inf")


@dataclass(slots=True)
class _Txn:
    st: Tracked[PartState]
    coordinator: NodeName | None = None  # None: learned of it only from a peer or a decision
    participants: tuple[NodeName, ...] = ()
    undo: tuple[Change, ...] = ()
    decision: Decision | None = None
    timer: float = _INF  # next termination step (undecided states only)
    answers: dict[NodeName, Answer] = field(default_factory=dict)  # this termination round
    blocked: bool = False  # textbook mode: every peer answered UNCERTAIN


class Participant:
    def __init__(self, name: NodeName, config: TwoPcConfig,
                 data: Mapping[str, bytes] | None = None) -> None:
        self.name = name
        self.config = config.validate()
        self._data: dict[str, bytes] = dict(data or {})  # in place: includes prepared writes
        self._locks: dict[str, TxId] = {}  # key -> the prepared transaction holding it
        self._txns: dict[TxId, _Txn] = {}
        self._pending: set[TxId] = set()  # undecided: these have timers

    # ------------------------------------------------------------------ queries

    def state(self, txid: TxId) -> PartState | None:
        txn = self._txns.get(txid)
        return None if txn is None else txn.st.state

    def decision(self, txid: TxId) -> Decision | None:
        txn = self._txns.get(txid)
        return None if txn is None else txn.decision

    def blocked(self, txid: TxId) -> bool:
        """Textbook termination failed: every other participant is uncertain too."""
        txn = self._txns.get(txid)
        return txn is not None and txn.blocked and undecided(txn.st.state)

    def transactions(self) -> dict[TxId, PartState]:
        return {txid: txn.st.state for txid, txn in self._txns.items()}

    def undecided(self) -> list[TxId]:
        return sorted(self._pending)

    def history(self, txid: TxId) -> list[str]:
        return self._txns[txid].st.history

    @property
    def data(self) -> Mapping[str, bytes]:
        return self._data

    @property
    def locks(self) -> Mapping[str, TxId]:
        return self._locks

    def next_wakeup(self) -> float:
        return min((self._txns[t].timer for t in self._pending), default=_INF)

    # ------------------------------------------------------------------ events

    def receive(self, msg: Message, now: float) -> list[Effect]:
        if isinstance(msg, Prepare):
            return self._on_prepare(msg, now)
        if isinstance(msg, DecisionMsg):
            return self._on_decision(msg, now)
        if isinstance(msg, DecisionQuery):
            return self._on_query(msg, now)
        if isinstance(msg, QueryReply):
            return self._on_reply(msg, now)
        return []  # votes and ACKs are for coordinators

    def store_answer(self, txid: TxId, decision: Decision, now: float) -> list[Effect]:
        txn = self._txns.get(txid)
        if txn is None or not undecided(txn.st.state):
            return []
        return self._apply(txid, txn, decision, "decision store", now)

    def tick(self, now: float) -> list[Effect]:
        out: list[Effect] = []
        for txid in sorted(self._pending):
            txn = self._txns[txid]
            if now >= txn.timer:
                out += self._on_timer(txid, txn, now)
        return out

    # ------------------------------------------------------------------ recovery

    @classmethod
    def recover(cls, name: NodeName, config: TwoPcConfig, records: Iterable[LogRecord],
                data: Mapping[str, bytes], now: float) -> tuple[Participant, list[Effect]]:
        """Rebuild from the log and the (atomically written) data; finish what is open."""
        self = cls(name, config, data)
        for rec in records:
            self._replay(rec, now)
        out: list[Effect] = []
        for txid in sorted(self._pending):
            txn = self._txns[txid]
            assert txn.coordinator is not None
            # Our READY may never have left: say it again (it also asks for the outcome).
            txn.st.note("recovered prepared: resending READY", now)
            txn.timer = now + self.config.decision_timeout
            out.append(Send(txn.coordinator, VoteMsg(txid, self.name, Vote.READY)))
        return self, out

    def _replay(self, rec: LogRecord, now: float) -> None:
        if isinstance(rec, PreparedRecord):
            txn = self._new(rec.txid, now)
            txn.coordinator, txn.participants, txn.undo = (
                rec.coordinator, rec.participants, rec.undo)
            txn.st.move(PartState.PREPARED, "log: PREPARED", now)
            self._lock(rec.txid, [c.key for c in rec.redo])
            self._pending.add(rec.txid)
        elif isinstance(rec, DecisionRecord):
            txn = self._txns.get(rec.txid) or self._new(rec.txid, now)
            txn.decision = rec.decision
            txn.st.move(_decided(rec.decision), "log: decision", now)
            self._unlock(rec.txid)
            self._pending.discard(rec.txid)
        elif isinstance(rec, BeginRecord | EndRecord):
            raise ValueError(f"a coordinator's record in a participant log: {rec}")

    # ------------------------------------------------------------------ phase 1

    def _on_prepare(self, msg: Prepare, now: float) -> list[Effect]:
        txn = self._txns.get(msg.txid)
        if txn is not None:  # a retransmission: repeat our vote
            vote = Vote.ABORT if txn.st.state is PartState.ABORTED else Vote.READY
            return [Send(msg.sender, VoteMsg(msg.txid, self.name, vote))]
        txn = self._new(msg.txid, now)
        txn.coordinator, txn.participants = msg.sender, msg.participants
        refusal = self._refusal(msg.txid, msg.writes)
        if refusal is not None:
            return self._refuse(msg.txid, txn, refusal, now)
        return self._vote_ready(msg.txid, txn, msg.writes, now)

    def _refusal(self, txid: TxId, writes: Sequence[Write]) -> str | None:
        """Why this participant cannot do the work (None: it can)."""
        for w in writes:
            holder = self._locks.get(w.key)
            if holder is not None and holder != txid:
                return f"{w.key!r} is locked by {holder}"
            if w.check and self._data.get(w.key) != w.expect:
                return f"check failed on {w.key!r}"
        return None

    def _refuse(self, txid: TxId, txn: _Txn, why: str, now: float) -> list[Effect]:
        assert txn.coordinator is not None
        txn.decision = Decision.ABORT
        txn.st.move(PartState.ABORTED, f"vote ABORT: {why}", now)
        # Forced: once we may have said ABORT, we must never vote READY for it.
        return [Persist(DecisionRecord(txid, Decision.ABORT)),
                Send(txn.coordinator, VoteMsg(txid, self.name, Vote.ABORT))]

    def _vote_ready(self, txid: TxId, txn: _Txn, writes: Sequence[Write],
                    now: float) -> list[Effect]:
        undo, redo = self._do_work(txid, txn, writes)
        assert txn.coordinator is not None
        txn.st.move(PartState.PREPARED, "work done, vote READY", now)
        txn.timer = now + self.config.decision_timeout
        self._pending.add(txid)
        record = PreparedRecord(txid, txn.coordinator, txn.participants, undo, redo)
        return [Checkpoint(PartStep.BEFORE_PREPARE_LOGGED, txid),
                Persist(record, writes=redo),
                Checkpoint(PartStep.AFTER_PREPARE_LOGGED, txid),
                Send(txn.coordinator, VoteMsg(txid, self.name, Vote.READY)),
                Checkpoint(PartStep.AFTER_VOTE, txid)]

    def _do_work(self, txid: TxId, txn: _Txn,
                 writes: Sequence[Write]) -> tuple[tuple[Change, ...], tuple[Change, ...]]:
        """Apply `writes` in place and lock their keys; return (undo, redo) images."""
        before: dict[str, bytes | None] = {}
        after: dict[str, bytes] = {}
        for w in writes:
            before.setdefault(w.key, self._data.get(w.key))
            after[w.key] = w.value
        self._data.update(after)
        self._lock(txid, list(after))
        txn.undo = tuple(Change(k, v) for k, v in before.items())
        return txn.undo, tuple(Change(k, v) for k, v in after.items())

    # ------------------------------------------------------------------ phase 2

    def _on_decision(self, msg: DecisionMsg, now: float) -> list[Effect]:
        txn = self._txns.get(msg.txid)
        if txn is None:
            if msg.decision is Decision.COMMIT:
                # Impossible for a correct coordinator (it needs our READY first).
                return []
            txn = self._new(msg.txid, now)
            txn.coordinator = msg.sender
        if txn.coordinator is None:
            txn.coordinator = msg.sender
        if txn.st.state is PartState.INIT or undecided(txn.st.state):
            return self._apply(msg.txid, txn, msg.decision, f"from {msg.sender}", now)
        if txn.decision is not msg.decision:  # a conflicting outcome: never legal
            txn.st.move(_decided(msg.decision), f"conflicting decision from {msg.sender}", now)
        return [Send(msg.sender, Ack(msg.txid, self.name, msg.decision))]

    def _apply(self, txid: TxId, txn: _Txn, decision: Decision, source: str,
               now: float) -> list[Effect]:
        txn.decision = decision
        txn.st.move(_decided(decision), f"{decision.name} ({source})", now)
        writes: tuple[Change, ...] = ()
        if decision is Decision.ABORT:
            writes = txn.undo  # roll back the in-place writes from the undo images
            for c in writes:
                self._restore(c)
        self._unlock(txid)
        self._pending.discard(txid)
        txn.timer = _INF
        out: list[Effect] = [Persist(DecisionRecord(txid, decision), writes=writes),
                             Checkpoint(PartStep.AFTER_DECISION_LOGGED, txid)]
        if txn.coordinator is not None:
            out.append(Send(txn.coordinator, Ack(txid, self.name, decision)))
        out.append(Checkpoint(PartStep.AFTER_ACK, txid))
        return out

    # ------------------------------------------------------------------ termination

    def _on_query(self, msg: DecisionQuery, now: float) -> list[Effect]:
        txn = self._txns.get(msg.txid)
        if txn is None:
            # We never voted READY, so we may abort unilaterally; force it first
            # so that a later PREPARE for it can only get ABORT.
            txn = self._new(msg.txid, now)
            txn.decision = Decision.ABORT
            txn.st.move(PartState.ABORTED, f"unilateral abort (asked by {msg.sender})", now)
            return [Persist(DecisionRecord(msg.txid, Decision.ABORT)),
                    Send(msg.sender, QueryReply(msg.txid, self.name, Answer.ABORT))]
        answer = Answer.UNCERTAIN if txn.decision is None else Answer(txn.decision.value)
        return [Send(msg.sender, QueryReply(msg.txid, self.name, answer))]

    def _on_reply(self, msg: QueryReply, now: float) -> list[Effect]:
        txn = self._txns.get(msg.txid)
        if txn is None or not undecided(txn.st.state):
            return []
        if msg.answer is not Answer.UNCERTAIN:
            return self._apply(msg.txid, txn, Decision(msg.answer.value), f"told by {msg.sender}",
                               now)
        txn.answers[msg.sender] = msg.answer
        peers = [p for p in txn.participants if p != self.name]
        if not all(txn.answers.get(p) is Answer.UNCERTAIN for p in peers):
            return []
        if not self.config.use_store:
            if not txn.blocked:
                txn.st.note("blocked: every other participant is uncertain", now)
            txn.blocked = True
            return []
        if txn.st.state is PartState.UNCERTAIN:  # no peer can help: go to the store now
            return self._resolve(msg.txid, txn, "every peer uncertain", now)
        return []

    def _on_timer(self, txid: TxId, txn: _Txn, now: float) -> list[Effect]:
        state = txn.st.state
        if state is PartState.PREPARED:
            txn.st.move(PartState.UNCERTAIN, "decision overdue: asking the others", now)
            return [*self._queries(txid, txn, now), Checkpoint(PartStep.UNCERTAIN, txid)]
        if state is PartState.UNCERTAIN and self.config.use_store:
            return self._resolve(txid, txn, "termination round over", now)
        if state is PartState.RESOLVING:
            txn.timer = now + self.config.store_retry
            # Keep asking peers too: one of them may have learned the outcome.
            return [ResolveDecision(txid, Decision.ABORT),
                    *self._queries(txid, txn, now, timer=False)]
        return self._queries(txid, txn, now)  # textbook mode: ask again, forever

    def _queries(self, txid: TxId, txn: _Txn, now: float, *, timer: bool = True) -> list[Effect]:
        if timer:
            txn.timer = now + self.config.query_retry
        txn.answers.clear()
        targets = [p for p in txn.participants if p != self.name]
        if txn.coordinator is not None:
            targets.insert(0, txn.coordinator)
        return [Send(p, DecisionQuery(txid, self.name)) for p in targets]

    def _resolve(self, txid: TxId, txn: _Txn, why: str, now: float) -> list[Effect]:
        txn.st.move(PartState.RESOLVING, f"asking the decision store: {why}", now)
        txn.timer = now + self.config.store_retry
        return [ResolveDecision(txid, Decision.ABORT)]

    # ------------------------------------------------------------------ helpers

    def _new(self, txid: TxId, now: float) -> _Txn:
        txn = _Txn(Tracked(f"participant {self.name}", txid, PART_MOVES))
        txn.st.move(PartState.INIT, "first heard of", now)
        self._txns[txid] = txn
        return txn

    def _lock(self, txid: TxId, keys: Iterable[str]) -> None:
        for key in keys:
            self._locks[key] = txid

    def _unlock(self, txid: TxId) -> None:
        for key in [k for k, t in self._locks.items() if t == txid]:
            del self._locks[key]

    def _restore(self, change: Change) -> None:
        if change.value is None:
            self._data.pop(change.key, None)
        else:
            self._data[change.key] = change.value


def _decided(decision: Decision) -> PartState:
    return PartState.COMMITTED if decision is Decision.COMMIT else PartState.ABORTED
