"""RaftDriver._durable_here: which Readys may hand their committed entries to the
applier before their own persist (only entries already in the local durable log)."""

from __future__ import annotations

from coord.raft.driver import RaftDriver
from coord.raft.messages import ReadCtx
from coord.raft.readindex import ReadState
from coord.raft.ready import Ready, Role, SoftState
from coord.raft.snapshot import SnapshotChunk, SnapshotMeta
from coord.raft.types import Entry, EntryKind, LogIndex, NodeId, Term


def _e(index: int) -> Entry:
    return Entry(Term(2), LogIndex(index), EntryKind.COMMAND, b"x")


def _ready(
    committed: range = range(0), new: range = range(0), truncate: int | None = None,
    reads: int = 0, chunks: tuple[SnapshotChunk, ...] = (),
) -> Ready:
    return Ready(
        hard_state=None, must_sync=bool(new), entries=tuple(_e(i) for i in new),
        truncate_from=None if truncate is None else LogIndex(truncate), messages=(),
        committed_entries=tuple(_e(i) for i in committed),
        read_states=tuple(ReadState(ReadCtx(b"%d" % i), LogIndex(5)) for i in range(reads)),
        failed_reads=(), soft_state=SoftState(Role.LEADER, NodeId(1), Term(2)),
        snapshot_chunks=chunks,
    )


def test_entries_below_what_the_ready_writes_are_applied_before_its_persist() -> None:
    # The leader's common case: an ack committed what the last Ready persisted,
    # while this Ready writes entries proposed meanwhile.
    assert RaftDriver._durable_here(_ready(committed=range(5, 9), new=range(9, 12)))
    assert RaftDriver._durable_here(_ready(committed=range(5, 9)))  # nothing to write
    assert RaftDriver._durable_here(_ready(reads=2))  # reads only


def test_entries_this_ready_writes_wait_for_its_persist() -> None:
    # A follower told a commit index covering the very entries it is about to append.
    assert not RaftDriver._durable_here(_ready(committed=range(5, 11), new=range(9, 12)))
    # A truncation below a committed entry cannot happen, but the rule stays conservative.
    assert not RaftDriver._durable_here(
        _ready(committed=range(5, 9), new=range(12, 13), truncate=7))


def test_nothing_to_apply_or_a_snapshot_in_the_ready_keeps_the_old_order() -> None:
    assert not RaftDriver._durable_here(_ready(new=range(9, 12)))
    meta = SnapshotMeta(LogIndex(4), Term(1), (NodeId(1),), (), 10, 0)
    chunk = SnapshotChunk(meta, 0, b"x" * 10, True)
    assert not RaftDriver._durable_here(_ready(committed=range(5, 9), chunks=(chunk,)))
