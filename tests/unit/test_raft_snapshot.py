"""InstallSnapshot and compaction in the pure Raft core (§7): exact effects.

A leader whose log was compacted behind a snapshot streams it chunk by chunk
to a follower that lacks the compacted entries; the follower takes only the
chunk at the offset it expects, acknowledges each one with the next offset
it wants (so transfers resume after losses and restarts; a new snapshot
restarts at 0), and says "done" only once its driver installed the
snapshot.  Entries after the snapshot are kept only if the log holds the
snapshot's last entry.
"""

from __future__ import annotations

import random

import pytest

from coord.raft.config import RaftConfig
from coord.raft.core import RaftNode
from coord.raft.logview import LogUnavailable
from coord.raft.memlog import MemLog
from coord.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVoteResponse,
)
from coord.raft.progress import ProgressState
from coord.raft.raftlog import RaftLog
from coord.raft.ready import Ready, Role
from coord.raft.snapshot import MemorySnapshots, SnapshotMeta
from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term

CFG = RaftConfig(
    election_timeout_min=10.0, election_timeout_max=20.0, heartbeat_interval=2.0,
    snapshot_chunk_bytes=4,
)
A, B, C = NodeId(1), NodeId(2), NodeId(3)
DATA = b"0123456789"  # a 10-byte snapshot: chunks of 4, 4 and 2 bytes
META = SnapshotMeta(LogIndex(8), Term(1), (A, B, C), (), len(DATA), 42)


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(Term(term), LogIndex(i), EntryKind.COMMAND, b"x%d" % i) for i in range(lo, hi)]


def leader_with_compacted_log() -> tuple[RaftNode, MemorySnapshots]:
    """Node A leads term 2 with entries 1..10 applied, a snapshot at 8, log compacted to 6."""
    log = MemLog(entries(1, 11))
    snaps = MemorySnapshots()
    snaps.put(META, DATA)
    node = RaftNode(A, [B, C], CFG, log=log, hard_state=HardState(Term(1), None, LogIndex(10)),
                    rng=random.Random(1), now=0.0, applied=LogIndex(10), snapshot=META,
                    snapshots=snaps)
    log.truncate_prefix(LogIndex(6), node.compact(LogIndex(6)))
    node.tick(30.0)  # pre-vote round
    for peer in (B, C):
        node.step(_vote_response(peer, Term(2), pre=True), 30.0)
    for peer in (B, C):
        node.step(_vote_response(peer, Term(2), pre=False), 30.0)
    assert node.role is Role.LEADER
    drain(node, log)
    return node, snaps


def _vote_response(src: NodeId, term: Term, pre: bool) -> Message:
    return RequestVoteResponse(src, A, term, True, pre)


def drain(node: RaftNode, log: MemLog) -> list[Message]:
    """Persist and advance every Ready; the messages they carried."""
    out: list[Message] = []
    for _ in range(10):
        if not node.has_ready():
            break
        rd = node.ready()
        log.append(rd.entries)
        out.extend(rd.messages)
        node.advance(rd)
    return out


def follower(partial: tuple[SnapshotMeta, int] | None = None) -> tuple[RaftNode, MemLog]:
    log = MemLog(entries(1, 3))
    node = RaftNode(B, [A, C], CFG, log=log, hard_state=HardState(Term(2), None, LogIndex(2)),
                    rng=random.Random(2), now=0.0, applied=LogIndex(2), partial=partial)
    return node, log


def chunk(offset: int, meta: SnapshotMeta = META, data: bytes = DATA) -> InstallSnapshot:
    return InstallSnapshot(A, B, Term(2), meta, offset, data[offset : offset + 4])


def step_ready(node: RaftNode, msg: Message) -> Ready:
    node.step(msg, 1.0)
    rd = node.ready()
    node.advance(rd)
    return rd


def test_leader_sends_a_snapshot_to_a_follower_behind_its_first_index() -> None:
    node, _ = leader_with_compacted_log()
    # B says its log ends at 2: everything from 3 on is needed, 3..6 are compacted.
    node.step(AppendEntriesResponse(B, A, Term(2), False, reject_index=LogIndex(10),
                                    hint_index=LogIndex(2), hint_term=Term(1)), 31.0)
    rd = node.ready()
    node.advance(rd)
    sent = [m for m in rd.messages if m.dst == B]
    assert sent == [InstallSnapshot(A, B, Term(2), META, 0, b"0123")]
    assert node.progress[B].state is ProgressState.SNAPSHOT
    # Nothing more until B answers (one chunk in flight).
    assert not [m for m in node.ready().messages if m.dst == B]


def test_leader_streams_from_the_offset_the_follower_asks_for_then_appends() -> None:
    node, _ = leader_with_compacted_log()
    node.step(AppendEntriesResponse(B, A, Term(2), False, reject_index=LogIndex(10),
                                    hint_index=LogIndex(2), hint_term=Term(1)), 31.0)
    node.advance(node.ready())
    node.step(InstallSnapshotResponse(B, A, Term(2), META.index, 8, False), 31.0)
    rd = node.ready()
    node.advance(rd)
    expected = InstallSnapshot(A, B, Term(2), META, 8, b"89")
    assert [m for m in rd.messages if m.dst == B] == [expected]
    node.step(InstallSnapshotResponse(B, A, Term(2), META.index, 10, True), 31.0)
    rd = node.ready()
    node.advance(rd)
    appends = [m for m in rd.messages if isinstance(m, AppendEntries) and m.dst == B]
    assert appends and appends[0].prev_log_index == META.index
    assert node.progress[B].match == META.index


