"""The 2PC participant core: voting (work, undo/redo, locks), applying decisions,
cooperative termination (textbook blocking, and resolution through the
decision store), and recovery from its log."""

from __future__ import annotations

import dataclasses

import pytest

from coord.twopc.machine import TransitionError
from coord.twopc.messages import Ack, DecisionMsg, DecisionQuery, Prepare, QueryReply, VoteMsg
from coord.twopc.participant import Participant
from coord.twopc.records import (
    Change,
    Checkpoint,
    DecisionRecord,
    LogRecord,
    Persist,
    PreparedRecord,
    ResolveDecision,
    Send,
)
from coord.twopc.types import (
    Answer,
    Decision,
    NodeName,
    PartState,
    PartStep,
    TwoPcConfig,
    TxId,
    Vote,
    Write,
)

C, P1, P2, P3 = NodeName("c"), NodeName("p1"), NodeName("p2"), NodeName("p3")
T, U = TxId("t1"), TxId("t2")
CFG = TwoPcConfig(vote_timeout=10, prepare_retry=2, ack_retry=3, decision_timeout=5,
                  query_retry=2, store_retry=4)
CLASSIC = dataclasses.replace(CFG, use_store=False)
EVERYONE = (P1, P2, P3)
WRITES = (Write("a", b"new"), Write("fresh", b"x"))


def prepared(config: TwoPcConfig = CFG) -> Participant:
    part = Participant(P1, config, {"a": b"old"})
    part.receive(Prepare(T, C, EVERYONE, WRITES), 0.0)
    return part


def test_prepare_does_the_work_forces_undo_redo_then_votes_ready() -> None:
    part = Participant(P1, CFG, {"a": b"old"})
    effects = part.receive(Prepare(T, C, EVERYONE, WRITES), 0.0)
    undo = (Change("a", b"old"), Change("fresh", None))
    redo = (Change("a", b"new"), Change("fresh", b"x"))
    assert effects == [
        Checkpoint(PartStep.BEFORE_PREPARE_LOGGED, T),
        Persist(PreparedRecord(T, C, EVERYONE, undo, redo), writes=redo),
        Checkpoint(PartStep.AFTER_PREPARE_LOGGED, T),
        Send(C, VoteMsg(T, P1, Vote.READY)),
        Checkpoint(PartStep.AFTER_VOTE, T),
    ]
    assert part.state(T) is PartState.PREPARED
    assert dict(part.data) == {"a": b"new", "fresh": b"x"}  # in place, locked
    assert dict(part.locks) == {"a": T, "fresh": T}


def test_a_failed_check_forces_abort_and_votes_abort() -> None:
    part = Participant(P1, CFG, {"balance": b"10"})
    effects = part.receive(
        Prepare(T, C, EVERYONE, (Write("balance", b"0", expect=b"20", check=True),)), 0.0)
    assert effects == [Persist(DecisionRecord(T, Decision.ABORT)),
                       Send(C, VoteMsg(T, P1, Vote.ABORT))]
    assert dict(part.data) == {"balance": b"10"} and not part.locks
    # A retransmitted PREPARE gets the same vote.
    assert part.receive(Prepare(T, C, EVERYONE, ()), 1.0) == [Send(C, VoteMsg(T, P1, Vote.ABORT))]


def test_a_key_locked_by_a_prepared_transaction_makes_others_vote_abort() -> None:
    part = prepared()
    effects = part.receive(Prepare(U, C, EVERYONE, (Write("a", b"other"),)), 1.0)
    assert effects[-1] == Send(C, VoteMsg(U, P1, Vote.ABORT))
    assert part.data["a"] == b"new"


def test_commit_writes_its_record_releases_locks_and_acks() -> None:
    part = prepared()
    effects = part.receive(DecisionMsg(T, C, Decision.COMMIT), 1.0)
    assert effects == [Persist(DecisionRecord(T, Decision.COMMIT)),
                       Checkpoint(PartStep.AFTER_DECISION_LOGGED, T),
                       Send(C, Ack(T, P1, Decision.COMMIT)),
                       Checkpoint(PartStep.AFTER_ACK, T)]
    assert dict(part.data) == {"a": b"new", "fresh": b"x"} and not part.locks
    # A duplicate decision is ACKed again and changes nothing.
    assert part.receive(DecisionMsg(T, C, Decision.COMMIT), 2.0) == [
        Send(C, Ack(T, P1, Decision.COMMIT))]


def test_abort_rolls_back_from_the_undo_images_in_the_same_write() -> None:
    part = prepared()
    effects = part.receive(DecisionMsg(T, C, Decision.ABORT), 1.0)
    undo = (Change("a", b"old"), Change("fresh", None))
    assert effects[0] == Persist(DecisionRecord(T, Decision.ABORT), writes=undo)
    assert dict(part.data) == {"a": b"old"} and not part.locks


def test_abort_for_a_transaction_never_seen_is_logged_so_a_late_prepare_is_refused() -> None:
    part = Participant(P1, CFG)
    assert part.receive(DecisionMsg(T, C, Decision.ABORT), 0.0)[0] == Persist(
        DecisionRecord(T, Decision.ABORT))
    assert part.receive(Prepare(T, C, EVERYONE, WRITES), 1.0) == [
        Send(C, VoteMsg(T, P1, Vote.ABORT))]
    assert not part.data


def test_commit_for_a_transaction_never_prepared_is_ignored() -> None:
    part = Participant(P1, CFG)
    assert part.receive(DecisionMsg(T, C, Decision.COMMIT), 0.0) == []
    assert part.state(T) is None


