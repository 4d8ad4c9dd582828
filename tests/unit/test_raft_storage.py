"""Contract tests for RaftStorage: every test runs against the in-memory twin, LMDB,
and LMDB behind the write-ahead log (`wal`: entries stay in the WAL; `wal-flush`:
the WAL is moved into LMDB every two entries, so both paths are exercised; a
restart replays the WAL).

The twin is what the simulator trusts, so any behaviour where the two differ
is a bug in one of them; `test_twin_and_lmdb_agree` drives both with the same
random operations and compares everything observable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coord.raft.lmdb_store import LmdbRaftStorage
from coord.raft.storage import (
    ENTRY_OVERHEAD,
    CompactedError,
    LogView,
    MemoryRaftStorage,
    RaftStorage,
    StorageClosedError,
    StorageError,
    StorageFullError,
    StorageInvariantError,
    UnavailableError,
    entry_size,
)
from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term
from coord.raft.wal_store import WAL_NAME, WalRaftStorage

MAP_SIZE = 1 << 26


class Harness:
    """Opens a store and "restarts" it: close + reopen (LMDB) or crash + reopen (twin)."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.store: RaftStorage = self._open()

    def _open(self) -> RaftStorage:
        if self.kind == "lmdb":
            return LmdbRaftStorage(self.path, map_size=MAP_SIZE)
        if self.kind == "wal":
            return WalRaftStorage(self.path, map_size=MAP_SIZE)
        if self.kind == "wal-flush":
            return WalRaftStorage(self.path, map_size=MAP_SIZE, flush_entries=2)
        return MemoryRaftStorage()

    def restart(self) -> RaftStorage:
        if isinstance(self.store, MemoryRaftStorage):
            self.store = self.store.crash()
        else:
            self.store.close()
            self.store = self._open()
        return self.store


