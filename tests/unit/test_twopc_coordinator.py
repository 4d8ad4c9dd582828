"""The 2PC coordinator core: exact effects for each event, its timers, and its
recovery table (one test per logged state), in both modes (with the decision
store, and the textbook protocol without it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from coord.twopc.coordinator import Coordinator
from coord.twopc.machine import TransitionError
from coord.twopc.messages import Ack, DecisionMsg, DecisionQuery, Prepare, QueryReply, VoteMsg
from coord.twopc.records import (
    BeginRecord,
    Checkpoint,
    DecisionRecord,
    Effect,
    EndRecord,
    LogRecord,
    Persist,
    ResolveDecision,
    Send,
)
from coord.twopc.types import (
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

C, P1, P2 = NodeName("c"), NodeName("p1"), NodeName("p2")
T = TxId("t1")
CFG = TwoPcConfig(vote_timeout=10, prepare_retry=2, ack_retry=3, decision_timeout=5,
                  query_retry=2, store_retry=4)
CLASSIC = dataclasses.replace(CFG, use_store=False)
WORK = {P1: (Write("a", b"1"),), P2: (Write("b", b"2"),)}


def begun(config: TwoPcConfig = CFG) -> Coordinator:
    coord = Coordinator(C, config)
    coord.begin(T, WORK, 0.0)
    return coord


def sends(effects: Sequence[Effect]) -> list[tuple[str, object]]:
    return [(e.to, e.msg) for e in effects if isinstance(e, Send)]


def test_begin_forces_begin_record_before_any_prepare() -> None:
    coord = Coordinator(C, CFG)
    effects = coord.begin(T, WORK, 0.0)
    assert effects == [
        Persist(BeginRecord(T, (P1, P2))),
        Checkpoint(CoordStep.BEFORE_PREPARE, T),
        Send(P1, Prepare(T, C, (P1, P2), WORK[P1])),
        Send(P2, Prepare(T, C, (P1, P2), WORK[P2])),
        Checkpoint(CoordStep.AFTER_PREPARE_SENT, T),
    ]
    assert coord.state(T) is CoordState.PREPARING
    assert coord.begin(T, WORK, 1.0) == []  # a retried request changes nothing


def test_begin_refuses_an_empty_transaction_or_itself_as_participant() -> None:
    with pytest.raises(ValueError):
        Coordinator(C, CFG).begin(T, {}, 0.0)
    with pytest.raises(ValueError):
        Coordinator(C, CFG).begin(T, {C: ()}, 0.0)


def test_all_ready_proposes_commit_to_the_store_then_logs_then_sends() -> None:
    coord = begun()
    assert coord.receive(VoteMsg(T, P1, Vote.READY), 1.0) == []
    assert coord.receive(VoteMsg(T, P2, Vote.READY), 1.0) == [
        Checkpoint(CoordStep.BEFORE_DECISION_RECORDED, T),
        ResolveDecision(T, Decision.COMMIT),
    ]
    assert coord.state(T) is CoordState.DECIDING
    assert coord.receive(DecisionQuery(T, P1), 1.5) == []  # undecided: no answer yet
    assert coord.store_answer(T, Decision.COMMIT, 2.0) == [
        Checkpoint(CoordStep.BEFORE_DECISION_LOGGED, T),
        Persist(DecisionRecord(T, Decision.COMMIT)),
        Checkpoint(CoordStep.AFTER_DECISION_LOGGED, T),
        Send(P1, DecisionMsg(T, C, Decision.COMMIT)),
        Send(P2, DecisionMsg(T, C, Decision.COMMIT)),
        Checkpoint(CoordStep.AFTER_DECISION_SENT, T),
    ]
    assert coord.store_answer(T, Decision.COMMIT, 2.1) == []  # duplicate answer


def test_the_store_answer_wins_over_the_proposal() -> None:
    """A participant recorded ABORT first: the coordinator's COMMIT must become ABORT."""
    coord = begun()
    coord.receive(VoteMsg(T, P1, Vote.READY), 1.0)
    coord.receive(VoteMsg(T, P2, Vote.READY), 1.0)
    effects = coord.store_answer(T, Decision.ABORT, 2.0)
    assert Persist(DecisionRecord(T, Decision.ABORT)) in effects
    assert sends(effects) == [(P1, DecisionMsg(T, C, Decision.ABORT)),
                              (P2, DecisionMsg(T, C, Decision.ABORT))]
    assert coord.decision(T) is Decision.ABORT


def test_textbook_mode_logs_the_decision_without_a_store() -> None:
    coord = begun(CLASSIC)
    coord.receive(VoteMsg(T, P1, Vote.READY), 1.0)
    effects = coord.receive(VoteMsg(T, P2, Vote.READY), 1.0)
    assert not any(isinstance(e, ResolveDecision) for e in effects)
    persist = effects.index(Persist(DecisionRecord(T, Decision.COMMIT)))
    first_send = next(i for i, e in enumerate(effects) if isinstance(e, Send))
    assert persist < first_send  # logged (forced) before it is sent
    assert coord.state(T) is CoordState.COMMITTED


def test_one_abort_vote_decides_abort_at_once() -> None:
    coord = begun(CLASSIC)
    effects = coord.receive(VoteMsg(T, P1, Vote.ABORT), 1.0)
    assert Persist(DecisionRecord(T, Decision.ABORT)) in effects
    assert coord.decision(T) is Decision.ABORT
    # A READY arriving afterwards gets the decision, it does not change it.
    assert coord.receive(VoteMsg(T, P2, Vote.READY), 1.5) == [
        Send(P2, DecisionMsg(T, C, Decision.ABORT))]


