"""Pure-core tests of ReadIndex linearizable reads (thesis §6.4)."""

from __future__ import annotations

from dataclasses import replace

from coord.raft.messages import (
    AppendEntries,
    Heartbeat,
    ReadCtx,
    ReadIndexRequest,
    ReadIndexResponse,
)
from coord.raft.readindex import ReadState
from coord.raft.ready import NotLeader, ReadQueued, Role
from coord.raft.types import LogIndex, NodeId, Term
from tests.unit.raft_harness import CONFIG, Harness

N1, N2, N3 = NodeId(1), NodeId(2), NodeId(3)


def ctx(k: int) -> ReadCtx:
    return ReadCtx(b"r%d" % k)


def elected() -> Harness:
    h = Harness(3)
    h.campaign(N1)
    for k in range(3):
        h.propose(N1, b"w%d" % k)
    h.deliver()
    h.share_commit()
    assert h.nodes[N1].commit_index == 4
    return h


def test_thesis_6_4_many_reads_share_one_heartbeat_round() -> None:
    h = elected()
    earlier = len(h.sent)
    for k in range(5):
        assert h.nodes[N1].read_index(ctx(k)) == ReadQueued(ctx(k))
    rd = h.process(N1)
    assert rd is not None and rd.read_states == ()  # not before leadership is confirmed
    beats = [m for m in rd.messages if isinstance(m, Heartbeat)]
    assert sorted(m.dst for m in beats) == [N2, N3] and len({m.read_round for m in beats}) == 1
    h.deliver()
    assert h.read_states[N1] == [ReadState(ctx(k), LogIndex(4)) for k in range(5)]
    assert len([m for m in h.sent[earlier:] if isinstance(m, Heartbeat)]) == 2  # one round


def test_thesis_6_4_read_is_confirmed_by_a_majority_not_by_the_leader_alone() -> None:
    h = elected()
    h.nodes[N1].read_index(ctx(1))
    h.deliver(lambda m: not isinstance(m, Heartbeat))  # the round's heartbeats are lost
    assert h.read_states[N1] == []
    h.nodes[N1].read_index(ctx(2))  # a later round confirms the earlier one too
    h.deliver(lambda m: not (isinstance(m, Heartbeat) and m.dst == N3))  # one ack suffices
    assert [r.ctx for r in h.read_states[N1]] == [ctx(1), ctx(2)]


def test_thesis_6_4_a_new_leader_serves_reads_only_after_committing_in_its_term() -> None:
    h = Harness(3)
    h.campaign(N1, keep=lambda m: not isinstance(m, AppendEntries))  # the no-op cannot commit
    assert h.nodes[N1].role is Role.LEADER and h.nodes[N1].commit_index == 0
    h.nodes[N1].read_index(ctx(1))
    h.deliver(lambda m: not isinstance(m, AppendEntries))
    assert h.read_states[N1] == []
    assert not any(isinstance(m, Heartbeat) and m.read_round > 0 for m in h.sent)
    for _ in range(3):  # appends flow again; the no-op commits; the read is served
        h.advance_time(CONFIG.heartbeat_interval, [N1])
        h.deliver()
    assert h.read_states[N1] == [ReadState(ctx(1), LogIndex(1))]


def test_thesis_6_4_1_follower_read_goes_through_the_leader_and_waits_to_apply() -> None:
    h = elected()
    h.propose(N1, b"late")
    # The leader commits index 5 but N3 has not applied it: its appends are lost.
    h.deliver(lambda m: not (isinstance(m, AppendEntries) and m.dst == N3))
    assert h.nodes[N1].commit_index == 5 and len(h.applied[N3]) == 4
    assert h.nodes[N3].read_index(ctx(7)) == ReadQueued(ctx(7))
    h.deliver(lambda m: not (isinstance(m, AppendEntries) and m.dst == N3))
    assert [m.index for m in h.sent if isinstance(m, ReadIndexResponse)] == [5]
    assert h.read_states[N3] == []  # index 5 known, but not yet applied here
    for _ in range(3):
        h.advance_time(CONFIG.heartbeat_interval, [N1])
        h.deliver()
    assert h.read_states[N3] == [ReadState(ctx(7), LogIndex(5))]
    assert h.applied[N3][-1].index == 5


def test_read_on_a_node_without_a_known_leader_is_refused() -> None:
    h = Harness(3)
    assert h.nodes[N2].read_index(ctx(1)) == NotLeader(None)


def test_pending_reads_fail_when_leadership_is_lost() -> None:
    h = elected()
    h.nodes[N1].read_index(ctx(1))
    h.process(N1)
    h.take_all()  # the heartbeats vanish
    h.nodes[N1].step(Heartbeat(N2, N1, Term(h.nodes[N1].term + 1), LogIndex(0), 0), h.now)
    rd = h.process(N1)
    assert rd is not None and rd.failed_reads == (ctx(1),)


def test_a_read_request_forwarded_to_a_non_leader_is_ignored() -> None:
    h = elected()
    h.nodes[N2].step(ReadIndexRequest(N3, N2, h.nodes[N2].term, ctx(1)), h.now)
    assert h.take_all() == []


def test_single_node_reads_need_no_round_trip() -> None:
    h = Harness(1)
    h.campaign(N1)
    h.propose(N1, b"x")
    h.deliver()
    h.nodes[N1].read_index(ctx(1))
    h.deliver()
    assert h.read_states[N1] == [ReadState(ctx(1), LogIndex(2))]


def test_a_read_waiting_for_uncommitted_entries_does_not_make_the_node_spin() -> None:
    h = elected()
    follower = h.nodes[N3]
    follower.step(ReadIndexResponse(N1, N3, follower.term, ctx(9), LogIndex(99)), h.now)
    assert not follower.has_ready()  # nothing to do until index 99 is committed here
    assert follower.reads.waiting_apply == [ReadState(ctx(9), LogIndex(99))]


def test_a_follower_read_brings_the_commit_index_with_its_answer() -> None:
    for config in (CONFIG, replace(CONFIG, lease_reads=True, clock_drift_bound=1.0)):
        h = Harness(3, config)
        h.campaign(N1)
        h.share_commit()  # with lease reads: a lease from this acknowledged round
        h.propose(N1, b"x")
        h.deliver()
        assert h.nodes[N1].commit_index == 2 and h.commands(N3) == []
        h.nodes[N3].read_index(ctx(1), h.now)
        h.deliver()  # no heartbeat interval passes
        assert h.read_states[N3] == [ReadState(ctx(1), LogIndex(2))]
        assert h.commands(N3) == [b"x"]
