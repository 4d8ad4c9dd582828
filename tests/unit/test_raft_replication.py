"""Pure-core tests of log replication and commitment, each naming its rule."""

from __future__ import annotations

from dataclasses import replace

from coord.raft.core import RaftNode
from coord.raft.messages import AppendEntries, AppendEntriesResponse, Heartbeat, Message
from coord.raft.progress import ProgressState
from coord.raft.ready import NotLeader, Overloaded, Proposed, Role
from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term
from tests.unit.raft_harness import CONFIG, Harness

N1, N2, N3, N4, N5 = (NodeId(i) for i in range(1, 6))


def e(index: int, term: int) -> Entry:
    return Entry(Term(term), LogIndex(index), EntryKind.COMMAND, b"%d/%d" % (index, term))


def append(
    prev: int, prev_term: int, entries: list[Entry], commit: int = 0, term: int = 3
) -> AppendEntries:
    return AppendEntries(
        N1, N2, Term(term), LogIndex(prev), Term(prev_term), tuple(entries), LogIndex(commit)
    )


def follower(log: list[Entry], term: int = 3) -> Harness:
    return Harness(3, logs={N2: log}, hard_states={N2: HardState(Term(term))})


def replies(h: Harness) -> list[AppendEntriesResponse]:
    return [m for m in h.take(AppendEntriesResponse) if m.src == N2]


def test_fig2_append_receiver_rejects_when_prev_index_is_missing() -> None:
    h = follower([e(1, 1), e(2, 1)])
    h.nodes[N2].step(append(5, 1, [e(6, 3)]), h.now)
    [r] = replies(h)
    assert not r.success and r.reject_index == 5
    assert (r.hint_index, r.hint_term) == (2, 1)  # "my log ends at 2": skip straight there
    assert h.logs[N2].last_index() == 2


def test_fig2_append_receiver_rejects_when_prev_term_mismatches_and_hints_a_term_boundary() -> None:
    h = follower([e(1, 1), e(2, 2), e(3, 2), e(4, 2)])
    h.nodes[N2].step(append(4, 3, [e(5, 3)]), h.now)
    [r] = replies(h)
    assert not r.success and (r.hint_index, r.hint_term) == (4, 2)
    h.nodes[N2].step(append(3, 1, []), h.now)  # the leader's term at 3 is 1: skip the 2s
    [r] = replies(h)
    assert (r.hint_index, r.hint_term) == (1, 1)


def test_fig2_append_receiver_deletes_a_conflicting_suffix_and_appends() -> None:
    h = follower([e(1, 1), e(2, 1), e(3, 2), e(4, 2)])
    h.nodes[N2].step(append(2, 1, [e(3, 3), e(4, 3), e(5, 3)], commit=4), h.now)
    rd = h.process(N2)
    assert rd is not None and rd.truncate_from == 3 and rd.must_sync
    assert [(x.index, x.term) for x in h.logs[N2].all_entries()] == [
        (1, 1),
        (2, 1),
        (3, 3),
        (4, 3),
        (5, 3),
    ]
    [r] = [m for m in rd.messages if isinstance(m, AppendEntriesResponse)]
    assert r.success and r.match_index == 5
    # fig. 2 receiver step 5: commit = min(leaderCommit, index of last new entry)
    assert h.nodes[N2].commit_index == 4


def test_fig2_append_receiver_keeps_matching_entries_and_ignores_stale_duplicates() -> None:
    h = follower([e(1, 1), e(2, 3), e(3, 3)])
    h.nodes[N2].step(append(1, 1, [e(2, 3)]), h.now)  # an old, shorter append arrives late
    rd = h.process(N2)
    assert rd is not None and rd.entries == () and h.logs[N2].last_index() == 3


def test_fig2_commit_from_leader_is_capped_by_the_last_new_entry() -> None:
    h = follower([e(1, 1), e(2, 1), e(3, 1)])  # entries 2, 3 may be stale
    h.nodes[N2].step(append(1, 1, [], commit=3), h.now)
    assert h.nodes[N2].commit_index == 1


