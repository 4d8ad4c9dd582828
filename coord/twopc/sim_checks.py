"""Safety and liveness checks for simulated 2PC runs.

Checked on every durable decision (as it is written):
* agreement: every decision recorded anywhere (coordinator log, participant
  logs, the decision store) for a transaction is the same;
* validity: COMMIT is recorded only when every participant of the
  transaction has its PreparedRecord on stable storage (it voted READY).

Checked when the run has converged (`final`):
* termination: the coordinator ENDED every transaction it began, and no
  participant is still prepared (no decision, locks held);
* atomicity of the data: a committed transaction's writes are at every one
  of its participants, an aborted one's at none of them, and each
  participant's in-memory data equals what its log would recover.

A violation raises `SafetyViolation` naming the seed and the recent events,
so the run can be replayed exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from coord.twopc.coordinator import Coordinator
from coord.twopc.log import MemoryLog
from coord.twopc.participant import Participant
from coord.twopc.records import DecisionRecord, LogRecord, PreparedRecord
from coord.twopc.types import CoordState, Decision, NodeName, TxId


class SafetyViolation(AssertionError):
    """A 2PC property failed in a simulated run."""


@dataclass(frozen=True, slots=True)
class TxnPlan:
    """What the simulated client asked for (the checker's ground truth)."""

    txid: TxId
    participants: tuple[NodeName, ...]
    marker_key: str  # written at every participant: present iff committed
    marker_value: bytes


class TwoPcChecker:
    def __init__(self, seed: int, plans: Mapping[TxId, TxnPlan]) -> None:
        self.seed = seed
        self.plans = plans
        self.decided: dict[TxId, tuple[Decision, str]] = {}  # first decision and who wrote it
        self.events: deque[str] = deque(maxlen=30)  # recent events, for failure messages

    def fail(self, what: str) -> SafetyViolation:
        return SafetyViolation(f"seed={self.seed}: {what}\nrecent events:\n  "
                               + "\n  ".join(self.events))

    def on_decision(self, txid: TxId, decision: Decision, where: str,
                    logs: Mapping[NodeName, MemoryLog]) -> None:
        first = self.decided.get(txid)
        if first is None:
            self.decided[txid] = (decision, where)
        elif first[0] is not decision:
            raise self.fail(f"agreement: {txid} is {first[0].name} at {first[1]} "
                            f"but {decision.name} at {where}")
        if decision is Decision.COMMIT:
            self._check_all_prepared(txid, where, logs)

    def on_persist(self, node: NodeName, record: LogRecord,
                   logs: Mapping[NodeName, MemoryLog]) -> None:
        if isinstance(record, DecisionRecord):
            self.on_decision(record.txid, record.decision, f"{node}'s log", logs)

    def _check_all_prepared(self, txid: TxId, where: str,
                            logs: Mapping[NodeName, MemoryLog]) -> None:
        plan = self.plans.get(txid)
        if plan is None:
            raise self.fail(f"COMMIT of unknown transaction {txid} at {where}")
        for p in plan.participants:
            if not any(isinstance(r, PreparedRecord) and r.txid == txid
                       for r in logs[p].durable_records()):
                raise self.fail(f"validity: {txid} COMMIT at {where} but {p} never "
                                "prepared (voted READY)")

    # ------------------------------------------------------------------ at the end

    def final(self, coordinator: Coordinator, participants: Mapping[NodeName, Participant],
              logs: Mapping[NodeName, MemoryLog], begun: Sequence[TxId]) -> None:
        for txid in begun:
            if coordinator.state(txid) is not CoordState.ENDED:
                raise self.fail(f"termination: coordinator left {txid} in "
                                f"{coordinator.state(txid)}: {coordinator.history(txid)}")
        for name, part in participants.items():
            if part.undecided():
                txid = part.undecided()[0]
                raise self.fail(f"termination: {name} still prepared for {part.undecided()}: "
                                f"{part.history(txid)}")
            if part.locks:
                raise self.fail(f"{name} holds locks after every transaction ended: "
                                f"{dict(part.locks)}")
            if dict(part.data) != logs[name].data():
                raise self.fail(f"{name}: memory and log disagree on the data")
        for txid in begun:
            self._check_atomic(txid, participants)

    def _check_atomic(self, txid: TxId, participants: Mapping[NodeName, Participant]) -> None:
        plan = self.plans[txid]
        decision = self.decided.get(txid, (None, ""))[0]
        for p in plan.participants:
            have = participants[p].data.get(plan.marker_key)
            if participants[p].decision(txid) is not decision:
                raise self.fail(f"{p} decided {participants[p].decision(txid)} for {txid}, "
                                f"the transaction is {decision}")
            want = plan.marker_value if decision is Decision.COMMIT else None
            if have != want:
                raise self.fail(f"atomicity: {txid} is {decision} but {p} has "
                                f"{plan.marker_key}={have!r}")
