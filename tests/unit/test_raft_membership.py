"""Membership changes, leadership transfer and lease reads in the pure Raft core.

Each test names the rule it checks (Ongaro's dissertation: §4.1 single-server
changes, §4.2 learners/catch-up, §4.2.2 removing the leader, §3.10 transfer,
§6.4.1 lease reads).
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from coord.raft.codec import decode_batch, encode_batch
from coord.raft.config import ConfigError
from coord.raft.core import RaftNode
from coord.raft.membership import (
    ChangeKind,
    ConfChange,
    Membership,
    MembershipError,
    apply_change,
    tracker_from_log,
)
from coord.raft.memlog import MemLog
from coord.raft.messages import (
    AppendEntries,
    Heartbeat,
    Message,
    ReadCtx,
    RequestVote,
    TimeoutNow,
)
from coord.raft.ready import NotLeader, Proposed, Refused, Role, TransferStarted
from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term
from tests.unit.raft_harness import CONFIG, Harness

N1, N2, N3, N4 = NodeId(1), NodeId(2), NodeId(3), NodeId(4)
ADDR = "127.0.0.1:1"


def cluster(n: int = 3, **config: object) -> Harness:
    h = Harness(n, dataclasses.replace(CONFIG, **config))  # type: ignore[arg-type]
    h.campaign(N1)
    assert h.leader() == N1
    return h


def add_joiner(h: Harness, nid: NodeId) -> None:
    """A new, empty node that knows no configuration yet (ddfs meta --join)."""
    h.ids.append(nid)
    h.logs[nid] = MemLog()
    h.hard[nid] = HardState()
    h.applied[nid], h.read_states[nid], h.readies[nid] = [], [], []
    h.nodes[nid] = RaftNode(
        nid, (), h.config, log=h.logs[nid], hard_state=HardState(),
        rng=random.Random(int(nid)), now=h.now, membership=Membership.of(()),
    )


def change(h: Harness, kind: ChangeKind, node: NodeId, leader: NodeId = N1) -> object:
    result = h.nodes[leader].propose_conf_change(ConfChange(kind, node, ADDR))
    h.deliver()
    return result


def heartbeat(h: Harness, keep: object = None) -> None:
    leader = h.leader()
    assert leader is not None
    h.advance_time(CONFIG.heartbeat_interval, [leader])
    h.deliver() if keep is None else h.deliver(keep)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the configuration value


def test_membership_round_trips_and_changes_apply_one_at_a_time() -> None:
    m = Membership.of({N1, N2, N3}, (), {N1: "a:1", N2: "b:2", N3: "c:3"})
    assert Membership.decode(m.encode()) == m
    m2 = apply_change(m, ConfChange(ChangeKind.ADD_LEARNER, N4, "d:4"))
    assert m2.learners == {N4} and m2.voters == m.voters and m2.address_book()[N4] == "d:4"
    m3 = apply_change(m2, ConfChange(ChangeKind.PROMOTE, N4))
    assert m3.voters == {N1, N2, N3, N4} and not m3.learners
    m4 = apply_change(m3, ConfChange(ChangeKind.REMOVE, N1))
    assert m4.voters == {N2, N3, N4} and N1 not in m4.address_book()
    for bad in (ConfChange(ChangeKind.ADD_LEARNER, N1, "x:1"), ConfChange(ChangeKind.PROMOTE, N2),
                ConfChange(ChangeKind.REMOVE, N4), ConfChange(ChangeKind.ADD_LEARNER, N4)):
        with pytest.raises(MembershipError):
            apply_change(m, bad)
    with pytest.raises(MembershipError):
        apply_change(Membership.of({N1}), ConfChange(ChangeKind.REMOVE, N1))
    with pytest.raises(MembershipError):
        Membership.decode(b"\x01garbage")


def test_timeout_now_and_transfer_votes_survive_the_codec() -> None:
    msgs: list[Message] = [
        TimeoutNow(N1, N2, Term(3)),
        RequestVote(N2, N3, Term(4), LogIndex(9), Term(3), False, True),
        RequestVote(N2, N3, Term(4), LogIndex(9), Term(3), True, False),
    ]
    assert decode_batch(encode_batch(msgs)) == msgs


# ---------------------------------------------------------------- §4.1 rules


def test_s4_1_a_new_leader_proposes_no_change_before_committing_an_entry_of_its_term() -> None:
    h = Harness(3)
    h.campaign(N1, keep=lambda m: not isinstance(m, AppendEntries))  # NOOP not replicated
    assert h.leader() == N1
    result = h.nodes[N1].propose_conf_change(ConfChange(ChangeKind.REMOVE, N3))
    assert isinstance(result, Refused) and "entry of its term" in result.reason
    h.advance_time(CONFIG.heartbeat_interval, [N1])
    h.deliver()
    assert isinstance(h.nodes[N1].propose_conf_change(ConfChange(ChangeKind.REMOVE, N3)), Proposed)


def test_s4_1_at_most_one_uncommitted_change() -> None:
    h = cluster()
    first = h.nodes[N1].propose_conf_change(ConfChange(ChangeKind.ADD_LEARNER, N4, ADDR))
    second = h.nodes[N1].propose_conf_change(ConfChange(ChangeKind.REMOVE, N3))
    assert isinstance(first, Proposed)
    assert isinstance(second, Refused) and "not committed" in second.reason
    add_joiner(h, N4)
    h.deliver()
    assert isinstance(h.nodes[N1].propose_conf_change(ConfChange(ChangeKind.REMOVE, N3)), Proposed)


def test_s4_1_a_configuration_takes_effect_when_appended_and_lapses_when_truncated() -> None:
    h = cluster(5)
    five = {N1, N2, N3, N4, NodeId(5)}
    # N2 appends N1's change, but no acknowledgement reaches N1: uncommitted.
    h.nodes[N1].propose_conf_change(ConfChange(ChangeKind.REMOVE, NodeId(5)))
    h.deliver(keep=lambda m: m.dst == N2 and isinstance(m, AppendEntries))
    assert h.nodes[N2].membership.voters == {N1, N2, N3, N4}
    assert h.nodes[N2].commit_index < h.last_index(N2)
    # N3, N4, N5 never saw it; N3 leads a new term without N1 and N2 ...
    h.campaign(N3, keep=lambda m: not {m.src, m.dst} & {N1, N2})
    assert h.nodes[N3].role is Role.LEADER
    # ... and its log overwrites N2's uncommitted entry: the old configuration is back.
    h.nodes[N3].propose(b"x")
    for _ in range(3):  # the probes that were cut off during the election go out again
        h.advance_time(CONFIG.heartbeat_interval, [N3])
        h.deliver()
    assert h.nodes[N2].membership.voters == five
    assert all(e.kind is not EntryKind.CONFIG for e in h.logs[N2].all_entries())
    assert h.commands(N2) == [b"x"]


# ---------------------------------------------------------------- learners


def test_s4_2_a_learner_receives_the_log_but_neither_votes_nor_counts() -> None:
    h = cluster()
    add_joiner(h, N4)
    assert isinstance(change(h, ChangeKind.ADD_LEARNER, N4), Proposed)
    h.propose(N1, b"a")
    h.deliver()
    heartbeat(h)  # the commit index reaches the learner with the next heartbeat
    assert h.commands(N4) == [b"a"]
    assert h.nodes[N4].membership.learners == {N4}
    # Leader + learner alone cannot commit: quorum counts the 3 voters only.
    h.propose(N1, b"b")
    h.deliver(keep=lambda m: N2 not in (m.src, m.dst) and N3 not in (m.src, m.dst))
    assert h.commands(N1) == [b"a"] and h.last_index(N4) == h.last_index(N1)
    # A learner never campaigns, however long it waits.
    h.advance_time(100.0, [N4])
    assert not [m for m in h.take_all() if isinstance(m, RequestVote)]
    assert h.nodes[N4].role is Role.FOLLOWER


def test_s4_2_promoting_a_learner_that_is_far_behind_is_refused_with_a_clear_error() -> None:
    h = cluster(max_learner_lag=5)
    add_joiner(h, N4)
    h.nodes[N1].propose_conf_change(ConfChange(ChangeKind.ADD_LEARNER, N4, ADDR))
    h.deliver(keep=lambda m: N4 not in (m.src, m.dst))  # not started yet: never heard of
    silent = h.nodes[N1].propose_conf_change(ConfChange(ChangeKind.PROMOTE, N4))
    assert isinstance(silent, Refused) and "not acknowledged any entry" in silent.reason
    heartbeat(h)
    for k in range(10):
        h.propose(N1, b"%d" % k)
    h.deliver(keep=lambda m: m.dst != N4)  # the learner hears nothing
    refused = h.nodes[N1].propose_conf_change(ConfChange(ChangeKind.PROMOTE, N4))
    assert isinstance(refused, Refused)
    assert "learner 4 is" in refused.reason and "behind" in refused.reason
    for _ in range(5):
        heartbeat(h)  # probes find the learner and catch it up
    assert h.last_index(N4) == h.last_index(N1)
    assert isinstance(change(h, ChangeKind.PROMOTE, N4), Proposed)
    assert h.nodes[N1].voters.voters == {N1, N2, N3, N4}
    # Now 3 of 4 are needed: N1 + N4 alone do not commit.
    h.propose(N1, b"late")
    h.deliver(keep=lambda m: m.dst in (N1, N4) and m.src in (N1, N4))
    assert b"late" not in h.commands(N1)


# ---------------------------------------------------------------- removal


def test_s4_2_2_a_removed_follower_stops_campaigning_and_its_votes_are_ignored() -> None:
    h = cluster()
    assert isinstance(change(h, ChangeKind.REMOVE, N3), Proposed)
    assert h.nodes[N1].voters.voters == {N1, N2} and N3 not in h.nodes[N1].progress
    assert h.nodes[N3].membership.voters == {N1, N2}
    h.advance_time(100.0, [N3])
    assert not [m for m in h.take_all() if m.src == N3]
    # A stale removed node that never learnt it was removed cannot disrupt: its
    # higher-term vote requests are dropped by the remaining voters.
    h.nodes[N2].step(RequestVote(N3, N2, Term(50), LogIndex(99), Term(49)), h.now)
    assert h.nodes[N2].term < 50 and not h.take_all()


def test_s4_2_2_removing_the_leader_it_replicates_without_counting_itself_then_steps_down() -> None:
    h = cluster()
    result = h.nodes[N1].propose_conf_change(ConfChange(ChangeKind.REMOVE, N1))
    assert isinstance(result, Proposed)
    # Only N2 acknowledges: N1 + N2 would be a majority of the old config, but the
    # new one is {N2, N3} and N1 does not count itself.
    h.deliver(keep=lambda m: N3 not in (m.src, m.dst))
    assert h.nodes[N1].role is Role.LEADER and h.nodes[N1].commit_index < result.index
    h.propose(N1, b"during")  # the leader keeps serving until its removal commits
    heartbeat(h)
    assert h.nodes[N1].commit_index >= result.index
    assert h.nodes[N1].role is Role.FOLLOWER
    # It handed over with TimeoutNow: someone leads at once, no election timeout.
    assert h.leader() in (N2, N3)
    new = h.leader()
    assert new is not None
    h.propose(new, b"after")
    h.deliver()
    assert h.commands(N2)[-2:] == [b"during", b"after"]
    h.advance_time(100.0, [N1])
    assert not [m for m in h.take_all() if m.src == N1 and isinstance(m, RequestVote)]


def test_the_configuration_is_recovered_from_the_log_on_restart() -> None:
    h = cluster()
    add_joiner(h, N4)
    change(h, ChangeKind.ADD_LEARNER, N4)
    change(h, ChangeKind.REMOVE, N3)
    heartbeat(h)  # N2 learns that the removal committed
    restarted = RaftNode(N2, h.ids[:3], h.config, log=h.logs[N2], hard_state=h.hard[N2],
                         rng=random.Random(5), now=h.now)
    assert restarted.membership.voters == {N1, N2} and restarted.membership.learners == {N4}
    assert restarted.membership.address_book() == {N4: ADDR}
    tracker = tracker_from_log(h.logs[N2], h.hard[N2].commit, Membership.of({N1}))
    assert tracker.current == restarted.membership and not tracker.has_pending


# ---------------------------------------------------------------- §3.10 transfer


def test_s3_10_transfer_hands_leadership_over_despite_stickiness() -> None:
    h = cluster()
    started = h.nodes[N1].transfer_leadership(N3, h.now)
    assert started == TransferStarted(N3)
    assert [m.dst for m in h.take(TimeoutNow)] == [N3]
    h.nodes[N3].step(TimeoutNow(N1, N3, h.nodes[N1].term), h.now)
    h.deliver()
    assert h.leader() == N3 and h.nodes[N3].term == h.nodes[N1].term


def test_s3_10_the_target_is_caught_up_first_and_proposals_wait() -> None:
    h = cluster()
    h.propose(N1, b"a")
    h.deliver(keep=lambda m: N2 not in (m.dst, m.src))  # N2 misses "a"
    assert isinstance(h.nodes[N1].transfer_leadership(N2, h.now), TransferStarted)
    refused = h.propose(N1, b"b")
    assert isinstance(refused, Refused) and "transfer" in refused.reason
    assert not h.take(TimeoutNow)  # N2 is behind: no TimeoutNow yet
    for _ in range(4):  # probe, catch up, then TimeoutNow, then an election
        h.advance_time(CONFIG.heartbeat_interval, [N1])
        h.deliver()
    assert h.leader() == N2 and h.commands(N2) == [b"a"]
    assert isinstance(h.propose(N1, b"c"), NotLeader)


def test_s3_10_a_transfer_that_does_not_happen_aborts_after_an_election_timeout() -> None:
    h = cluster()
    assert isinstance(h.nodes[N1].transfer_leadership(None, h.now), TransferStarted)
    h.take(TimeoutNow)  # lost
    assert isinstance(h.propose(N1, b"x"), Refused)
    h.advance_time(CONFIG.election_timeout_min, [N1])
    assert h.nodes[N1].role is Role.LEADER and h.nodes[N1].transfer_target is None
    assert isinstance(h.propose(N1, b"x"), Proposed)
    assert isinstance(h.nodes[N1].transfer_leadership(N1, h.now), Refused)
    assert isinstance(h.nodes[N2].transfer_leadership(N3, h.now), NotLeader)


# ---------------------------------------------------------------- §6.4.1 lease reads


def test_lease_reads_need_check_quorum_and_a_drift_bound_below_the_election_timeout() -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(CONFIG, lease_reads=True, check_quorum=False).validate()
    with pytest.raises(ConfigError):
        dataclasses.replace(CONFIG, lease_reads=True, clock_drift_bound=10.0).validate()


def test_s6_4_1_a_leader_with_a_lease_reads_without_a_round_trip_until_it_expires() -> None:
    h = cluster(lease_reads=True, clock_drift_bound=1.0)
    h.advance_time(h.config.heartbeat_interval, [N1])
    sent_at = h.now
    h.deliver()  # a heartbeat round acknowledged by everyone: lease until sent_at + 9
    h.now = sent_at + 8.5
    h.nodes[N1].read_index(ReadCtx(b"r1"), h.now)
    assert not h.take(Heartbeat)  # no round trip
    assert [r.ctx for r in h.read_states[N1]] == [b"r1"]
    h.now = sent_at + 9.0  # expired: back to ReadIndex
    h.nodes[N1].read_index(ReadCtx(b"r2"), h.now)
    assert h.take(Heartbeat) and [r.ctx for r in h.read_states[N1]] == [b"r1"]
    # Without lease_reads nothing changes: every read needs a round.
    plain = cluster()
    plain.advance_time(CONFIG.heartbeat_interval, [N1])
    plain.deliver()
    plain.nodes[N1].read_index(ReadCtx(b"r"), plain.now)
    assert plain.take(Heartbeat) and not plain.read_states[N1]


def test_s6_4_1_no_lease_read_during_a_transfer_or_after_a_restart_vote() -> None:
    h = cluster(lease_reads=True, clock_drift_bound=1.0)
    heartbeat(h)
    h.nodes[N1].transfer_leadership(N2, h.now)
    h.take(TimeoutNow)
    h.nodes[N1].read_index(ReadCtx(b"r"), h.now)
    assert h.take(Heartbeat) and not h.read_states[N1]
    # A member restarted with lease reads on grants no vote for an election timeout.
    fresh = RaftNode(N3, h.ids, h.config, log=h.logs[N3], hard_state=h.hard[N3],
                     rng=random.Random(3), now=h.now)
    fresh.step(RequestVote(N2, N3, Term(40), LogIndex(99), Term(39)), h.now + 1)
    assert fresh.term < 40
    fresh.step(RequestVote(N2, N3, Term(40), LogIndex(99), Term(39)), h.now + 11)
    assert fresh.term == 40 and fresh.vote == N2


def test_recovery_reads_the_log_backwards_across_batches() -> None:
    a = Membership.of({N1, N2, N3})
    b = apply_change(a, ConfChange(ChangeKind.ADD_LEARNER, N4, ADDR))
    c = apply_change(b, ConfChange(ChangeKind.PROMOTE, N4))
    entries = []
    for i in range(1, 701):
        kind = {10: b, 300: c}.get(i)
        if kind is None:
            entries.append(Entry(Term(1), LogIndex(i), EntryKind.COMMAND, b"x"))
        else:
            entries.append(Entry(Term(1), LogIndex(i), EntryKind.CONFIG, kind.encode()))
    log = MemLog(entries)
    late = tracker_from_log(log, LogIndex(500), a)
    assert late.committed == c and late.committed_index == 300 and not late.has_pending
    early = tracker_from_log(log, LogIndex(200), a)
    assert early.committed == b and early.current == c and early.has_pending
    none = tracker_from_log(log, LogIndex(5), a)
    assert none.committed == a and [p[0] for p in none.pending] == [10, 300]
    assert tracker_from_log(MemLog(), LogIndex(0), a).current == a


def test_a_snapshot_carries_the_configuration_and_its_addresses() -> None:
    from coord.raft.snapshot import SnapshotMeta
    from coord.raft.storage import MemoryRaftStorage

    h = cluster()
    add_joiner(h, N4)
    change(h, ChangeKind.ADD_LEARNER, N4)
    change(h, ChangeKind.PROMOTE, N4)
    change(h, ChangeKind.REMOVE, N3)
    commit = h.nodes[N1].commit_index
    config = h.nodes[N1].conf.at(commit)
    assert config.voters == {N1, N2, N4} and config.address_book() == {N4: ADDR}
    assert h.nodes[N1].conf.at(LogIndex(2)).learners == {N4}  # an earlier configuration
    meta = SnapshotMeta(commit, h.nodes[N1].term, tuple(sorted(config.voters)), (), 0, 0,
                        config.addresses)
    store = MemoryRaftStorage()
    store.truncate_prefix(commit, meta.term)  # the log was compacted past every CONFIG entry
    restarted = RaftNode(N2, (N1, N2, N3), h.config, log=store,
                         hard_state=HardState(meta.term, None, commit), rng=random.Random(2),
                         now=h.now, applied=commit, snapshot=meta)
    assert restarted.membership == config
