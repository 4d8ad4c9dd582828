"""Seeded simulations of 2PC under faults, plus scripted crashes at every named
step, the textbook blocking case, and how the decision store removes it.

Every run checks agreement (one decision per transaction, wherever it is
recorded) and validity (COMMIT only when every participant is prepared) on
each durable decision, and, once faults stop, termination (nothing left
prepared, every transaction ENDED) and data atomicity.  A failure names its
seed: `coord.twopc.sim.run_twopc_sim(seed, ...)` replays it exactly.

The default sweep is 1,600 runs (1,200 with the decision store, 400 textbook),
each with 3-5 injected faults (crashes at random effect boundaries, node
isolation, store outages) on top of seeded drops, duplicates and delays;
`--soak` runs ten times as many.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from coord.sim.network import NetConfig
from coord.trace import TraceRecorder, message_counts, to_mermaid
from coord.twopc.participant import Participant, _Txn
from coord.twopc.records import Effect
from coord.twopc.sim import COORD, STORE, SafetyViolation, SimParams, TwoPcSim, run_twopc_sim
from coord.twopc.sim_checks import TxnPlan
from coord.twopc.types import (
    CoordState,
    CoordStep,
    Decision,
    NodeName,
    PartState,
    PartStep,
    TxId,
    Write,
)

SOAK_FACTOR = 10
# (participants, transactions, use_store, runs): 1,600 runs in the default suite.
SWEEPS = [(3, 4, True, 400), (2, 6, True, 300), (4, 3, True, 300), (5, 2, True, 200),
          (3, 4, False, 200), (2, 3, False, 200)]
T1 = TxId("t1")
CLEAN = NetConfig()  # scripted cases: no drops, one tick per message


@pytest.mark.parametrize(("participants", "transactions", "use_store", "runs"), SWEEPS)
def test_atomic_and_terminating_under_faults(participants: int, transactions: int,
                                             use_store: bool, runs: int, soak: bool) -> None:
    runs *= SOAK_FACTOR if soak else 1
    base = participants * 100_000 + transactions * 10_000 + (0 if use_store else 5_000)
    totals = {"crashes": 0, "committed": 0, "aborted": 0, "store": 0, "peers": 0}
    for seed in range(base, base + runs):
        report = run_twopc_sim(seed, participants=participants, transactions=transactions,
                               use_store=use_store)  # raises SafetyViolation naming the seed
        assert len(report.faults) >= 3, report
        totals["crashes"] += report.crashes
        totals["committed"] += report.committed
        totals["aborted"] += report.aborted
        totals["store"] += report.learned_from_store
        totals["peers"] += report.learned_from_peers
    # The sweep must have exercised what it claims to: crashes with restarts,
    # both outcomes, and termination through peers (and through the store).
    assert totals["crashes"] >= runs, totals
    assert totals["committed"] > runs // 2 and totals["aborted"] > runs // 4, totals
    assert totals["peers"] > 0, totals
    assert (totals["store"] > 0) == use_store, totals


def test_runs_are_reproducible_from_their_seed() -> None:
    assert run_twopc_sim(42) == run_twopc_sim(42)
    assert run_twopc_sim(42) != run_twopc_sim(43)


# --------------------------------------------------------------------------- planted bug


class CommitsOnPrepare(Participant):
    """Planted bug: commits (applies and logs COMMIT) as soon as it has prepared."""

    def _vote_ready(self, txid: TxId, txn: _Txn, writes: Sequence[Write],
                    now: float) -> list[Effect]:
        effects = super()._vote_ready(txid, txn, writes, now)
        return effects + self._apply(txid, txn, Decision.COMMIT, "planted bug", now)


def test_a_participant_that_commits_on_prepare_is_caught() -> None:
    caught = []
    for seed in range(20):
        with pytest.raises(SafetyViolation) as exc:
            TwoPcSim(SimParams(seed), participant_factory=CommitsOnPrepare).run()
        caught.append(str(exc.value))
    assert all(f"seed={seed}:" in text for seed, text in enumerate(caught))
    assert any("validity" in text or "agreement" in text for text in caught)


# --------------------------------------------------------------------------- named steps


def scripted(use_store: bool = True, participants: int = 3) -> TwoPcSim:
    """One all-READY transaction, no random faults, a clean network."""
    params = SimParams(7, participants=participants, transactions=1, use_store=use_store,
                       min_faults=0, max_faults=0, ticks=120)
    sim = TwoPcSim(params, net=CLEAN)
    sim.work[T1] = {p: (Write(f"marker/{T1}", T1.encode()),) for p in sim.names}
    sim.plans[T1] = TxnPlan(T1, tuple(sim.names), f"marker/{T1}", T1.encode())
    sim.begin_at[T1] = 0
    return sim


COORD_OUTCOME = {  # (step, with store) -> the outcome after a 30-tick outage
    CoordStep.BEFORE_PREPARE: Decision.ABORT,
    CoordStep.AFTER_PREPARE_SENT: Decision.ABORT,  # the votes went to a dead coordinator
    CoordStep.BEFORE_DECISION_RECORDED: Decision.ABORT,
    CoordStep.BEFORE_DECISION_LOGGED: Decision.COMMIT,  # the store holds COMMIT
    CoordStep.AFTER_DECISION_LOGGED: Decision.COMMIT,
    CoordStep.AFTER_DECISION_SENT: Decision.COMMIT,
    CoordStep.BEFORE_END: Decision.COMMIT,
}


# The textbook protocol has no store, hence no before-decision-recorded step.
COORD_CASES = [(step, use_store) for use_store in (True, False) for step in CoordStep
               if use_store or step is not CoordStep.BEFORE_DECISION_RECORDED]


@pytest.mark.parametrize(("step", "use_store"), COORD_CASES,
                         ids=[f"{s.value}-{'store' if u else 'textbook'}" for s, u in COORD_CASES])
def test_coordinator_crash_at_every_step_recovers_from_its_log(step: CoordStep,
                                                              use_store: bool) -> None:
    sim = scripted(use_store)
    sim.arm_crash_at_step(COORD, step, down_for=30)
    report = sim.run()
    assert report.crashes == 1, report
    expected = COORD_OUTCOME[step]
    if step is CoordStep.BEFORE_DECISION_LOGGED and not use_store:
        expected = Decision.ABORT  # decided in memory only: recovery presumes abort
    assert_outcome(sim, expected)


@pytest.mark.parametrize("use_store", [True, False], ids=["store", "textbook"])
@pytest.mark.parametrize("step", [s for s in PartStep if s is not PartStep.UNCERTAIN],
                         ids=lambda s: s.value)
def test_participant_crash_at_every_step_recovers_from_its_log(step: PartStep,
                                                              use_store: bool) -> None:
    sim = scripted(use_store)
    sim.arm_crash_at_step(NodeName("p1"), step, down_for=20)
    report = sim.run()
    assert report.crashes == 1, report
    # Back within the vote timeout, so the coordinator still collects READY.
    assert_outcome(sim, Decision.COMMIT)


@pytest.mark.parametrize("use_store", [True, False], ids=["store", "textbook"])
def test_participant_crash_in_the_uncertain_period(use_store: bool) -> None:
    sim = scripted(use_store)
    sim.arm_crash_at_step(COORD, CoordStep.AFTER_DECISION_LOGGED, down_for=60)
    sim.arm_crash_at_step(NodeName("p1"), PartStep.UNCERTAIN, down_for=10)
    report = sim.run()
    assert report.crashes == 2, report
    assert_outcome(sim, Decision.COMMIT)


def assert_outcome(sim: TwoPcSim, expected: Decision) -> None:
    coord = sim.nodes[COORD].core
    assert coord is not None and coord.decision(T1) is expected
    assert coord.state(T1) is CoordState.ENDED
    for name in sim.names:
        part = sim.nodes[name].core
        assert isinstance(part, Participant)
        assert part.decision(T1) is expected, (name, part.history(T1))
        assert (part.data.get(f"marker/{T1}") is not None) == (expected is Decision.COMMIT)


# --------------------------------------------------------------------------- blocking


@pytest.mark.parametrize(("step", "outcome"), [
    (CoordStep.AFTER_DECISION_LOGGED, Decision.COMMIT),
    (CoordStep.BEFORE_DECISION_LOGGED, Decision.ABORT),
])
def test_textbook_2pc_blocks_while_the_coordinator_is_down(step: CoordStep,
                                                           outcome: Decision) -> None:
    """The chapter's blocking case: every participant voted READY, the coordinator
    died before sending the decision; cooperative termination cannot decide."""
    sim = scripted(use_store=False)
    sim.arm_crash_at_step(COORD, step, down_for=10**9)
    sim.advance(600)
    assert sim.nodes[COORD].core is None
    for name in sim.names:
        part = sim.nodes[name].core
        assert isinstance(part, Participant)
        assert part.state(T1) is PartState.UNCERTAIN and part.blocked(T1)
        assert dict(part.locks)  # resources stay locked
    # The coordinator comes back: recovery resolves it (as logged, else presumed abort).
    sim.heal_and_converge()
    assert_outcome(sim, outcome)


@pytest.mark.parametrize(("step", "outcome"), [
    (CoordStep.BEFORE_DECISION_LOGGED, Decision.COMMIT),  # the store holds COMMIT
    (CoordStep.AFTER_DECISION_LOGGED, Decision.COMMIT),
    (CoordStep.BEFORE_DECISION_RECORDED, Decision.ABORT),  # nothing recorded: ABORT wins
])
def test_the_decision_store_unblocks_participants_while_the_coordinator_is_down(
        step: CoordStep, outcome: Decision) -> None:
    sim = scripted(use_store=True)
    sim.arm_crash_at_step(COORD, step, down_for=10**9)
    sim.advance(200)
    assert sim.nodes[COORD].core is None  # still down
    for name in sim.names:
        part = sim.nodes[name].core
        assert isinstance(part, Participant)
        assert part.decision(T1) is outcome and not part.locks, part.history(T1)
    assert sim.report.learned_from_store >= 1
    assert sim.store.lookup_now(T1) is outcome
    sim.heal_and_converge()  # the coordinator's recovery agrees with the store
    assert_outcome(sim, outcome)


def test_a_coordinator_whose_commit_loses_the_race_in_the_store_aborts() -> None:
    """All READY, but the coordinator's COMMIT cannot reach the store until the
    participants have recorded ABORT there: its cas fails and it aborts."""
    sim = scripted(use_store=True)
    sim.net.block(COORD, STORE)
    sim.advance(100)
    assert sim.store.lookup_now(T1) is Decision.ABORT
    coord = sim.nodes[COORD].core
    assert coord is not None and coord.state(T1) is CoordState.DECIDING
    sim.net.heal()
    sim.heal_and_converge()
    assert_outcome(sim, Decision.ABORT)


def test_the_blocking_trace_renders_as_a_sequence_diagram() -> None:
    tracer = TraceRecorder()
    sim = scripted(use_store=False, participants=2)
    sim.tracer = tracer
    sim.arm_crash_at_step(COORD, CoordStep.AFTER_DECISION_LOGGED, down_for=10**9)
    sim.advance(60)
    text = to_mermaid(tracer.events, actors=["c", "p1", "p2"])
    assert "Note over c: L" in text and "CRASH" in text
    assert "p1-->>c" in text  # its READY arrived (replies are dashed arrows)
    assert "p1--xc" in text  # its termination QUERY to the dead coordinator was lost
    assert "ANSWER UNCERTAIN" in text
    counts = message_counts(tracer.events)
    assert counts["PREPARE"] == 2 and counts["READY"] == 2 and counts["QUERY"] > 2
    assert "COMMIT" not in counts  # never sent: the coordinator died first
