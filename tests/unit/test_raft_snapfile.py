"""The snapshot files of a member, the KV state's snapshot stream, and start-up
recovery (`SnapshotKeeper.recover`) on real LMDB stores in tmp_path."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import xxhash

from coord.kv.lmdb_state import KVStoreError, LmdbKVStore
from coord.kv.machine import KVStateMachine
from coord.kv.types import KeyValue
from coord.raft.config import RaftConfig
from coord.raft.lmdb_store import LmdbRaftStorage
from coord.raft.snapdriver import SnapshotKeeper
from coord.raft.snapfile import HEADER, SnapshotFiles
from coord.raft.snapshot import SnapshotChunk, SnapshotMeta
from coord.raft.types import Entry, EntryKind, LogIndex, NodeId, Term

VOTERS = (NodeId(1), NodeId(2), NodeId(3))


def meta_of(data: bytes, index: int = 5, term: int = 1) -> SnapshotMeta:
    return SnapshotMeta(LogIndex(index), Term(term), VOTERS, (), len(data),
                        xxhash.xxh3_64_intdigest(data))


def test_snapshots_are_readable_by_offset_the_replaced_one_until_reopened(
    tmp_path: Path,
) -> None:
    files = SnapshotFiles(tmp_path)
    taken = files.take(lambda out: (out.write(b"abc"), out.write(b"defg"), LogIndex(7))[2])
    assert (taken.index, taken.size) == (7, 7)
    meta = SnapshotMeta(taken.index, Term(2), VOTERS, (), taken.size, taken.digest)
    assert files.read(meta, 0, 4) is None  # not published yet
    files.commit_taken(meta)
    assert files.latest() == meta
    assert files.read(meta, 2, 3) == b"cde" and files.read(meta, 5, 10) == b"fg"
    newer = files.take(lambda out: (out.write(b"new state"), LogIndex(9))[1])
    meta2 = SnapshotMeta(newer.index, Term(2), VOTERS, (), newer.size, newer.digest)
    files.commit_taken(meta2)
    assert files.latest() == meta2 and files.read(meta2, 0, 3) == b"new"
    assert files.read(meta, 4, 3) == b"efg"  # a transfer of the replaced one can finish
    files.close()
    again = SnapshotFiles(tmp_path)
    assert again.latest() == meta2 and again.read(meta, 0, 1) is None
    again.close()


def test_received_chunks_resume_from_the_file_length_and_publish_when_verified(
    tmp_path: Path,
) -> None:
    data = bytes(range(200)) * 10
    meta = meta_of(data)
    files = SnapshotFiles(tmp_path)
    assert files.write_chunk(SnapshotChunk(meta, 0, data[:700], False))
    files.close()
    files = SnapshotFiles(tmp_path)  # a restart in the middle of the transfer
    assert files.partial() == (meta, 700) and files.latest() is None
    # A resent chunk at an earlier offset rewrites from there (idempotent).
    assert files.write_chunk(SnapshotChunk(meta, 500, data[500:1500], False))
    assert files.write_chunk(SnapshotChunk(meta, 1500, data[1500:], True))
    assert files.latest() == meta and files.partial() is None
    with files.open_data(meta) as f:
        assert f.read() == data
    files.close()


def test_a_snapshot_failing_its_digest_is_dropped(tmp_path: Path) -> None:
    data = b"x" * 100
    meta = meta_of(data)
    files = SnapshotFiles(tmp_path)
    assert not files.write_chunk(SnapshotChunk(meta, 0, b"y" * 100, True))
    assert files.latest() is None and files.partial() is None
    files.close()


def test_a_complete_partial_left_by_a_crash_is_published_at_start(tmp_path: Path) -> None:
    data = b"z" * 50
    meta = meta_of(data)
    files = SnapshotFiles(tmp_path)
    files.write_chunk(SnapshotChunk(meta, 0, data, False))  # as if `last` were never handled
    assert files.finish_partial() and files.latest() == meta
    assert (tmp_path / "snapshot.bin").stat().st_size == HEADER + 50
    files.close()


def _filled_store(path: Path, n: int) -> tuple[LmdbKVStore, KVStateMachine]:
    store = LmdbKVStore(path, tables=["fs_x"])
    with store.writer() as view:
        for i in range(n):
            view.put(KeyValue(b"k%04d" % i, b"v" * 50, 1, LogIndex(i + 1), LogIndex(i + 1)))
        view.table("fs_x").put(b"t", b"table row")
        view.set_applied(LogIndex(n))
    return store, KVStateMachine(store)


def test_a_kv_snapshot_restores_the_exact_state_and_replaces_what_was_there(
    tmp_path: Path,
) -> None:
    src, src_fsm = _filled_store(tmp_path / "a", 300)
    out = io.BytesIO()
    assert src_fsm.write_snapshot(out) == 300
    dst, dst_fsm = _filled_store(tmp_path / "b", 5)
    with dst.writer() as view:
        view.put(KeyValue(b"stale", b"gone after restore", 1, LogIndex(1), LogIndex(1)))
    assert dst_fsm.restore_snapshot(io.BytesIO(out.getvalue())) == 300
    assert dst_fsm.dump() == src_fsm.dump()
    again = io.BytesIO()
    dst_fsm.write_snapshot(again)
    assert again.getvalue() == out.getvalue()  # canonical: equal states, equal bytes
    other = LmdbKVStore(tmp_path / "c", tables=["another"])
    with pytest.raises(KVStoreError):
        other.restore_snapshot(io.BytesIO(out.getvalue()))
    for s in (src, dst, other):
        s.close()


def test_recovery_restores_a_lost_state_db_from_the_snapshot(tmp_path: Path) -> None:
    storage = LmdbRaftStorage(tmp_path / "raft")
    storage.append([Entry(Term(1), LogIndex(i), EntryKind.NOOP) for i in range(1, 13)])
    store, fsm = _filled_store(tmp_path / "kv", 10)
    files = SnapshotFiles(tmp_path / "snap")
    taken = files.take(fsm.write_snapshot)
    files.commit_taken(SnapshotMeta(taken.index, Term(1), VOTERS, (), taken.size, taken.digest))
    storage.truncate_prefix(LogIndex(8))
    before = fsm.dump()
    store.close()
    empty = LmdbKVStore(tmp_path / "kv2", tables=["fs_x"])  # the state DB is gone
    fsm2 = KVStateMachine(empty)
    SnapshotKeeper(files, storage, fsm2, RaftConfig()).recover()
    assert fsm2.applied_index == 10 and fsm2.snapshot_index == 10
    assert fsm2.dump() == before
    assert (storage.first_index(), storage.last_index()) == (9, 12)  # the tail is replayed
    empty.close()
    files.close()
    storage.close()


def test_recovery_truncates_a_log_that_stopped_before_an_installed_snapshot(
    tmp_path: Path,
) -> None:
    storage = LmdbRaftStorage(tmp_path / "raft")
    storage.append([Entry(Term(1), LogIndex(i), EntryKind.NOOP) for i in range(1, 4)])
    store, fsm = _filled_store(tmp_path / "kv", 10)  # the state is at 10 already ...
    files = SnapshotFiles(tmp_path / "snap")
    out = io.BytesIO()
    fsm.write_snapshot(out)
    data = out.getvalue()
    meta = meta_of(data, index=10, term=2)
    files.write_chunk(SnapshotChunk(meta, 0, data, True))  # ... but the log ends at 3
    SnapshotKeeper(files, storage, fsm, RaftConfig()).recover()
    assert (storage.first_index(), storage.last_index(), storage.term(LogIndex(10))) == (11, 10, 2)
    store.close()
    files.close()
    storage.close()