@pytest.fixture(params=["memory", "lmdb", "wal", "wal-flush"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(request.param, tmp_path / "raft")
    try:
        yield h
    finally:
        h.store.close()


def ent(index: int, term: int, data: bytes = b"", kind: EntryKind = EntryKind.COMMAND) -> Entry:
    return Entry(term=Term(term), index=LogIndex(index), kind=kind, data=data)


def run(lo: int, hi: int, term: int) -> list[Entry]:
    """Entries lo..hi inclusive, all in `term`, each carrying its index and term as data."""
    return [ent(i, term, f"{i}@{term}".encode()) for i in range(lo, hi + 1)]


def snapshot(store: RaftStorage) -> tuple[object, ...]:
    """Everything observable about a store."""
    first, last = store.first_index(), store.last_index()
    return (
        first,
        last,
        store.term(LogIndex(first - 1)),
        tuple(store.entries(first, LogIndex(last + 1))),
        store.load(),
    )


# --- the empty log ----------------------------------------------------------------------------


def test_fresh_store_is_the_empty_log_with_sentinel_zero(harness: Harness) -> None:
    s = harness.store
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.term(LogIndex(0)) == 0
    assert s.entries(LogIndex(1), LogIndex(1)) == []
    assert s.load() == HardState()
    with pytest.raises(UnavailableError):
        s.term(LogIndex(1))
    with pytest.raises(UnavailableError):
        s.entries(LogIndex(1), LogIndex(2))


def test_the_store_satisfies_the_cores_read_only_view(harness: Harness) -> None:
    view: LogView = harness.store  # mypy checks the structural match
    harness.store.append(run(1, 2, 1))
    assert view.last_index() == 2 and view.term(LogIndex(2)) == 1


# --- append, read, conflicts ------------------------------------------------------------------


def test_append_then_read_back_entries_and_terms(harness: Harness) -> None:
    s = harness.store
    log = run(1, 3, 1) + run(4, 6, 2)
    s.append(log[:2])
    s.append(log[2:])
    assert (s.first_index(), s.last_index()) == (1, 6)
    assert s.entries(LogIndex(1), LogIndex(7)) == log
    assert s.entries(LogIndex(3), LogIndex(5)) == log[2:4]
    assert [s.term(LogIndex(i)) for i in range(7)] == [0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(UnavailableError):
        s.entries(LogIndex(5), LogIndex(8))
    with pytest.raises(ValueError):
        s.entries(LogIndex(4), LogIndex(3))


def test_entry_kinds_and_binary_payloads_round_trip(harness: Harness) -> None:
    log = [
        ent(1, 1, kind=EntryKind.NOOP),
        ent(2, 1, bytes(range(256)), EntryKind.COMMAND),
        ent(3, 1, b"\x00cfg", EntryKind.CONFIG),
    ]
    harness.store.append(log)
    assert harness.restart().entries(LogIndex(1), LogIndex(4)) == log


def test_append_inside_the_log_replaces_the_conflicting_suffix(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 5, 1))
    s.append(run(3, 4, 2))  # a new leader's entries conflict from index 3
    assert s.last_index() == 4
    assert s.entries(LogIndex(1), LogIndex(5)) == run(1, 2, 1) + run(3, 4, 2)
    assert harness.restart().entries(LogIndex(1), LogIndex(5)) == run(1, 2, 1) + run(3, 4, 2)


def test_truncate_suffix_removes_from_index_on(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 5, 1))
    s.truncate_suffix(LogIndex(4))
    assert s.last_index() == 3
    s.truncate_suffix(LogIndex(9))  # beyond the end: nothing to remove
    assert s.last_index() == 3
    s.truncate_suffix(LogIndex(1))
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert harness.restart().last_index() == 0


@pytest.mark.parametrize(
    ("batch", "why"),
    [
        ([ent(5, 1)], "gap after the last index"),
        ([ent(3, 1), ent(5, 1)], "batch not contiguous"),
        ([ent(4, 3), ent(5, 2)], "term decreases inside the batch"),
        ([ent(4, 1)], "term below the entry it follows"),
        ([ent(0, 1)], "index 0 is the sentinel"),
    ],
)
def test_appends_that_break_the_log_shape_are_refused_and_write_nothing(
    harness: Harness, batch: list[Entry], why: str
) -> None:
    s = harness.store
    s.append(run(1, 3, 2))
    before = snapshot(s)
    with pytest.raises(StorageInvariantError):
        s.append(batch)
    assert snapshot(s) == before, why
    assert snapshot(harness.restart()) == before


# --- hard state -------------------------------------------------------------------------------


def test_hard_state_round_trips_across_restart(harness: Harness) -> None:
    hs = HardState(term=Term(7), vote=NodeId(3), commit=LogIndex(0))
    harness.store.save(hs)
    assert harness.store.load() == hs
    assert harness.restart().load() == hs
    no_vote = HardState(term=Term(8), vote=None, commit=LogIndex(0))
    harness.store.save(no_vote)
    assert harness.restart().load() == no_vote


def test_hard_state_never_goes_back_in_term_or_changes_a_vote(harness: Harness) -> None:
    s = harness.store
    s.save(HardState(term=Term(5), vote=NodeId(1)))
    with pytest.raises(StorageInvariantError):
        s.save(HardState(term=Term(4)))
    with pytest.raises(StorageInvariantError):
        s.save(HardState(term=Term(5), vote=NodeId(2)))
    with pytest.raises(StorageInvariantError):
        s.save(HardState(term=Term(5), vote=None))
    s.save(HardState(term=Term(5), vote=NodeId(1), commit=LogIndex(0)))  # same vote: fine
    s.save(HardState(term=Term(6), vote=NodeId(2)))  # new term: a new vote is fine
    assert harness.restart().load() == HardState(term=Term(6), vote=NodeId(2))


def test_persist_writes_truncation_entries_and_hard_state_together(harness: Harness) -> None:
    s = harness.store
    s.persist(HardState(Term(1), NodeId(1), LogIndex(0)), run(1, 4, 1))
    hs = HardState(Term(2), NodeId(2), LogIndex(2))
    s.persist(hs, run(3, 5, 2), truncate_from=LogIndex(3))
    s.persist(None, [], truncate_from=None)  # an empty Ready writes nothing
    r = harness.restart()
    assert r.load() == hs
    assert r.entries(LogIndex(1), LogIndex(6)) == run(1, 2, 1) + run(3, 5, 2)


def test_persist_refuses_entries_that_leave_a_gap_after_truncation(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 4, 1))
    with pytest.raises(StorageInvariantError):
        s.persist(None, run(4, 5, 1), truncate_from=LogIndex(2))
    assert s.last_index() == 4


# --- atomicity --------------------------------------------------------------------------------


class Unencodable:
    """An object msgpack cannot encode: makes a write fail part-way through a persist."""


def test_a_failure_mid_persist_writes_nothing(harness: Harness) -> None:
    s = harness.store
    hs = HardState(Term(1), NodeId(1), LogIndex(3))
    s.persist(hs, run(1, 5, 1))
    before = snapshot(s)
    # The 3rd new entry fails to encode after the suffix delete and two puts happened.
    bad = run(4, 8, 2)
    bad[2] = Entry(Term(2), LogIndex(6), EntryKind.COMMAND, Unencodable())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.persist(HardState(Term(2), NodeId(2), LogIndex(4)), bad)
    assert snapshot(s) == before
    assert snapshot(harness.restart()) == before