def test_s5_3_leader_is_append_only_it_never_truncates_or_overwrites_its_log() -> None:
    h = Harness(3)
    h.campaign(N1)
    for k in range(5):
        h.propose(N1, b"c%d" % k)
    h.nodes[N1].step(append(0, 0, [e(1, 9)], term=1), h.now)  # a forged same-term append
    h.deliver()
    rds = h.readies[N1]
    assert all(rd.truncate_from is None for rd in rds)
    indices = [x.index for rd in rds for x in rd.entries]
    assert indices == list(range(1, len(indices) + 1))


def test_s5_3_log_matching_followers_end_with_the_leaders_log() -> None:
    h = Harness(5)
    h.campaign(N3)
    for k in range(20):
        h.propose(N3, b"c%d" % k)
        if k % 7 == 0:
            h.deliver()
    h.deliver()
    h.share_commit()
    logs = [h.logs[i].all_entries() for i in h.ids]
    assert all(log == logs[0] for log in logs) and len(logs[0]) == 21
    assert all(h.commands(i) == [b"c%d" % k for k in range(20)] for i in h.ids)


def fig8_harness(node_cls: type[RaftNode] = RaftNode) -> Harness:
    """Figure 8 (c): S1 is leader of term 4 and has copied its term-2 entry at index 2
    to a majority (S1..S4); its term-4 no-op (index 3) reached only S2, so no
    entry of term 4 is on a majority.  S5 holds a conflicting term-3 entry at 2."""
    cfg = replace(CONFIG, max_append_entries=1, pre_vote=False)
    logs = {
        N1: [e(1, 1), e(2, 2)],
        N2: [e(1, 1), e(2, 2)],
        N3: [e(1, 1)],
        N4: [e(1, 1)],
        N5: [e(1, 1), e(2, 3)],
    }
    hs = {i: HardState(Term(3), None, LogIndex(1)) for i in logs}
    h = Harness(5, cfg, node_cls=node_cls, logs=logs, hard_states=hs)

    def keep(m: Message) -> bool:  # S5 is cut off; the no-op (index 3) reaches only S2
        if N5 in (m.src, m.dst):
            return False
        return not (
            isinstance(m, AppendEntries)
            and m.dst in (N3, N4)
            and any(x.index >= 3 for x in m.entries)
            and h.logs[m.dst].last_index() >= 2  # the first probe passes, to be rejected
        )

    h.campaign(N1, keep)
    assert h.nodes[N1].role is Role.LEADER and h.nodes[N1].term == 4
    assert [h.logs[i].term(LogIndex(2)) for i in (N1, N2, N3, N4)] == [2, 2, 2, 2]
    assert [h.logs[i].last_index() for i in (N1, N2, N3, N4)] == [3, 3, 2, 2]
    return h


def test_s5_4_2_fig8_leader_does_not_commit_an_earlier_term_entry_by_counting() -> None:
    h = fig8_harness()
    assert h.nodes[N1].commit_index == 1
    assert all(x.index < 2 for i in h.ids for x in h.applied[i])
    # Fig. 8 (d): S5 may still win term 5 (votes of S3, S4) and overwrite index 2.
    h.now += CONFIG.election_timeout_max + 1
    h.campaign(N5, keep=lambda m: N1 not in (m.src, m.dst))  # term 4 is taken: loses
    h.campaign(N5, keep=lambda m: N1 not in (m.src, m.dst))
    assert h.nodes[N5].role is Role.LEADER and h.nodes[N5].term == 5
    assert [h.logs[i].term(LogIndex(2)) for i in (N2, N3, N4, N5)] == [3, 3, 3, 3]


class CommitsOldTermsByCounting(RaftNode):
    """Planted bug: ignores §5.4.2 and commits any majority-replicated index."""

    def _may_commit(self, index: LogIndex) -> bool:
        return True


def test_s5_4_2_the_planted_counting_bug_commits_what_fig8_later_overwrites() -> None:
    h = fig8_harness(CommitsOldTermsByCounting)
    assert h.nodes[N1].commit_index == 2  # unsafe: S5 can still overwrite index 2
    assert [x.index for x in h.applied[N1]] == [1, 2]


