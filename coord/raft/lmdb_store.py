"""LmdbRaftStorage: the Raft log and hard state in one LMDB environment.

Layout (one env, one data file, so one fsync covers both):

* named DB ``log``:  key = index as big-endian u64 (LMDB's byte order is then
  index order), value = msgpack [term, kind, data] (`storage.encode_entry`).
* named DB ``meta``: ``format`` -> msgpack int (FORMAT_VERSION),
  ``hard_state`` -> msgpack [term, vote|nil, commit],
  ``snapshot`` -> msgpack [index, term] (the compaction point; absent = (0, 0)).

Invariants: the `log` DB holds exactly the indexes snapshot.index+1 ..
last_index, contiguous.  Every mutation is one write transaction, committed
with the env's default `sync=True, metasync=True` and `writemap=False`, so
`commit()` returns after fdatasync: when a method returns, its effect is on
stable storage; when it raises, LMDB aborted the transaction and nothing of it
is visible, now or after a crash.

`fsyncs` counts the durable write transactions committed (each one LMDB
commit: an fdatasync of the data pages plus the synchronous meta-page write);
it only grows, and benchmarks read it through `raft.status`.

The in-process cache (`_bounds`, `_hard_state`) is only ever replaced after a
successful commit, and `_bounds` is one tuple so a reader on another thread
never sees a first index from one commit with a last index from another.
Methods block (fsync); a trio driver calls them via `trio.to_thread.run_sync`.
No transaction outlives the call that opened it.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import lmdb
import msgpack

from coord.raft.storage import (
    StorageClosedError,
    StorageError,
    StorageFullError,
    StorageInvariantError,
    UnavailableError,
    check_batch,
    check_hard_state,
    check_join,
    check_range,
    decode_entry,
    decode_hard_state,
    encode_entry,
    encode_hard_state,
    first_cut,
    take_within,
)
from coord.raft.types import Entry, HardState, LogIndex, Term

FORMAT_VERSION = 1
DEFAULT_MAP_SIZE = 1 << 30  # address space only; the file grows with the data

_U64 = struct.Struct(">Q")
_FORMAT = b"format"
_HARD_STATE = b"hard_state"
_SNAPSHOT = b"snapshot"


@contextlib.contextmanager
def _write(env: lmdb.Environment) -> Iterator[lmdb.Transaction]:
    """A write transaction: committed (and fsynced) on normal exit, aborted on any error."""
    try:
        with env.begin(write=True) as txn:
            yield txn
    except lmdb.MapFullError as exc:
        raise StorageFullError(f"raft store full (map size {env.info()['map_size']})") from exc
    except lmdb.Error as exc:  # ENOSPC reaches LMDB's commit as EIO, for one
        raise StorageError(f"raft store {env.path()}: write failed: {exc} (disk full?)") from exc


def index_key(index: int) -> bytes:
    return _U64.pack(index)


def key_index(key: bytes) -> LogIndex:
    return LogIndex(_U64.unpack(key)[0])


class LmdbRaftStorage:
    """RaftStorage on LMDB; see the module docstring for layout and durability."""

    def __init__(self, path: Path | str, map_size: int = DEFAULT_MAP_SIZE) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self._env: lmdb.Environment | None = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=2,
            sync=True,  # commit = fdatasync of the data pages ...
            metasync=True,  # ... and of the meta page: durable on return
            writemap=False,  # a stray write through the map cannot corrupt the file
            readahead=False,  # random reads of recent entries; readahead only wastes cache
            meminit=False,
        )
        self._log = self._env.open_db(b"log")
        self._meta = self._env.open_db(b"meta")
        self._write_lock = threading.Lock()  # one writer; LMDB would block anyway
        self.fsyncs = 0  # durable commits so far (written under _write_lock only)
        with self._env.begin(write=True) as txn:
            self._check_format(txn)
            snap_index, snap_term = self._read_snapshot(txn)
            raw_hs = txn.get(_HARD_STATE, db=self._meta)
            last = snap_index
            cursor = txn.cursor(db=self._log)
            if cursor.last():
                last = key_index(cursor.key())
        self._hard_state = HardState() if raw_hs is None else decode_hard_state(raw_hs)
        # (first_index, last_index, snapshot term): replaced whole after each commit.
        self._bounds: tuple[LogIndex, LogIndex, Term] = (
            LogIndex(snap_index + 1),
            last,
            snap_term,
        )

    def _check_format(self, txn: lmdb.Transaction) -> None:
        raw = txn.get(_FORMAT, db=self._meta)
        if raw is None:
            txn.put(_FORMAT, msgpack.packb(FORMAT_VERSION), db=self._meta)
        elif msgpack.unpackb(raw) != FORMAT_VERSION:
            raise StorageError(f"raft store format {msgpack.unpackb(raw)} != {FORMAT_VERSION}")

    def _read_snapshot(self, txn: lmdb.Transaction) -> tuple[LogIndex, Term]:
        raw = txn.get(_SNAPSHOT, db=self._meta)
        if raw is None:
            return LogIndex(0), Term(0)
        index, term = msgpack.unpackb(raw)
        return LogIndex(index), Term(term)

    def _e(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageClosedError("storage closed")
        return self._env

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> LmdbRaftStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # LogView

    def first_index(self) -> LogIndex:
        self._e()
        return self._bounds[0]

    def last_index(self) -> LogIndex:
        self._e()
        return self._bounds[1]

    def term(self, index: LogIndex) -> Term:
        env = self._e()
        first, last, snap_term = self._bounds
        if index == first - 1:
            return snap_term
        check_range(index, LogIndex(index + 1), first, last)
        with env.begin(db=self._log) as txn:
            raw = txn.get(index_key(index))
        if raw is None:  # truncated by a concurrent writer after we read the bounds
            raise UnavailableError(f"entry {index} is gone")
        term: int = msgpack.unpackb(raw, use_list=False)[0]
        return Term(term)

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[Entry]:
        env = self._e()
        first, last, _ = self._bounds
        check_range(lo, hi, first, last)
        if lo == hi:
            return []
        with env.begin(db=self._log) as txn:
            out = take_within(self._scan(txn, lo, hi), max_bytes)
        if max_bytes is None and len(out) != hi - lo:
            raise UnavailableError(f"entries [{lo}, {hi}) changed under the read")
        return out

    @staticmethod
    def _scan(txn: lmdb.Transaction, lo: LogIndex, hi: LogIndex) -> Iterator[Entry]:
        cursor = txn.cursor()
        if not cursor.set_key(index_key(lo)):
            raise UnavailableError(f"entry {lo} is gone")
        expect = lo
        for key, raw in cursor.iternext():
            index = key_index(bytes(key))
            if index >= hi:
                return
            if index != expect:
                raise UnavailableError(f"entry {expect} is gone")
            yield decode_entry(index, bytes(raw))
            expect = LogIndex(expect + 1)

    # StableStore

    def load(self) -> HardState:
        self._e()
        return self._hard_state

    def save(self, hard_state: HardState) -> None:
        self.persist(hard_state, ())

    # LogStore

    def append(self, entries: Sequence[Entry]) -> None:
        self.persist(None, entries)

    def truncate_suffix(self, from_index: LogIndex) -> None:
        self.persist(None, (), truncate_from=from_index)

    def persist(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        truncate_from: LogIndex | None = None,
    ) -> None:
        """Truncate, append and save the hard state in one transaction, one fsync."""
        if hard_state is None and not entries and truncate_from is None:
            return
        env = self._e()
        with self._write_lock:
            first, last, snap_term = self._bounds
            cut = first_cut(LogIndex(first - 1), last, truncate_from)
            if entries:
                check_batch(entries, first, LogIndex(cut - 1))
                cut = entries[0].index
                check_join(self.term(LogIndex(cut - 1)), entries)
            if hard_state is not None:
                check_hard_state(self._hard_state, hard_state)
            # Everything from here to commit is one LMDB transaction: an exception
            # anywhere inside (encoding, map full, I/O) aborts all of it.
            with _write(env) as txn:
                self._delete_from(txn, cut, last)
                if entries:
                    cursor = txn.cursor(db=self._log)
                    for entry in entries:
                        # append=True: keys arrive in order, LMDB skips the search.
                        cursor.put(index_key(entry.index), encode_entry(entry), append=True)
                if hard_state is not None:
                    txn.put(_HARD_STATE, encode_hard_state(hard_state), db=self._meta)
            # Committed and fsynced: publish.
            self.fsyncs += 1
            new_last = entries[-1].index if entries else LogIndex(min(last, cut - 1))
            self._bounds = (first, new_last, snap_term)
            if hard_state is not None:
                self._hard_state = hard_state

    def _delete_from(self, txn: lmdb.Transaction, cut: LogIndex, last: LogIndex) -> None:
        """Delete the log's entries cut..last inside `txn`."""
        if cut > last:
            return
        cursor = txn.cursor(db=self._log)
        if cursor.set_key(index_key(cut)):
            # Cursor.delete moves to the next record; stop when none is left.
            while cursor.delete():
                pass

    def truncate_prefix(self, upto: LogIndex, term: Term | None = None) -> None:
        env = self._e()
        with self._write_lock:
            first, last, _ = self._bounds
            if upto < first:
                return
            keep_log = upto <= last and (term is None or term == self.term(upto))
            if keep_log:
                new_term = self.term(upto)
            elif term is None:
                raise StorageInvariantError(f"compaction beyond last index {last} needs a term")
            else:  # a snapshot our log does not contain or contradicts: the whole log goes (§7)
                new_term = term
            with _write(env) as txn:
                cursor = txn.cursor(db=self._log)
                stop = index_key(upto) if keep_log else None
                found = cursor.first()
                while found and (stop is None or bytes(cursor.key()) <= stop):
                    cursor.delete()  # moves to the next record, or off the end (empty key)
                    found = bool(cursor.key())
                txn.put(_SNAPSHOT, msgpack.packb((int(upto), int(new_term))), db=self._meta)
            self.fsyncs += 1
            self._bounds = (LogIndex(upto + 1), last if keep_log else upto, new_term)
