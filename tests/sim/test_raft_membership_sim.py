"""Seeded simulations of membership changes and leadership transfers under faults.

Each run is a `RaftSim` run (3 or 5 nodes, >= 300 ticks, >= 3 crashes or
partitions on top of drops, duplicates and reordering, >= 50 acknowledged
commands, every safety invariant checked after every step: no two leaders
in one term, ever; log matching; leader completeness; commit agreement;
durability against the voters the committing leader counted; linearizable
reads) while an operator replaces one or two members one change at a time
(add a learner, promote it, remove an old member - half the time the
leader) and now and then transfers leadership; odd seeds serve reads
under the leader lease.  After healing, every member
of the final configuration holds every acknowledged command.

Default: CASES x SEEDS_PER_CASE x {3, 5} = 240 runs (about 20 s); `--soak`
runs ten times as many.  Reproduce a failure with
`coord.sim.raft_membership.run_membership_sim(seed, nodes)`.
"""

from __future__ import annotations

from typing import Any

import pytest

from coord.raft.core import RaftNode
from coord.raft.quorum import MajorityConfig
from coord.raft.ready import Role
from coord.sim.raft import SafetyViolation, SimParams
from coord.sim.raft_membership import MembershipSim, run_membership_sim
from tests.sim.test_raft_sim import check_run

CASES = 8
SEEDS_PER_CASE = 15
SOAK_FACTOR = 10
BASE_SEED = 100_000  # disjoint from the plain simulator's seeds


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("case", range(CASES))
def test_membership_changes_under_faults_are_safe(case: int, nodes: int, soak: bool) -> None:
    per_case = SEEDS_PER_CASE * (SOAK_FACTOR if soak else 1)
    base = BASE_SEED + case * per_case
    planned = done = leader_removals = transfers = 0
    for seed in range(base, base + per_case):
        report, sim = run_membership_sim(seed, nodes)  # raises SafetyViolation naming the seed
        check_run(report)
        planned += sim.changes_done + len(sim.plan)
        done += sim.changes_done
        leader_removals += sim.leader_removals
        transfers += sim.transfers
        if not sim.plan:
            # The whole plan ran: the final configuration has the new members as voters.
            assert sim.joiners <= sim.checker.membership.voters, (seed, sim.checker.membership)
    # The sweep must really change membership, remove leaders and transfer leadership.
    assert done >= 0.8 * planned, (done, planned)
    assert leader_removals >= 2 and transfers >= per_case, (leader_removals, transfers)


class KeepsCountingItself(RaftNode):
    """Planted bug: a leader that removed itself still counts its own replica (§4.2.2)."""

    def _use_membership(self) -> None:
        super()._use_membership()
        if self.role is Role.LEADER:
            self.voters = MajorityConfig(self.voters.voters | {self.id})


def test_planted_self_counting_removed_leader_is_caught() -> None:
    caught = None
    for seed in range(BASE_SEED, BASE_SEED + 60):
        try:
            # 5 nodes: some runs remove first (5 -> 4 voters), where the bug shows.
            MembershipSim(SimParams(seed=seed, nodes=5), KeepsCountingItself).run()
        except SafetyViolation as exc:
            caught = exc
            break
    assert caught is not None, "the simulator missed a removed leader counting itself"
    assert str(caught).startswith("seed=") and "durability" in str(caught)


class OverlongLease(RaftNode):
    """Planted bug: a lease that outlives the followers' promise (and no check-quorum),
    so a deposed leader keeps answering reads from its own state (§6.4.1)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease.duration = 1000.0

    def _check_quorum(self, now: float) -> None:
        pass


def test_planted_overlong_lease_is_caught_as_a_stale_read() -> None:
    caught = None
    for seed in range(BASE_SEED + 1, BASE_SEED + 81, 2):  # odd seeds use lease reads
        try:
            MembershipSim(SimParams(seed=seed, nodes=3), OverlongLease).run()
        except SafetyViolation as exc:
            caught = exc
            break
    assert caught is not None, "the simulator missed lease reads by a deposed leader"
    assert "stale read" in str(caught)


def test_same_seed_same_membership_run() -> None:
    a, sim_a = run_membership_sim(BASE_SEED + 3, 5)
    b, sim_b = run_membership_sim(BASE_SEED + 3, 5)
    assert a == b and sim_a.checker.membership == sim_b.checker.membership