def test_s5_4_2_the_noop_commits_the_earlier_term_entry_indirectly() -> None:
    h = fig8_harness()
    for _ in range(3):  # heartbeats notice the stalled followers and resend the no-op
        h.advance_time(CONFIG.heartbeat_interval, [N1])
        h.deliver(lambda m: N5 not in (m.src, m.dst))
    assert h.nodes[N1].commit_index == 3
    assert [x.index for x in h.applied[N1]] == [1, 2, 3]


def test_leader_counts_its_own_entries_only_once_the_driver_persisted_them() -> None:
    h = Harness(3)
    h.campaign(N1)
    leader = h.nodes[N1]
    h.propose(N1, b"x")
    rd = leader.ready()  # the driver has NOT persisted yet
    [to2] = [m for m in rd.messages if m.dst == N2 and isinstance(m, AppendEntries)]
    h.nodes[N2].step(to2, h.now)
    h.process(N2)
    for m in h.take(AppendEntriesResponse):
        leader.step(m, h.now)
    assert leader.commit_index == 1  # one follower + an unpersisted leader is no majority
    h.logs[N1].append(rd.entries)
    leader.advance(rd)
    assert leader.commit_index == 2


def test_batching_many_proposals_travel_in_one_append_per_follower_and_one_persist() -> None:
    h = Harness(3)
    h.campaign(N1)
    for k in range(50):
        assert isinstance(h.propose(N1, b"p%d" % k), Proposed)
    rd = h.process(N1)
    assert rd is not None and len(rd.entries) == 50 and rd.must_sync
    appends = [m for m in rd.messages if isinstance(m, AppendEntries)]
    assert sorted(m.dst for m in appends) == [N2, N3]
    assert all(len(m.entries) == 50 for m in appends)


def test_pipelining_is_bounded_by_max_inflight_messages() -> None:
    h = Harness(3, replace(CONFIG, max_append_entries=2, max_inflight=3))
    h.campaign(N1)
    for k in range(20):
        h.propose(N1, b"p%d" % k)
    rd = h.process(N1)
    assert rd is not None
    per_follower = [m for m in rd.messages if isinstance(m, AppendEntries) and m.dst == N2]
    assert len(per_follower) == 3  # 3 in flight, not 10
    assert [m.prev_log_index for m in per_follower] == [1, 3, 5]  # pipelined, not stop-and-wait
    h.deliver()
    h.share_commit()
    assert h.commands(N2) == [b"p%d" % k for k in range(20)]


def test_pipelining_is_bounded_by_max_inflight_bytes() -> None:
    cfg = replace(CONFIG, max_append_entries=1, max_append_bytes=200, max_inflight_bytes=250)
    h = Harness(3, cfg)
    h.campaign(N1)
    for _ in range(5):
        h.propose(N1, b"x" * 100)
    rd = h.process(N1)
    assert rd is not None
    assert len([m for m in rd.messages if isinstance(m, AppendEntries) and m.dst == N2]) == 3


def test_uncommitted_cap_refuses_proposals_with_a_retryable_error_until_commit() -> None:
    h = Harness(3, replace(CONFIG, max_uncommitted_bytes=400))
    h.campaign(N1)
    results = [h.propose(N1, b"y" * 100) for _ in range(5)]
    assert [type(r) for r in results] == [Proposed, Proposed, Proposed, Overloaded, Overloaded]
    h.deliver()
    assert isinstance(h.propose(N1, b"y" * 100), Proposed)


def test_propose_on_a_follower_returns_the_leader_hint() -> None:
    h = Harness(3)
    h.campaign(N1)
    assert h.propose(N2, b"x") == NotLeader(N1)


