"""The two-phase commit of chunk mutations as pure rules (fs/chunk/twopc.py,
fs/chunk/ordering.py, fs/chunk/intent.py): the primary's round, its serial
book, the settling plan of a new primary, and the replicas' admission of
prepares and decisions.

The settling plan is also checked against generated histories: an old
primary prepares and decides serials with arbitrary message losses and dies
at an arbitrary point; whatever happened, after the plan every replica that
stays has the same committed mutations, none undecided, every mutation the
client was told about is committed, and nothing a replica applied is rolled
back."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coord.lease import FencingToken
from fs.chunk import protocol as p
from fs.chunk.intent import Intent, IntentStatus, committed
from fs.chunk.ordering import Admit, ChunkGate, Duplicate, Reject, ReplicaState, Wait
from fs.chunk.twopc import (
    UNREACHABLE,
    Book,
    Decision,
    Finished,
    Outcome,
    Phase,
    Refuse,
    Resolution,
    Round,
    Step,
    TransitionError,
    plan_resolution,
)
from fs.types import ChunkHandle, ChunkVersion

H = ChunkHandle(7)
T = FencingToken
A, B, C = "a:1", "b:1", "c:1"


def ok(*addresses: str) -> list[Outcome]:
    return [Outcome(a) for a in addresses]


# ---- the round ---------------------------------------------------------------------


def test_every_replica_prepared_commits_and_reports_nothing() -> None:
    r = Round((T(5), 3), A, [B, C])
    assert r.voters == [A, B, C]
    assert r.voted(ok(A, B, C)) is Decision.COMMIT and r.phase is Phase.COMMITTING
    assert r.deciders == [A, B, C]
    assert r.acknowledged(ok(A, B, C)) == Finished(3, (), committed=True)
    assert r.phase.value == "done"


def test_one_missing_vote_aborts_everywhere_and_names_the_replica() -> None:
    r = Round((T(5), 1), A, [B, C])
    assert r.voted([Outcome(A), Outcome(C)]) is Decision.ABORT  # B never answered
    assert r.deciders == [A, B, C]  # B is told too: it may be alive and prepared
    assert r.acknowledged(ok(A, C)) == Finished(1, (B,), committed=False)


def test_a_replica_refusing_to_prepare_is_reported_in_replica_order() -> None:
    r = Round((T(5), 1), A, [B, C])
    r.voted([Outcome(A), Outcome(C, p.CHECKSUM), Outcome(B, p.EIO)])
    assert r.acknowledged(ok(A, B, C)) == Finished(1, (B, C), committed=False)


@pytest.mark.parametrize("code", [p.STALE_TOKEN, p.STALE_VERSION, p.ENOSPC, p.IN_DOUBT,
                                  p.NO_DATA])
def test_refusals_about_the_whole_write_reach_the_client(code: str) -> None:
    r = Round((T(5), 1), A, [B, C])
    r.voted([Outcome(A), Outcome(B, UNREACHABLE), Outcome(C, code, "why")])
    reply = r.acknowledged(ok(A, B, C))
    assert reply == Refuse(code, "why")  # nothing committed; not a replica to drop


def test_the_primarys_own_failure_is_a_replica_fault_or_a_refusal() -> None:
    r = Round((T(5), 1), A, [B])
    r.voted([Outcome(A, p.EIO), Outcome(B)])
    assert r.acknowledged(ok(A, B)) == Finished(1, (A,), committed=False)
    r = Round((T(5), 2), A, [B])
    r.voted([Outcome(A, p.NOT_PRIMARY, "no"), Outcome(B)])
    assert r.acknowledged(ok(A, B)) == Refuse(p.NOT_PRIMARY, "no")


def test_a_commit_not_confirmed_is_reported_and_a_fenced_one_is_stale() -> None:
    r = Round((T(5), 4), A, [B, C])
    r.voted(ok(A, B, C))
    acks = [Outcome(A), Outcome(B, UNREACHABLE)]  # C's answer never came
    assert r.failed_to_hear(acks) == {B, C}
    assert r.acknowledged(acks) == Finished(4, (B, C), committed=True)
    r = Round((T(5), 5), A, [B, C])
    r.voted(ok(A, B, C))
    refused = r.acknowledged([Outcome(A), Outcome(B, p.STALE_TOKEN), Outcome(C)])
    assert isinstance(refused, Refuse) and refused.code == p.STALE_TOKEN


def test_a_broken_replica_is_not_asked_and_makes_the_round_abort() -> None:
    r = Round((T(5), 6), A, [B, C], broken={C, "elsewhere:1"})
    assert r.voters == [A, B] and r.deciders == [A, B]
    assert r.voted(ok(A, B)) is Decision.ABORT
    assert r.acknowledged(ok(A, B)) == Finished(6, (C,), committed=False)


def test_a_round_refuses_to_be_driven_out_of_order() -> None:
    r = Round((T(5), 1), A, [])
    with pytest.raises(TransitionError):
        r.acknowledged(ok(A))
    r.voted(ok(A))
    with pytest.raises(TransitionError) as info:
        r.voted(ok(A))
    assert "all prepared" in str(info.value)  # the history is in the error


# ---- the book ----------------------------------------------------------------------


def test_book_hands_out_serials_once_and_releases_decisions_in_order() -> None:
    book = Book(T(5), next_serial=4, decided=3)
    assert [book.assign() for _ in range(3)] == [4, 5, 6]
    assert book.ready_to_decide(4) and not book.ready_to_decide(5)
    book.finish(5)  # 5 finished first: 6 still waits for 4
    assert book.decided == 3 and not book.ready_to_decide(6)
    book.finish(4)
    assert book.decided == 5 and book.ready_to_decide(6)


# ---- admission at the replicas -----------------------------------------------------


def _st(token: int = 5, serial: int = 3, version: int = 2) -> ReplicaState:
    return ReplicaState(H, ChunkVersion(version), 100, T(token), serial)


def test_prepare_admission() -> None:
    g = ChunkGate({H: T(5)})
    a = g.prepare(_st(), H, ChunkVersion(2), T(5), 7, older_undecided=False, primary=False)
    assert a == Admit(7, ChunkVersion(2), T(5), False)  # any undecided serial, any order
    r = g.prepare(_st(), H, ChunkVersion(2), T(5), 3, older_undecided=False, primary=False)
    assert isinstance(r, Reject) and r.code == p.OUT_OF_ORDER  # decided already
    r = g.prepare(_st(), H, ChunkVersion(2), T(6), 1, older_undecided=True, primary=False)
    assert isinstance(r, Reject) and r.code == p.IN_DOUBT
    r = g.prepare(_st(), H, ChunkVersion(1), T(6), 1, older_undecided=False, primary=False)
    assert isinstance(r, Reject) and r.code == p.STALE_VERSION
    r = g.prepare(_st(), H, ChunkVersion(2), T(4), 9, older_undecided=False, primary=False)
    assert isinstance(r, Reject) and r.code == p.STALE_TOKEN
    r = g.prepare(_st(), H, ChunkVersion(2), T(5), 8, older_undecided=False, primary=True)
    assert isinstance(r, Reject) and r.code == p.NOT_PRIMARY  # a secondary under token 5


def test_decision_admission_in_serial_order_and_fenced() -> None:
    g = ChunkGate({H: T(5)})
    assert g.decide(_st(), H, T(5), T(5), 4) == Admit(4, ChunkVersion(2), T(5), False)
    assert g.decide(_st(), H, T(5), T(5), 6) == Wait(4)
    assert g.decide(_st(), H, T(5), T(5), 2) == Duplicate(2)
    assert isinstance(g.decide(_st(), H, T(5), T(6), 1), Reject)  # token above its fence
    r = g.decide(_st(), H, T(5), T(5), 4, older_undecided=True)
    assert isinstance(r, Reject) and r.code == p.IN_DOUBT
    assert g.fence(H, T(8)) == Admit(0, ChunkVersion(0), T(8), True)  # a new primary asks
    r = g.decide(_st(), H, T(5), T(5), 4)  # the old primary, after the fence
    assert isinstance(r, Reject) and r.code == p.STALE_TOKEN
    a = g.decide(_st(), H, T(8), T(5), 4)  # the new primary settles the old mutation
    assert isinstance(a, Admit) and a.token == 8
    r = g.decide(_st(token=8, serial=1), H, T(8), T(5), 4)
    assert isinstance(r, Reject) and r.code == p.OUT_OF_ORDER  # moved past token 5
    assert isinstance(g.fence(H, T(7)), Reject)


def test_intents_overlap_and_the_decision_record() -> None:
    w = Intent(H, T(5), 1, ChunkVersion(2), 100, 50, False)
    assert w.overlaps(149, 10) and w.overlaps(0, 101) and not w.overlaps(150, 10)
    assert not w.overlaps(0, 100) and not w.overlaps(120, 0)
    t = Intent(H, T(5), 2, ChunkVersion(2), 1000, 0, True)
    assert t.overlaps(999, 2) and t.overlaps(5000, 1) and not t.overlaps(0, 1000)
    assert w.undecided and not Intent(H, T(5), 1, ChunkVersion(2), 0, 0, False,
                                      IntentStatus.APPLIED).undecided
    assert committed(5, 4, {2}, (T(5), 3)) is True
    assert committed(5, 4, {2}, (T(5), 2)) is False  # aborted
    assert committed(5, 4, set(), (T(5), 5)) is False  # not decided here (yet)
    assert committed(4, 9, set(), (T(5), 1)) is False  # never heard of token 5
    assert committed(6, 1, set(), (T(5), 1)) is None  # moved on: cannot tell


# ---- settling a dead primary's mutations ---------------------------------------------


def rep(token: int, serial: int, aborted: list[int] | None = None,
        prepared: list[tuple[int, int]] | None = None) -> p.IntentsReply:
    return p.IntentsReply(True, ChunkVersion(3), T(token), serial, aborted or [],
                          prepared or [])


def test_some_replica_committed_so_everyone_commits() -> None:
    plan = plan_resolution(T(9), {A: rep(5, 4), B: rep(5, 3, prepared=[(5, 4)]),
                                  C: rep(5, 2, prepared=[(5, 3), (5, 4)])}, [A, B, C])
    assert isinstance(plan, Resolution) and plan.failed == ()
    assert plan.steps == {A: (), B: (Step(T(5), 4, Decision.COMMIT),),
                          C: (Step(T(5), 3, Decision.COMMIT), Step(T(5), 4, Decision.COMMIT))}
    assert plan.next_serial == 1 and plan.settled == 2


def test_nobody_committed_so_everyone_aborts() -> None:
    plan = plan_resolution(T(9), {A: rep(5, 2, prepared=[(5, 3)]),
                                  B: rep(5, 2, prepared=[(5, 3)]), C: rep(5, 2)}, [A, B, C])
    assert isinstance(plan, Resolution)
    abort = (Step(T(5), 3, Decision.ABORT),)
    assert plan.steps == {A: abort, B: abort, C: abort}  # C never got it: told anyway


def test_a_silent_replica_is_reported_before_anything_is_decided() -> None:
    plan = plan_resolution(T(9), {A: rep(5, 2, prepared=[(5, 3)]), B: None}, [A, B])
    assert isinstance(plan, Resolution)
    assert plan.failed == (B,) and plan.steps == {}


def test_a_replica_that_cannot_follow_is_reported() -> None:
    # C aborted serial 3 while A committed it (impossible with one decision per
    # serial, but a replica's bad state must not be papered over), and D never
    # got serial 3, which was committed: neither can stay.
    D = "d:1"
    plan = plan_resolution(T(9), {A: rep(5, 3), B: rep(5, 2, prepared=[(5, 3)]),
                                  C: rep(5, 3, aborted=[3]), D: rep(5, 2)}, [A, B, C, D])
    assert isinstance(plan, Resolution) and plan.failed == (C, D)
    assert plan.steps[B] == (Step(T(5), 3, Decision.COMMIT),)


def test_a_restarted_primary_settles_its_own_token_and_numbers_after_it() -> None:
    plan = plan_resolution(T(5), {A: rep(5, 4), B: rep(5, 4, prepared=[(5, 5), (5, 6)]),
                                  C: rep(5, 4, prepared=[(5, 6)])}, [A, B, C])
    assert isinstance(plan, Resolution) and plan.next_serial == 7
    assert plan.steps[C] == (Step(T(5), 5, Decision.ABORT), Step(T(5), 6, Decision.ABORT))


def test_an_intent_of_a_newer_token_means_the_resolver_is_stale() -> None:
    plan = plan_resolution(T(9), {A: rep(5, 1), B: rep(5, 1, prepared=[(11, 1)])}, [A, B])
    assert isinstance(plan, Refuse) and plan.code == p.STALE_TOKEN


# ---- generated histories -------------------------------------------------------------

REPLICAS = (A, B, C)
OLD = 5  # the dead primary's token
NEW = 9


@dataclass
class Model:
    """A replica as the protocol leaves it: decided serials of token OLD, in order."""

    applied: list[Decision] = field(default_factory=list)  # decision of serial k+1
    prepared: set[int] = field(default_factory=set)

    def report(self) -> p.IntentsReply:
        n = len(self.applied)
        aborted = [k + 1 for k, d in enumerate(self.applied) if d is Decision.ABORT]
        undecided = sorted(s for s in self.prepared if s > n)
        token = OLD if n else 3  # before the first decision it counts under an older lease
        serial = n if n else 11
        return p.IntentsReply(True, ChunkVersion(2), T(token), serial,
                              aborted if n else [], [(OLD, s) for s in undecided])

    def take(self, step: Step) -> None:
        assert step.token == OLD and step.serial == len(self.applied) + 1, step
        assert step.decision is Decision.ABORT or step.serial in self.prepared, step
        self.applied.append(step.decision)

    def committed(self) -> set[int]:
        return {k + 1 for k, d in enumerate(self.applied) if d is Decision.COMMIT}


serial_strategy = st.tuples(
    st.frozensets(st.sampled_from(REPLICAS)),  # who durably prepared it
    st.sampled_from(["commit", "abort", "none"]),  # what the old primary decided
    st.frozensets(st.sampled_from(REPLICAS)),  # who received the decision
)


@settings(max_examples=400, deadline=None)
@given(st.lists(serial_strategy, min_size=1, max_size=6),
       st.frozensets(st.sampled_from(REPLICAS), max_size=1))
def test_any_history_is_settled_the_same_way_everywhere(
    serials: list[tuple[frozenset[str], str, frozenset[str]]], silent: frozenset[str],
) -> None:
    models = {a: Model() for a in REPLICAS}
    acknowledged: set[int] = set()
    for k, (prepared, chosen, told) in enumerate(serials, start=1):
        everyone = prepared == set(REPLICAS)  # COMMIT needs every vote
        outcome = "abort" if chosen == "commit" and not everyone else chosen
        decision = {"commit": Decision.COMMIT, "abort": Decision.ABORT}.get(outcome)
        for a, m in models.items():
            if a in prepared:
                m.prepared.add(k)
            # A replica takes decisions in order: only if it took every earlier one.
            if decision is not None and a in told and len(m.applied) == k - 1:
                m.applied.append(decision)
        if decision is Decision.COMMIT and all(len(m.applied) >= k for m in models.values()):
            acknowledged.add(k)  # the client heard of it (every replica applied it)
    before = {a: m.committed() for a, m in models.items()}
    reports = {a: (None if a in silent else m.report()) for a, m in models.items()}
    plan = plan_resolution(T(NEW), reports, list(REPLICAS))
    assert isinstance(plan, Resolution)
    if silent:
        assert plan.failed == tuple(silent) and plan.steps == {}
        return
    assert plan.failed == ()
    for a, steps in plan.steps.items():
        for step in steps:
            models[a].take(step)
    final = {a: m.committed() for a, m in models.items()}
    first = final[A]
    assert all(f == first for f in final.values()), final  # agreement
    assert acknowledged <= first  # nothing acknowledged is lost
    assert all(b <= first for b in before.values())  # nothing applied is rolled back
    assert all(max(m.prepared, default=0) <= len(m.applied)
               for m in models.values())  # nothing left undecided
    assert len({len(m.applied) for m in models.values()}) == 1  # all at the same serial
    assert plan.next_serial == 1
