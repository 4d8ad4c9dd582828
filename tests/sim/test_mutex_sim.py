"""Seeded simulations of the three mutual-exclusion algorithms under faults.

Each algorithm runs 1,000 seeds (10,000 with --soak), plus 300 more for the
two that need a coordinator with it elected by coord.election's Bully core, each with 3-5 faults:
at least one paused node (falsely suspected by the others; it resumes holding
a stale lease and writes once without re-checking it), at least one injected
false suspicion of a healthy node and crashes.  Every tick checks that no two
nodes hold unexpired grants and that the resource never accepts a write of
an earlier entry after a later entry wrote; the quiet period after the faults
checks that every live node that asks gets in (and, for the ring, that only
one token generation is left).  A failure names its seed:
`coord.mutex.sim.run_mutex_sim(seed, algo)` replays it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from coord.mutex.messages import RaRequest
from coord.mutex.ricart import RicartAgrawala
from coord.mutex.sim import (
    ALGORITHMS,
    LOCK,
    MutexSim,
    SafetyViolation,
    SimParams,
    run_mutex_sim,
)
from coord.mutex.types import MutexConfig, NodeId

RUNS = 1_000
SOAK_FACTOR = 10


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_no_two_unexpired_holders_under_faults(algo: str, soak: bool) -> None:
    runs = RUNS * (SOAK_FACTOR if soak else 1)
    entries = rejected = 0
    kinds: dict[str, int] = {}
    for seed in range(runs):
        report = run_mutex_sim(seed, algo)  # raises SafetyViolation naming the seed
        assert len(report.faults) >= 3
        assert {"pause", "suspect"} <= {f.kind for f in report.faults}
        for f in report.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        entries += report.entries
        rejected += report.rejected_writes
        assert report.fenced_out == 0, f"seed {seed}: a legitimate holder was fenced out"
    # The runs really exercised the algorithm and the faults.
    assert entries > runs * 50
    assert kinds["crash"] >= runs // 2 and kinds["pause"] >= runs
    # Paused holders did come back and write with stale tokens, and were refused.
    assert rejected > 0


ELECTED_RUNS = 300


@pytest.mark.parametrize("algo", ["centralized", "token-ring"])
def test_elected_coordinator_under_faults(algo: str, soak: bool) -> None:
    """The same faults with the coordinator / regenerator from coord.election's Bully."""
    runs = ELECTED_RUNS * (SOAK_FACTOR if soak else 1)
    elections = 0
    for seed in range(runs):
        report = run_mutex_sim(seed, algo, SimParams(elect=True))
        elections += report.messages.get("COORDINATOR", 0)
    assert elections > runs * (5 - 1)  # every run elected at least once


class RepliesInsideTheCriticalSection(RicartAgrawala):
    """The planted bug: the reply rule forgets "unless inside the critical section"."""

    def _defers(self, msg: RaRequest) -> bool:
        return self.wanting and (self._ts, self.me) < (msg.ts, msg.sender)


def _buggy(me: NodeId, nodes: Sequence[NodeId], config: MutexConfig) -> RicartAgrawala:
    return RepliesInsideTheCriticalSection(me, nodes, LOCK, config)


def test_planted_bug_replying_inside_the_cs_is_caught() -> None:
    caught = []
    contended = SimParams(hold=(3, 8))  # longer stays inside: more requests arrive meanwhile
    for seed in range(30):
        try:
            run_mutex_sim(seed, "ricart-agrawala", contended, factory=_buggy)
        except SafetyViolation as exc:
            caught.append(str(exc))
    assert caught, "30 runs with the planted bug and no violation found"
    assert any("two unexpired holders" in c for c in caught)


class NeverReplies(RicartAgrawala):
    """A liveness bug: requests are swallowed (every reply is deferred forever)."""

    def _defers(self, msg: RaRequest) -> bool:
        return True


def test_the_quiet_period_catches_a_node_that_never_gets_in() -> None:
    def never(me: NodeId, nodes: Sequence[NodeId], config: MutexConfig) -> RicartAgrawala:
        return NeverReplies(me, nodes, LOCK, config)

    with pytest.raises(SafetyViolation, match="never got in"):
        run_mutex_sim(3, "ricart-agrawala", SimParams(faults=(3, 3)), factory=never)


def test_same_seed_same_run() -> None:
    a = run_mutex_sim(7, "token-ring")
    b = run_mutex_sim(7, "token-ring")
    assert (a.entries, a.messages, a.faults) == (b.entries, b.messages, b.faults)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_failure_free_message_cost(algo: str) -> None:
    """No faults, every node always wanting: the textbook cost per entry."""
    params = SimParams(nodes=5, ticks=400, faults=(0, 0), want_chance=1.0)
    report = MutexSim(1, algo, params).run()
    assert report.faults == []
    total = sum(report.messages.values())
    assert report.entries > 40
    if algo == "ricart-agrawala":
        # Every entry costs 2(n-1); requests still unanswered at the end cost n-1 more.
        assert report.messages["REQUEST"] >= report.entries * 4
        assert report.messages["REPLY"] <= report.messages["REQUEST"]
        assert total <= (report.entries + 5) * 8
        assert total >= report.entries * 8
    elif algo == "centralized":
        assert set(report.messages) == {"REQUEST", "GRANT", "RELEASE"}
        assert total <= report.entries * 3 + 10
    else:
        assert set(report.messages) == {"TOKEN"}
        assert report.entries - 1 <= total <= report.entries + 5