def test_a_hard_state_failing_after_the_entries_rolls_the_entries_back(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 2, 1))
    before = snapshot(s)
    broken = HardState(Term(3), Unencodable(), LogIndex(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.persist(broken, run(2, 6, 3))
    assert snapshot(s) == before
    assert snapshot(harness.restart()) == before


# --- entries(max_bytes) -----------------------------------------------------------------------


def test_entries_stop_at_max_bytes_but_return_at_least_one(harness: Harness) -> None:
    s = harness.store
    log = [ent(i, 1, bytes(100)) for i in range(1, 11)]
    s.append(log)
    one = entry_size(log[0])
    assert one == 100 + ENTRY_OVERHEAD
    lo, hi = LogIndex(1), LogIndex(11)
    assert s.entries(lo, hi, max_bytes=0) == log[:1]
    assert s.entries(lo, hi, max_bytes=one - 1) == log[:1]
    assert s.entries(lo, hi, max_bytes=one) == log[:1]
    assert s.entries(lo, hi, max_bytes=3 * one) == log[:3]
    assert s.entries(lo, hi, max_bytes=3 * one + one - 1) == log[:3]
    assert s.entries(lo, hi, max_bytes=10**9) == log
    assert s.entries(LogIndex(10), hi, max_bytes=0) == log[9:]


def test_max_bytes_bounds_a_run_of_empty_entries_too(harness: Harness) -> None:
    harness.store.append([ent(i, 1, kind=EntryKind.NOOP) for i in range(1, 101)])
    got = harness.store.entries(LogIndex(1), LogIndex(101), max_bytes=10 * ENTRY_OVERHEAD)
    assert len(got) == 10


# --- compaction -------------------------------------------------------------------------------


def test_truncate_prefix_keeps_the_term_of_the_compaction_point(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 3, 1) + run(4, 6, 2))
    s.truncate_prefix(LogIndex(4))
    for restart in (False, True):
        store = harness.restart() if restart else s
        assert (store.first_index(), store.last_index()) == (5, 6)
        assert store.term(LogIndex(4)) == 2
        assert store.term(LogIndex(6)) == 2
        with pytest.raises(CompactedError):
            store.term(LogIndex(3))
        with pytest.raises(CompactedError):
            store.entries(LogIndex(4), LogIndex(6))
        assert store.entries(LogIndex(5), LogIndex(7)) == run(5, 6, 2)


def test_compacting_below_the_compaction_point_is_a_no_op(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 6, 1))
    s.truncate_prefix(LogIndex(4))
    s.truncate_prefix(LogIndex(2))
    assert s.first_index() == 5


def test_compacting_the_whole_log_leaves_an_empty_log_at_the_snapshot(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 4, 3))
    s.truncate_prefix(LogIndex(4))
    s = harness.restart()
    assert (s.first_index(), s.last_index(), s.term(LogIndex(4))) == (5, 4, 3)
    s.append(run(5, 5, 3))
    with pytest.raises(StorageInvariantError):
        s.append(run(6, 6, 2))  # the join with the snapshot's term is still checked
    assert s.entries(LogIndex(5), LogIndex(6)) == run(5, 5, 3)
    with pytest.raises(StorageInvariantError):
        s.truncate_suffix(LogIndex(4))


def test_installing_a_snapshot_beyond_the_log_needs_its_term(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 3, 1))
    with pytest.raises(StorageInvariantError):
        s.truncate_prefix(LogIndex(10))
    s.truncate_prefix(LogIndex(10), Term(4))
    s = harness.restart()
    assert (s.first_index(), s.last_index(), s.term(LogIndex(10))) == (11, 10, 4)
    s.append(run(11, 12, 4))
    assert s.last_index() == 12


def test_a_snapshot_that_contradicts_the_log_discards_all_of_it(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 6, 1))
    s.truncate_prefix(LogIndex(3), Term(2))  # our entry 3 has term 1: it is not in the snapshot
    s = harness.restart()
    assert (s.first_index(), s.last_index(), s.term(LogIndex(3))) == (4, 3, 2)


def test_a_snapshot_matching_the_log_keeps_the_entries_after_it(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 6, 1))
    s.truncate_prefix(LogIndex(3), Term(1))
    assert (s.first_index(), s.last_index()) == (4, 6)