def test_silent_participants_get_prepare_again_then_the_vote_timeout_aborts() -> None:
    coord = begun()
    coord.receive(VoteMsg(T, P1, Vote.READY), 1.0)
    assert coord.next_wakeup() == 2.0
    assert coord.tick(1.9) == []
    assert sends(coord.tick(2.0)) == [(P2, Prepare(T, C, (P1, P2), WORK[P2]))]
    assert coord.tick(9.9) != []  # another resend, still no decision
    assert coord.state(T) is CoordState.PREPARING
    assert coord.tick(10.0) == [Checkpoint(CoordStep.BEFORE_DECISION_RECORDED, T),
                                ResolveDecision(T, Decision.ABORT)]
    assert coord.tick(13.9) == []
    assert coord.tick(14.0) == [ResolveDecision(T, Decision.ABORT)]  # the store did not answer


def test_end_is_written_after_every_ack_and_not_forced() -> None:
    coord = begun(CLASSIC)
    coord.receive(VoteMsg(T, P1, Vote.READY), 1.0)
    coord.receive(VoteMsg(T, P2, Vote.READY), 1.0)
    assert coord.receive(Ack(T, P1, Decision.ABORT), 1.5) == []  # wrong outcome: ignored
    assert coord.receive(Ack(T, P1, Decision.COMMIT), 2.0) == []
    # P2 has not ACKed: it alone gets the decision again after ack_retry.
    assert sends(coord.tick(4.0)) == [(P2, DecisionMsg(T, C, Decision.COMMIT))]
    assert coord.receive(Ack(T, P2, Decision.COMMIT), 5.0) == [
        Checkpoint(CoordStep.BEFORE_END, T),
        Persist(EndRecord(T), sync=False),
    ]
    assert coord.state(T) is CoordState.ENDED
    assert coord.next_wakeup() == float("inf")


def test_termination_queries_are_answered_once_decided_and_unknown_is_abort() -> None:
    coord = begun(CLASSIC)
    coord.receive(VoteMsg(T, P1, Vote.ABORT), 1.0)
    assert coord.receive(DecisionQuery(T, P2), 2.0) == [
        Send(P2, QueryReply(T, C, Answer.ABORT))]
    other = TxId("never-begun")
    assert coord.receive(DecisionQuery(other, P2), 2.0) == [
        Send(P2, QueryReply(other, C, Answer.ABORT))]  # presumed abort


# --------------------------------------------------------------------------- recovery table


def test_recovery_with_an_empty_log_has_nothing_to_do() -> None:
    coord, effects = Coordinator.recover(C, CFG, [], 0.0)
    assert effects == [] and coord.transactions() == {}


def test_recovery_of_begin_without_decision_aborts_through_the_store() -> None:
    coord, effects = Coordinator.recover(C, CFG, [BeginRecord(T, (P1, P2))], 0.0)
    assert effects == [Checkpoint(CoordStep.BEFORE_DECISION_RECORDED, T),
                       ResolveDecision(T, Decision.ABORT)]
    # The COMMIT it recorded just before crashing is honoured.
    effects = coord.store_answer(T, Decision.COMMIT, 1.0)
    assert Persist(DecisionRecord(T, Decision.COMMIT)) in effects


def test_recovery_of_begin_without_decision_aborts_in_textbook_mode() -> None:
    _, effects = Coordinator.recover(C, CLASSIC, [BeginRecord(T, (P1, P2))], 0.0)
    assert Persist(DecisionRecord(T, Decision.ABORT)) in effects
    assert sends(effects) == [(P1, DecisionMsg(T, C, Decision.ABORT)),
                              (P2, DecisionMsg(T, C, Decision.ABORT))]


def test_recovery_of_a_decision_without_end_resends_it_to_everyone() -> None:
    log: list[LogRecord] = [BeginRecord(T, (P1, P2)), DecisionRecord(T, Decision.COMMIT)]
    coord, effects = Coordinator.recover(C, CFG, log, 0.0)
    assert effects == [Send(P1, DecisionMsg(T, C, Decision.COMMIT)),
                       Send(P2, DecisionMsg(T, C, Decision.COMMIT))]
    assert coord.state(T) is CoordState.COMMITTED


def test_recovery_of_an_ended_transaction_sends_nothing_but_still_answers() -> None:
    log: list[LogRecord] = [BeginRecord(T, (P1, P2)), DecisionRecord(T, Decision.ABORT),
                            EndRecord(T)]
    coord, effects = Coordinator.recover(C, CFG, log, 0.0)
    assert effects == [] and coord.state(T) is CoordState.ENDED
    assert coord.receive(DecisionQuery(T, P1), 1.0) == [Send(P1, QueryReply(T, C, Answer.ABORT))]


def test_an_impossible_log_raises_with_the_history() -> None:
    with pytest.raises(TransitionError) as exc:
        Coordinator.recover(C, CFG, [BeginRecord(T, (P1,)), EndRecord(T)], 0.0)
    assert exc.value.txid == T
    assert any("log: BEGIN" in h for h in exc.value.history)
    assert "PREPARING -> ENDED" in str(exc.value)