def test_s5_3_fast_backtracking_skips_a_whole_conflicting_term_in_one_round_trip() -> None:
    logs = {
        N1: [e(1, 1)] + [e(i, 3) for i in range(2, 40)],
        N2: [e(1, 1)] + [e(i, 3) for i in range(2, 40)],
        N3: [e(1, 1)] + [e(i, 2) for i in range(2, 60)],
    }
    hs = {i: HardState(Term(3), None, LogIndex(1)) for i in logs}
    h = Harness(3, logs=logs, hard_states=hs)
    h.campaign(N1)
    h.deliver()
    rejects = [m for m in h.sent if isinstance(m, AppendEntriesResponse) and not m.success]
    assert [m.src for m in rejects] == [N3]  # one round trip skips the term-2 run, not 38
    assert h.logs[N3].all_entries() == h.logs[N1].all_entries()


def test_replicate_state_falls_back_to_probing_after_lost_appends() -> None:
    h = Harness(3)
    h.campaign(N1)
    assert h.nodes[N1].progress[N2].state is ProgressState.REPLICATE
    h.propose(N1, b"lost")
    h.deliver(lambda m: not (isinstance(m, AppendEntries) and m.dst == N2))
    for _ in range(4):
        h.advance_time(CONFIG.heartbeat_interval, [N1])
        h.deliver()
    assert h.commands(N2) == [b"lost"]


def test_s5_4_3_an_append_reaching_below_the_commit_index_still_adds_what_lies_beyond() -> None:
    h = Harness(
        3,
        logs={N2: [e(1, 3), e(2, 3), e(3, 3)]},
        hard_states={N2: HardState(Term(3), None, LogIndex(3))},
    )
    h.nodes[N2].step(append(1, 3, [e(2, 3), e(3, 3), e(4, 3)], commit=3), h.now)
    [r] = replies(h)
    assert r.success and r.match_index == 4 and h.logs[N2].last_index() == 4
    h.nodes[N2].step(append(0, 0, [e(1, 3)]), h.now)  # entirely below the commit index
    [r] = replies(h)
    assert r.success and r.match_index == 3


def test_entries_superseded_while_their_ready_is_outstanding_are_rewritten() -> None:
    """The core must not assume persistence before advance: a conflicting append that
    arrives while the driver is still writing makes the next Ready rewrite the suffix."""
    h = follower([e(1, 1)], term=2)
    node = h.nodes[N2]
    node.step(append(1, 1, [e(2, 2), e(3, 2)], term=2), h.now)
    first = node.ready()
    node.step(append(1, 1, [e(2, 3)], term=3), h.now)  # a new leader, mid-write
    h.logs[N2].append(first.entries)  # the driver finishes the stale write ...
    node.advance(first)  # ... and reports it
    second = node.ready()
    assert second.truncate_from == 2 and [(x.index, x.term) for x in second.entries] == [(2, 3)]
    h.logs[N2].append(second.entries)
    node.advance(second)
    assert [(x.index, x.term) for x in h.logs[N2].all_entries()] == [(1, 1), (2, 3)]
    assert node.log.last_index() == 2 and not node.log.unstable


def test_a_new_commit_index_rides_on_the_next_append_or_a_delayed_one() -> None:
    h = Harness(3)
    h.campaign(N1)
    h.share_commit()
    h.propose(N1, b"x")
    h.deliver()
    assert h.nodes[N1].commit_index == 2
    # No append at once only to carry the commit index: the followers have not applied "x".
    assert h.commands(N2) == h.commands(N3) == []
    h.propose(N1, b"y")
    h.deliver()
    assert h.commands(N2) == h.commands(N3) == [b"x"]  # carried by y's append
    delay = h.config.commit_notify_delay
    assert 0 < delay < h.config.heartbeat_interval
    assert h.nodes[N1].next_deadline() == h.now + delay
    beats = sum(isinstance(m, Heartbeat) for m in h.sent)
    h.advance_time(delay / 2, [N1])
    h.deliver()
    assert h.commands(N2) == [b"x"]  # not yet
    h.advance_time(delay / 2, [N1])
    h.deliver()
    assert h.commands(N2) == h.commands(N3) == [b"x", b"y"]  # the delayed append
    assert sum(isinstance(m, Heartbeat) for m in h.sent) == beats  # not a heartbeat's doing