# --- lifecycle --------------------------------------------------------------------------------


def test_a_closed_store_refuses_every_call(harness: Harness) -> None:
    s = harness.store
    s.append(run(1, 2, 1))
    s.close()
    calls: list[Callable[[], object]] = [
        s.first_index,
        s.last_index,
        lambda: s.term(LogIndex(1)),
        lambda: s.entries(LogIndex(1), LogIndex(2)),
        s.load,
        lambda: s.term(LogIndex(0)),
        lambda: s.append(run(3, 3, 1)),
    ]
    for call in calls:
        with pytest.raises(StorageClosedError):
            call()
    s.close()  # closing twice is harmless


def test_restart_brings_back_everything_persisted(harness: Harness) -> None:
    s = harness.store
    s.persist(HardState(Term(2), NodeId(1), LogIndex(5)), run(1, 2, 1) + run(3, 8, 2))
    s.truncate_prefix(LogIndex(2))
    before = snapshot(s)
    assert snapshot(harness.restart()) == before
    assert snapshot(harness.restart()) == before


# --- LMDB only --------------------------------------------------------------------------------


def test_lmdb_env_is_opened_for_durable_commits(tmp_path: Path) -> None:
    with LmdbRaftStorage(tmp_path, map_size=MAP_SIZE) as s:
        env = s._env
        assert env is not None
        flags = env.flags()
        assert flags["sync"] and flags["metasync"] and not flags["writemap"]


def test_lmdb_refuses_a_store_of_another_format(tmp_path: Path) -> None:
    LmdbRaftStorage(tmp_path, map_size=MAP_SIZE).close()
    env = lmdb.open(str(tmp_path), max_dbs=2, map_size=MAP_SIZE)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"format", msgpack.packb(99), db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()
    with pytest.raises(StorageError):
        LmdbRaftStorage(tmp_path, map_size=MAP_SIZE)


def test_lmdb_full_map_aborts_the_write_and_keeps_the_store_usable(tmp_path: Path) -> None:
    with LmdbRaftStorage(tmp_path, map_size=1 << 20) as s:
        s.append(run(1, 2, 1))
        before = snapshot(s)
        with pytest.raises(StorageFullError):
            s.append([ent(i, 1, bytes(200_000)) for i in range(3, 13)])
        assert snapshot(s) == before
        s.append(run(3, 3, 1))
        assert s.last_index() == 3


def test_lmdb_persist_survives_a_killed_process(tmp_path: Path) -> None:
    """A child persists, then dies without closing anything: the parent sees it all."""
    script = (
        "import os, sys\n"
        "from coord.raft.lmdb_store import LmdbRaftStorage\n"
        "from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term\n"
        f"s = LmdbRaftStorage({str(tmp_path)!r}, map_size={MAP_SIZE})\n"
        "s.persist(HardState(Term(3), NodeId(2), LogIndex(1)),\n"
        "          [Entry(Term(3), LogIndex(i), EntryKind.COMMAND, b'x') for i in (1, 2)])\n"
        "os._exit(0)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    with LmdbRaftStorage(tmp_path, map_size=MAP_SIZE) as s:
        assert s.load() == HardState(Term(3), NodeId(2), LogIndex(1))
        assert s.last_index() == 2


# --- the twin and LMDB agree on random operation sequences ------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 8), st.integers(1, 3), st.integers(0, 2)),
        st.tuples(st.just("suffix"), st.integers(0, 10)),
        st.tuples(st.just("prefix"), st.integers(0, 12), st.none() | st.integers(1, 6)),
        st.tuples(st.just("vote"), st.integers(0, 6), st.none() | st.integers(1, 3)),
    ),
    max_size=12,
)


def _apply_op(store: RaftStorage, op: tuple[object, ...]) -> object:
    """Run one op; return its observable outcome (an error class, or the new state)."""
    try:
        match op:
            case ("append", int(start), int(count), int(term_delta)):
                base = store.last_index() + 1 - start
                prev = store.term(LogIndex(base - 1)) if base >= store.first_index() else 0
                store.append([ent(base + k, prev + term_delta, b"%d" % k) for k in range(count)])
            case ("suffix", int(back)):
                store.truncate_suffix(LogIndex(store.last_index() + 1 - back))
            case ("prefix", int(upto), term):
                assert term is None or isinstance(term, int)
                store.truncate_prefix(LogIndex(upto), None if term is None else Term(term))
            case ("vote", int(term), vote):
                assert vote is None or isinstance(vote, int)
                store.save(HardState(Term(term), None if vote is None else NodeId(vote)))
    except (StorageError, ValueError) as exc:
        return type(exc)
    return snapshot(store)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_twin_and_lmdb_agree(ops: list[tuple[object, ...]]) -> None:
    for kind in ("lmdb", "wal", "wal-flush"):
        with tempfile.TemporaryDirectory() as tmp:
            harness = Harness(kind, Path(tmp))
            twin = MemoryRaftStorage()
            try:
                for op in ops:
                    assert _apply_op(twin, op) == _apply_op(harness.store, op), (kind, op)
                twin = twin.crash()
                assert snapshot(twin) == snapshot(harness.restart()), kind
            finally:
                harness.store.close()


