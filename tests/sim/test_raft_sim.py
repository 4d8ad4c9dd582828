"""Seeded simulations of Raft clusters under faults, with safety checked after every step.

Each run: 3 or 5 nodes, >= 300 ticks, >= 3 faults (crashes that lose all that
was not fsynced, symmetric/asymmetric partitions, leader isolation) on top of
random drops, duplicates, delays and reordering; >= 50 client commands
acknowledged (a schedule so harsh that fewer were by tick 300 goes on, with
random drops and delays but no new faults, until they are); then healing
and a convergence check that every acknowledged command is on every node.
Nodes snapshot every 16 entries and compact their logs, so lagging nodes
catch up by InstallSnapshot, whose transfers are cut by drops, partitions
and crashes of the receiver mid-stream.  A failure names
its seed: reproduce it with `coord.sim.raft.run_raft_sim(seed, nodes)`.

The default suite runs SEEDS_PER_CASE x CASES x 2 cluster sizes = 2,000 runs;
`--soak` runs ten times as many.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import replace

import pytest

from coord.raft.core import RaftNode
from coord.raft.messages import RequestVote
from coord.raft.snapshot import SnapshotMeta
from coord.raft.types import Entry, NodeId
from coord.sim.network import NetConfig, SimNetwork
from coord.sim.raft import (
    RaftSim,
    SafetyViolation,
    SimDisk,
    SimParams,
    SimReport,
    run_raft_sim,
)
from coord.sim.raft_snap import encode_state

CASES = 20
SEEDS_PER_CASE = 50
SOAK_FACTOR = 10


def check_run(report: SimReport) -> None:
    """A run too weak to mean anything fails: the counts the task demands."""
    what = f"seed={report.seed} nodes={report.nodes}"
    assert report.ticks >= 300, f"{what}: only {report.ticks} ticks"
    assert len(report.faults) >= 3, f"{what}: only {len(report.faults)} faults"
    assert report.commits >= 50, f"{what}: only {report.commits} commits ({report.faults})"


def test_a_harsh_schedule_runs_on_until_enough_commands_are_acknowledged() -> None:
    # Seed 1731 (in the --soak sweep): faults leave a majority almost no time
    # together, and only 31 commands were acknowledged by tick 300.
    report = run_raft_sim(1731, 3)
    check_run(report)
    assert report.ticks > 300


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("case", range(CASES))
def test_raft_sim_is_safe_under_faults(case: int, nodes: int, soak: bool) -> None:
    per_case = SEEDS_PER_CASE * (SOAK_FACTOR if soak else 1)
    base = case * per_case
    stats = {"reads": 0, "crashes": 0, "refused": 0, "installs": 0, "resumed": 0, "lost": 0}
    for seed in range(base, base + per_case):
        report = run_raft_sim(seed, nodes)  # raises SafetyViolation naming the seed
        check_run(report)
        stats["reads"] += report.reads
        stats["crashes"] += report.crashes
        stats["refused"] += report.refused
        stats["installs"] += report.installs
        stats["resumed"] += report.resumed
        stats["lost"] += report.chunks_sent - report.chunks_delivered
        assert report.snapshots > 0, f"seed={seed} nodes={nodes}: no snapshot taken"
    # The sweep as a whole must exercise reads, crashes and the uncommitted cap too.
    assert stats["reads"] > per_case and stats["crashes"] > per_case // 2, stats
    assert stats["refused"] > 0, stats
    # ... and snapshots: installed, resumed after a crash mid-transfer, chunks lost.
    assert stats["installs"] > 0 and stats["resumed"] > 0 and stats["lost"] > 0, stats


class VotesTwice(RaftNode):
    """Planted bug: grants every vote request, ignoring its vote in this term (§5.2)."""

    def _can_vote_for(self, candidate: NodeId) -> bool:
        return True


class IgnoresLogUpToDate(RaftNode):
    """Planted bug: votes for candidates with stale logs (breaks §5.4.1)."""

    def _candidate_up_to_date(self, m: RequestVote) -> bool:
        return True


class SkipsFsync(SimDisk):
    """Planted driver bug: acknowledges writes that were never made durable."""

    def fsync(self) -> None:
        pass


class SkipsFsyncSim(RaftSim):
    disk_cls = SkipsFsync


class SnapshotDropsAnEntry(RaftSim):
    """Planted driver bug: a snapshot that leaves out one entry of the state."""

    def _snapshot_of(self, state: list[Entry]) -> tuple[SnapshotMeta, bytes]:
        meta, _ = super()._snapshot_of(state)
        _, data = encode_state([*state[:-2], state[-1]], self.ids)
        return replace(meta, size=len(data), digest=zlib.crc32(data)), data


def first_violation(
    node_cls: type[RaftNode], seeds: range, sim_cls: type[RaftSim] = RaftSim
) -> SafetyViolation | None:
    for seed in seeds:
        for nodes in (3, 5):
            try:
                sim_cls(SimParams(seed=seed, nodes=nodes), node_cls).run()
            except SafetyViolation as exc:
                return exc
    return None


def test_planted_double_vote_is_caught_as_an_election_safety_violation() -> None:
    exc = first_violation(VotesTwice, range(20))
    assert exc is not None, "the simulator missed a node that votes twice per term"
    text = str(exc)
    assert text.startswith("seed=") and "election safety" in text and "last events:" in text


def test_planted_stale_log_vote_is_caught_as_a_leader_completeness_violation() -> None:
    exc = first_violation(IgnoresLogUpToDate, range(40))
    assert exc is not None, "the simulator missed votes for out-of-date candidates"
    assert "leader completeness" in str(exc) or "safety" in str(exc)


def test_planted_missing_fsync_is_caught_as_a_durability_violation() -> None:
    exc = first_violation(RaftNode, range(5), SkipsFsyncSim)
    assert exc is not None and "durability" in str(exc)


def test_planted_incomplete_snapshot_is_caught_as_a_state_machine_safety_violation() -> None:
    exc = first_violation(RaftNode, range(20), SnapshotDropsAnEntry)
    assert exc is not None, "the simulator installed a snapshot that lost an entry"
    assert "state-machine safety" in str(exc)


def test_a_failing_seed_reproduces_exactly() -> None:
    a = first_violation(VotesTwice, range(20))
    b = first_violation(VotesTwice, range(20))
    assert a is not None and b is not None and str(a) == str(b)


def test_same_seed_same_run() -> None:
    assert run_raft_sim(7, 5) == run_raft_sim(7, 5)


def test_network_drops_duplicates_delays_and_partitions_deterministically() -> None:
    def run(seed: int) -> tuple[list[tuple[int, int, int]], int]:
        net: SimNetwork[int, int] = SimNetwork(
            random.Random(seed), NetConfig(drop=0.2, duplicate=0.2, min_delay=1, max_delay=5)
        )
        net.block(1, 2)  # asymmetric: 2 can still reach 1
        for k in range(200):
            net.send(0, 1 + k % 2, 2 - k % 2, k)
        out = [(t, src, msg) for t in range(10) for src, _, msg in net.due(t)]
        return out, net.stats.dropped

    out, dropped = run(1)
    assert out == run(1)[0]
    assert all(src == 2 for _, src, _ in out)  # nothing crossed the blocked direction
    msgs = [m for _, _, m in out]
    assert len(msgs) != len(set(msgs))  # duplicates
    assert msgs != sorted(msgs)  # reordering
    assert 0 < dropped < 100
    assert all(1 <= t <= 5 for t, _, _ in out)