def test_a_conflicting_decision_raises_with_history() -> None:
    part = prepared()
    part.receive(DecisionMsg(T, C, Decision.ABORT), 1.0)
    with pytest.raises(TransitionError) as exc:
        part.receive(DecisionMsg(T, C, Decision.COMMIT), 2.0)
    assert "ABORTED -> COMMITTED" in str(exc.value)
    assert any("work done" in h for h in exc.value.history)


# --------------------------------------------------------------------------- termination


def test_an_overdue_decision_starts_termination_with_the_coordinator_and_peers() -> None:
    part = prepared()
    assert part.next_wakeup() == 5.0
    assert part.tick(4.9) == []
    assert part.tick(5.0) == [Send(C, DecisionQuery(T, P1)), Send(P2, DecisionQuery(T, P1)),
                              Send(P3, DecisionQuery(T, P1)), Checkpoint(PartStep.UNCERTAIN, T)]
    assert part.state(T) is PartState.UNCERTAIN


def test_a_peer_that_knows_the_decision_resolves_it() -> None:
    part = prepared()
    part.tick(5.0)
    effects = part.receive(QueryReply(T, P2, Answer.COMMIT), 5.5)
    assert Persist(DecisionRecord(T, Decision.COMMIT)) in effects
    assert Send(C, Ack(T, P1, Decision.COMMIT)) in effects  # the coordinator may END sooner
    assert part.state(T) is PartState.COMMITTED


def test_a_peer_that_has_not_voted_aborts_unilaterally_and_says_so() -> None:
    peer = Participant(P2, CFG)
    assert peer.receive(DecisionQuery(T, P1), 0.0) == [
        Persist(DecisionRecord(T, Decision.ABORT)),  # forced before the answer
        Send(P1, QueryReply(T, P2, Answer.ABORT)),
    ]
    assert peer.state(T) is PartState.ABORTED
    # It can no longer vote READY for that transaction.
    assert peer.receive(Prepare(T, C, EVERYONE, WRITES), 1.0) == [
        Send(C, VoteMsg(T, P2, Vote.ABORT))]


def test_prepared_peers_answer_uncertain_and_decided_peers_answer_the_decision() -> None:
    part = prepared()
    assert part.receive(DecisionQuery(T, P2), 1.0) == [
        Send(P2, QueryReply(T, P1, Answer.UNCERTAIN))]
    part.receive(DecisionMsg(T, C, Decision.ABORT), 2.0)
    assert part.receive(DecisionQuery(T, P2), 3.0) == [Send(P2, QueryReply(T, P1, Answer.ABORT))]


def test_textbook_termination_blocks_when_every_peer_is_uncertain() -> None:
    part = prepared(CLASSIC)
    part.tick(5.0)
    part.receive(QueryReply(T, P2, Answer.UNCERTAIN), 5.5)
    assert not part.blocked(T)  # P3 has not answered yet
    assert part.receive(QueryReply(T, P3, Answer.UNCERTAIN), 5.6) == []
    assert part.blocked(T)
    for now in range(7, 200, 2):  # it keeps asking, and never decides on its own
        effects = part.tick(float(now))
        assert effects and all(isinstance(e, Send) for e in effects)
        assert not any(isinstance(e, Persist | ResolveDecision) for e in effects)
    assert part.state(T) is PartState.UNCERTAIN and part.locks


def test_with_the_store_an_all_uncertain_round_goes_to_the_store_at_once() -> None:
    part = prepared()
    part.tick(5.0)
    part.receive(QueryReply(T, P2, Answer.UNCERTAIN), 5.5)
    assert part.receive(QueryReply(T, P3, Answer.UNCERTAIN), 5.6) == [
        ResolveDecision(T, Decision.ABORT)]
    assert part.state(T) is PartState.RESOLVING
    effects = part.store_answer(T, Decision.COMMIT, 6.0)  # the coordinator recorded COMMIT
    assert effects[0] == Persist(DecisionRecord(T, Decision.COMMIT))
    assert part.state(T) is PartState.COMMITTED


def test_with_the_store_silent_peers_send_it_to_the_store_after_a_round() -> None:
    part = prepared()
    part.tick(5.0)
    assert part.tick(7.0) == [ResolveDecision(T, Decision.ABORT)]
    # No answer: ask the store again, and the peers too.
    effects = part.tick(11.0)
    assert effects[0] == ResolveDecision(T, Decision.ABORT)
    assert Send(P2, DecisionQuery(T, P1)) in effects
    part.store_answer(T, Decision.ABORT, 12.0)
    assert dict(part.data) == {"a": b"old"}


# --------------------------------------------------------------------------- recovery


def test_recovery_of_a_prepared_transaction_relocks_and_says_ready_again() -> None:
    undo = (Change("a", b"old"),)
    redo = (Change("a", b"new"),)
    log = [PreparedRecord(T, C, EVERYONE, undo, redo)]
    part, effects = Participant.recover(P1, CFG, log, {"a": b"new"}, 10.0)
    assert effects == [Send(C, VoteMsg(T, P1, Vote.READY))]
    assert part.state(T) is PartState.PREPARED and dict(part.locks) == {"a": T}
    assert part.next_wakeup() == 15.0
    part.receive(DecisionMsg(T, C, Decision.ABORT), 11.0)
    assert dict(part.data) == {"a": b"old"}  # the undo image survived the crash


def test_recovery_of_a_decided_transaction_has_nothing_open() -> None:
    log: list[LogRecord] = [
        PreparedRecord(T, C, EVERYONE, (), (Change("a", b"new"),)),
           DecisionRecord(T, Decision.COMMIT), DecisionRecord(U, Decision.ABORT)]
    part, effects = Participant.recover(P1, CFG, log, {"a": b"new"}, 0.0)
    assert effects == [] and not part.locks and part.undecided() == []
    assert part.state(T) is PartState.COMMITTED and part.state(U) is PartState.ABORTED