# --- WAL only ---------------------------------------------------------------------------------


def test_wal_persist_survives_a_killed_process_and_is_replayed_into_lmdb(tmp_path: Path) -> None:
    """A child persists through the WAL (nothing reaches LMDB) and dies: the parent
    recovers every acknowledged write, and the recovered WAL is empty."""
    script = (
        "import os\n"
        "from coord.raft.wal_store import WalRaftStorage\n"
        "from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term\n"
        f"s = WalRaftStorage({str(tmp_path)!r}, map_size={MAP_SIZE})\n"
        "s.persist(HardState(Term(3), NodeId(2), LogIndex(1)),\n"
        "          [Entry(Term(3), LogIndex(i), EntryKind.COMMAND, b'x') for i in (1, 2, 3)])\n"
        "s.truncate_suffix(LogIndex(3))\n"
        "s.append([Entry(Term(4), LogIndex(3), EntryKind.COMMAND, b'y')])\n"
        f"assert os.path.getsize(os.path.join({str(tmp_path)!r}, 'raft.wal')) > 0\n"
        "os._exit(0)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    with LmdbRaftStorage(tmp_path, map_size=MAP_SIZE) as raw:
        assert raw.last_index() == 0  # everything was in the WAL only
    with WalRaftStorage(tmp_path, map_size=MAP_SIZE) as s:
        assert s.load() == HardState(Term(3), NodeId(2), LogIndex(1))
        assert [(e.index, e.term, e.data) for e in s.entries(LogIndex(1), LogIndex(4))] == [
            (1, 3, b"x"), (2, 3, b"x"), (3, 4, b"y")]
        assert (tmp_path / WAL_NAME).stat().st_size == 0
    with LmdbRaftStorage(tmp_path, map_size=MAP_SIZE) as raw:  # recovery flushed into LMDB
        assert raw.last_index() == 3 and raw.term(LogIndex(3)) == 4


def test_wal_a_torn_last_record_is_ignored(tmp_path: Path) -> None:
    with WalRaftStorage(tmp_path, map_size=MAP_SIZE) as s:
        s.append(run(1, 2, 1))
        s.append(run(3, 4, 1))
    wal = tmp_path / WAL_NAME
    image = wal.read_bytes()
    wal.write_bytes(image[:-3])  # the second record's fdatasync never finished
    with WalRaftStorage(tmp_path, map_size=MAP_SIZE) as s:
        assert s.last_index() == 2
        s.append(run(3, 3, 2))  # the log goes on after the torn record
    with WalRaftStorage(tmp_path, map_size=MAP_SIZE) as s:
        assert s.last_index() == 3 and s.term(LogIndex(3)) == 2


def test_wal_replay_over_an_lmdb_that_already_has_it_is_harmless(tmp_path: Path) -> None:
    """A crash between a flush's LMDB commit and the WAL reset replays old records."""
    with WalRaftStorage(tmp_path, map_size=MAP_SIZE) as s:
        s.persist(HardState(Term(1), NodeId(1), LogIndex(0)), run(1, 3, 1))
        s.truncate_suffix(LogIndex(3))
        s.append(run(3, 4, 2))
        image = (tmp_path / WAL_NAME).read_bytes()
        s.flush()
        before = snapshot(s)
    (tmp_path / WAL_NAME).write_bytes(image)
    with WalRaftStorage(tmp_path, map_size=MAP_SIZE) as s:
        assert snapshot(s) == before


def test_wal_counts_one_fsync_per_persist(tmp_path: Path) -> None:
    with WalRaftStorage(tmp_path, map_size=MAP_SIZE) as s:
        start = s.fsyncs
        s.append(run(1, 3, 1))
        s.save(HardState(Term(2), None, LogIndex(0)))
        assert s.fsyncs == start + 2