def test_leader_resends_a_lost_chunk_after_a_quiet_heartbeat_interval() -> None:
    node, _ = leader_with_compacted_log()
    node.step(AppendEntriesResponse(B, A, Term(2), False, reject_index=LogIndex(10),
                                    hint_index=LogIndex(2), hint_term=Term(1)), 31.0)
    node.advance(node.ready())
    node.tick(33.0)  # one heartbeat interval with no answer from B ...
    node.tick(35.0)  # ... and another: the chunk is resent
    rd = node.ready()
    assert InstallSnapshot(A, B, Term(2), META, 0, b"0123") in rd.messages


def test_follower_acknowledges_each_chunk_with_the_next_offset() -> None:
    node, _ = follower()
    rd = step_ready(node, chunk(0))
    assert [(c.offset, c.data, c.last) for c in rd.snapshot_chunks] == [(0, b"0123", False)]
    assert rd.messages == (InstallSnapshotResponse(B, A, Term(2), META.index, 4, False),)
    rd = step_ready(node, chunk(4))
    assert rd.messages == (InstallSnapshotResponse(B, A, Term(2), META.index, 8, False),)


def test_follower_answers_an_unexpected_offset_with_the_offset_it_has() -> None:
    node, _ = follower()
    step_ready(node, chunk(0))
    for wrong in (0, 8):  # a duplicate, then a chunk after a lost one
        rd = step_ready(node, chunk(wrong))
        assert rd.snapshot_chunks == ()
        assert rd.messages == (InstallSnapshotResponse(B, A, Term(2), META.index, 4, False),)


def test_a_restarted_follower_resumes_from_its_partial_snapshot() -> None:
    node, _ = follower(partial=(META, 8))
    rd = step_ready(node, chunk(0))  # a new leader starts from scratch ...
    assert rd.messages == (InstallSnapshotResponse(B, A, Term(2), META.index, 8, False),)
    rd = step_ready(node, chunk(8))  # ... and goes on from where B stopped
    assert [(c.offset, c.last) for c in rd.snapshot_chunks] == [(8, True)]


def test_a_new_snapshot_restarts_the_transfer_from_zero() -> None:
    newer = SnapshotMeta(LogIndex(9), Term(2), (A, B, C), (), 10, 7)
    node, _ = follower(partial=(META, 8))
    rd = step_ready(node, chunk(4, newer))
    assert rd.messages == (InstallSnapshotResponse(B, A, Term(2), newer.index, 0, False),)
    rd = step_ready(node, chunk(0, newer))
    assert [(c.meta, c.offset) for c in rd.snapshot_chunks] == [(newer, 0)]


def test_the_last_chunk_is_acknowledged_only_after_the_install() -> None:
    node, log = follower(partial=(META, 8))
    rd = step_ready(node, chunk(8))
    assert rd.snapshot_chunks[0].last and rd.messages == ()
    # The driver replaced the state, then:
    node.snapshot_installed(META)
    log.truncate_prefix(META.index, META.term)
    rd = node.ready()
    node.advance(rd)
    assert rd.messages == (InstallSnapshotResponse(B, A, Term(2), META.index, 10, True),)
    assert node.log.applied == node.commit_index == META.index
    assert node.log.first_index() == META.index + 1 and node.log.last_index() == META.index
    assert node.snapshot == META
    # Appends continue right after the snapshot.
    rd = step_ready(node, AppendEntries(A, B, Term(2), META.index, META.term,
                                        tuple(entries(9, 11)), LogIndex(10)))
    assert [e.index for e in rd.entries] == [9, 10]


def test_a_corrupt_snapshot_is_asked_for_again_from_zero() -> None:
    node, _ = follower(partial=(META, 8))
    step_ready(node, chunk(8))
    node.snapshot_corrupt(META)
    rd = node.ready()
    assert rd.messages == (InstallSnapshotResponse(B, A, Term(2), META.index, 0, False),)
    assert node.receiving is None


def test_a_snapshot_the_follower_already_covers_is_done_at_once() -> None:
    node, _ = follower()
    old = SnapshotMeta(LogIndex(2), Term(1), (A, B, C), (), 10, 1)
    rd = step_ready(node, chunk(0, old))
    assert rd.snapshot_chunks == ()
    assert rd.messages == (InstallSnapshotResponse(B, A, Term(2), old.index, 0, True),)


def test_restore_keeps_entries_after_a_snapshot_the_log_holds() -> None:
    log = MemLog(entries(1, 11))
    rl = RaftLog(log, LogIndex(3), LogIndex(3))
    rl.restore(LogIndex(6), Term(1))
    assert (rl.first_index(), rl.last_index(), rl.committed, rl.applied) == (7, 10, 6, 6)
    log2 = MemLog(entries(1, 11))
    rl2 = RaftLog(log2, LogIndex(3), LogIndex(3))
    rl2.restore(LogIndex(6), Term(5))  # a different term at 6: the whole log goes (§7)
    assert (rl2.first_index(), rl2.last_index(), rl2.term(LogIndex(6))) == (7, 6, 5)


def test_the_core_never_reads_below_its_compaction_floor() -> None:
    log = MemLog(entries(1, 11))
    rl = RaftLog(log, LogIndex(10), LogIndex(10))
    assert rl.compact_to(LogIndex(5)) == 1
    with pytest.raises(LogUnavailable):
        rl.term(LogIndex(4))
    with pytest.raises(LogUnavailable):
        rl.entries(LogIndex(5), LogIndex(7), 1 << 20)
    assert rl.term(LogIndex(5)) == 1 and rl.first_index() == 6
    with pytest.raises(ValueError):
        rl.compact_to(LogIndex(11))  # beyond applied
