"""Raft storage interfaces, their shared rules, and the in-memory twin.

Interfaces (small, in the spirit of hashicorp/raft's log.go / stable.go):

* `LogView` (defined by the core in `coord.raft.logview`, re-exported here) -
  the read-only log the core reads: `first_index`, `last_index`, `term`,
  `entries`.
* `LogStore` - `LogView` plus the mutations `append`, `truncate_suffix`,
  `truncate_prefix`; `entries`' `max_bytes` becomes optional.
* `StableStore` - the hard state: `load` and `save`.
* `RaftStorage` - both, plus `persist`, the one call a driver makes per Ready:
  truncate + append + hard state in ONE atomic transaction with ONE fsync.

Invariants every implementation keeps (the contract tests in
tests/unit/test_raft_storage.py run against every implementation):

* The log is the contiguous range [first_index, last_index].  Index
  `first_index - 1` is the compaction point ("snapshot index"): its term is
  still known (`term(0) == 0` before any compaction), every entry at or below
  it is gone.  An empty log has `last_index == first_index - 1`.
* Terms never decrease along the log, including from the compaction point to
  the first entry.
* Every mutating call is atomic and durable when it returns: it either happened
  completely (and survives a crash) or not at all.  Nothing is buffered.
* The stored hard state never moves backwards: its term never decreases and a
  vote cast in a term is never changed within that term.  A violation is a
  core bug and raises `StorageInvariantError` before anything is written.

Thread safety: one writer at a time (the driver serialises its calls); reads
may run on another thread while a write is in progress and see the state
either before or after it.  The LMDB adapter's mutations block on fsync, so a
trio driver calls them through `trio.to_thread.run_sync`; none of these
classes holds a transaction open after a call returns.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Protocol

import msgpack

from coord.raft.logview import ENTRY_OVERHEAD, LogUnavailable, LogView, entry_size
from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term

__all__ = [
    "ENTRY_OVERHEAD",
    "CompactedError",
    "LogStore",
    "LogUnavailable",
    "LogView",
    "MemoryRaftStorage",
    "RaftStorage",
    "StableStore",
    "StorageClosedError",
    "StorageError",
    "StorageFullError",
    "StorageInvariantError",
    "UnavailableError",
    "check_batch",
    "check_hard_state",
    "check_join",
    "check_range",
    "decode_entry",
    "decode_hard_state",
    "encode_entry",
    "encode_hard_state",
    "entry_size",
    "first_cut",
    "take_within",
]


class StorageError(Exception):
    """Base class of every error the Raft storage raises."""


class CompactedError(StorageError, LogUnavailable):
    """The index lies at or below the compaction point: send a snapshot instead."""


class UnavailableError(StorageError, LogUnavailable):
    """The index lies beyond the last stored entry."""


class StorageInvariantError(StorageError):
    """A mutation would break a log or hard-state invariant (a caller bug); nothing was written."""


class StorageFullError(StorageError):
    """The store ran out of space (LMDB map full); the write was aborted."""


class StorageClosedError(StorageError):
    """The store was closed (or, for a twin, crashed and reopened)."""


class LogStore(LogView, Protocol):
    """A log that can be changed.  Every call is one atomic, durable transaction.

    Reads follow `coord.raft.logview.LogView` (the core's view), made precise:
    `term(i)` is defined for first_index - 1 <= i <= last_index and raises
    CompactedError below, UnavailableError above (both are LogUnavailable).
    """

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi), stopping before the total `entry_size` would exceed
        `max_bytes` (None: no limit); at least one entry whenever lo < hi.

        Raises CompactedError if lo < first_index, UnavailableError if hi > last_index + 1.
        """
        ...

    def append(self, entries: Sequence[Entry]) -> None:
        """Make the log `log[:entries[0].index] + entries`.

        Contract: `entries` have consecutive indexes and non-decreasing terms;
        `first_index <= entries[0].index <= last_index + 1`.  If the batch
        starts at or before last_index, every stored entry from
        `entries[0].index` on is removed first, matching or not - the core
        must strip the prefix it already has (§5.3: only a *conflicting*
        entry and what follows may be deleted), or a stale AppendEntries would
        erase newer entries.
        """
        ...

    def truncate_suffix(self, from_index: LogIndex) -> None:
        """Remove every entry with index >= from_index (from_index >= first_index)."""
        ...

    def truncate_prefix(self, upto: LogIndex, term: Term | None = None) -> None:
        """Compaction: forget entries <= upto, remembering term(upto).

        * upto <= compaction point: no-op.
        * upto <= last_index: `term` may be omitted; if given and different
          from the stored term(upto), the whole log is discarded (a snapshot
          that does not match our log, §7).
        * upto > last_index: `term` is required; the log becomes empty at
          (upto, term) - installing a snapshot from the leader.
        """
        ...


class StableStore(Protocol):
    """The hard state (current term, vote, commit)."""

    def load(self) -> HardState:
        """The last saved hard state (HardState() when none was ever saved)."""
        ...

    def save(self, hard_state: HardState) -> None:
        """Durably replace the hard state."""
        ...


class RaftStorage(LogStore, StableStore, Protocol):
    """Log and hard state sharing one transaction: what a Raft node persists."""

    def persist(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        truncate_from: LogIndex | None = None,
    ) -> None:
        """One atomic, durable step, in this order: remove entries >= truncate_from,
        append `entries` (same contract as `append`), replace the hard state.

        Returns only once all of it is on stable storage (one fsync); on any
        exception nothing of it was written.  An empty call writes nothing.
        """
        ...

    def close(self) -> None:
        """Release the store; further calls raise StorageClosedError."""
        ...


# --- encoding shared by every implementation --------------------------------------------------


def encode_entry(entry: Entry) -> bytes:
    """An entry's stored form: msgpack [term, kind, data]; the index is the key."""
    raw: bytes = msgpack.packb((int(entry.term), int(entry.kind), entry.data), use_bin_type=True)
    return raw


def decode_entry(index: LogIndex, raw: bytes) -> Entry:
    term, kind, data = msgpack.unpackb(raw, raw=False, use_list=False)
    return Entry(term=Term(term), index=index, kind=EntryKind(kind), data=data)


def encode_hard_state(hs: HardState) -> bytes:
    raw: bytes = msgpack.packb((int(hs.term), hs.vote, int(hs.commit)), use_bin_type=True)
    return raw


def decode_hard_state(raw: bytes) -> HardState:
    term, vote, commit = msgpack.unpackb(raw, raw=False, use_list=False)
    return HardState(
        term=Term(term), vote=None if vote is None else NodeId(vote), commit=LogIndex(commit)
    )


# --- rules shared by every implementation -----------------------------------------------------


def check_hard_state(old: HardState, new: HardState) -> None:
    """Raise StorageInvariantError if `new` would undo a term or a vote of `old`."""
    if new.term < old.term:
        raise StorageInvariantError(f"hard state term would go back from {old.term} to {new.term}")
    if new.term == old.term and old.vote is not None and new.vote != old.vote:
        raise StorageInvariantError(
            f"vote in term {old.term} would change from {old.vote} to {new.vote}"
        )


def check_batch(entries: Sequence[Entry], first: LogIndex, last: LogIndex) -> None:
    """Check the batch-local part of the append contract (indexes and terms in order,
    start inside [first, last + 1]).  The term at the join is checked by the caller,
    which can look it up."""
    if not entries:
        return
    start = entries[0].index
    if not first <= start <= last + 1:
        raise StorageInvariantError(
            f"append at {start} outside [{first}, {last + 1}] (log is [{first}, {last}])"
        )
    for prev, cur in itertools.pairwise(entries):
        if cur.index != prev.index + 1:
            raise StorageInvariantError(f"batch not contiguous: {prev.index} then {cur.index}")
        if cur.term < prev.term:
            raise StorageInvariantError(f"batch term decreases at {cur.index}")


def check_join(prev_term: Term, entries: Sequence[Entry]) -> None:
    """The first new entry's term must not be below the term of the entry before it."""
    if entries and entries[0].term < prev_term:
        raise StorageInvariantError(
            f"entry {entries[0].index} has term {entries[0].term} < previous term {prev_term}"
        )


def check_range(lo: LogIndex, hi: LogIndex, first: LogIndex, last: LogIndex) -> None:
    if lo > hi:
        raise ValueError(f"entries({lo}, {hi}): lo > hi")
    if lo < first:
        raise CompactedError(f"entry {lo} is compacted (first index {first})")
    if hi > last + 1:
        raise UnavailableError(f"entry {hi - 1} is beyond the last index {last}")


def first_cut(snap_index: LogIndex, last: LogIndex, truncate_from: LogIndex | None) -> LogIndex:
    """The first index `persist` removes before appending (last + 1 when nothing goes)."""
    if truncate_from is None:
        return LogIndex(last + 1)
    if truncate_from <= snap_index:
        raise StorageInvariantError(f"truncate from {truncate_from}: compacted up to {snap_index}")
    return LogIndex(min(last + 1, truncate_from))


def take_within(entries: Iterable[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix within max_bytes, but never empty if `entries` is not."""
    out: list[Entry] = []
    total = 0
    for entry in entries:
        total += entry_size(entry)
        if out and max_bytes is not None and total > max_bytes:
            break
        out.append(entry)
    return out


# --- the in-memory twin -----------------------------------------------------------------------


class _MemoryDisk:
    """What a MemoryRaftStorage has "on disk"; survives `crash`."""

    __slots__ = ("hard_state", "log", "snap_index", "snap_term", "terms")

    def __init__(self) -> None:
        self.snap_index = LogIndex(0)  # the compaction point
        self.snap_term = Term(0)  # term(snap_index)
        self.log: list[bytes] = []  # encoded entries snap_index+1, snap_index+2, ...
        self.terms: list[Term] = []  # their terms, so term() need not decode
        self.hard_state = HardState()


class MemoryRaftStorage:
    """RaftStorage in memory, with the same contract as the LMDB adapter.

    Entries are stored encoded (like on disk), so a caller cannot mutate what
    was persisted, and an unencodable entry fails mid-persist exactly as it
    does in LMDB.  Each mutation first does everything that can fail (checks,
    encoding) and only then changes the disk image with operations that cannot
    fail: that is the "commit", so a failure mid-call leaves nothing behind.
    `crash()` models a crash and restart: the old handle dies, the new one
    sees exactly what was persisted (every call is durable when it returns,
    so there is nothing else to lose).
    """

    def __init__(self, disk: _MemoryDisk | None = None) -> None:
        self._disk: _MemoryDisk | None = disk if disk is not None else _MemoryDisk()

    def _d(self) -> _MemoryDisk:
        if self._disk is None:
            raise StorageClosedError("storage closed")
        return self._disk

    def crash(self) -> MemoryRaftStorage:
        """Crash and restart: this handle is closed, the returned one sees the persisted state
        (every call was durable when it returned, so that is everything that returned)."""
        disk = self._d()
        self._disk = None
        return MemoryRaftStorage(disk)

    def close(self) -> None:
        self._disk = None

    # LogView

    def first_index(self) -> LogIndex:
        return LogIndex(self._d().snap_index + 1)

    def last_index(self) -> LogIndex:
        d = self._d()
        return LogIndex(d.snap_index + len(d.log))

    def term(self, index: LogIndex) -> Term:
        d = self._d()
        if index < d.snap_index:
            raise CompactedError(f"term of {index}: compacted up to {d.snap_index}")
        if index == d.snap_index:
            return d.snap_term
        if index > d.snap_index + len(d.log):
            raise UnavailableError(f"term of {index}: last index is {d.snap_index + len(d.log)}")
        return d.terms[index - d.snap_index - 1]

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[Entry]:
        d = self._d()
        check_range(lo, hi, self.first_index(), self.last_index())
        base = d.snap_index + 1
        decoded = (decode_entry(LogIndex(i), d.log[i - base]) for i in range(lo, hi))
        return take_within(decoded, max_bytes)

    # StableStore

    def load(self) -> HardState:
        return self._d().hard_state

    def save(self, hard_state: HardState) -> None:
        self.persist(hard_state, ())

    # LogStore

    def append(self, entries: Sequence[Entry]) -> None:
        self.persist(None, entries)

    def truncate_suffix(self, from_index: LogIndex) -> None:
        self.persist(None, (), truncate_from=from_index)

    def truncate_prefix(self, upto: LogIndex, term: Term | None = None) -> None:
        d = self._d()
        last = d.snap_index + len(d.log)
        if upto <= d.snap_index:
            return
        if upto <= last and (term is None or term == d.terms[upto - d.snap_index - 1]):
            drop = upto - d.snap_index  # entries snap_index+1 .. upto
            d.snap_term = d.terms[drop - 1]
            d.snap_index = upto
            del d.log[:drop], d.terms[:drop]
            return
        if term is None:
            raise StorageInvariantError(f"compaction beyond last index {last} needs a term")
        # A snapshot our log does not contain (or contradicts): the whole log goes (§7).
        d.snap_index, d.snap_term = upto, term
        d.log.clear()
        d.terms.clear()

    # RaftStorage

    def persist(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        truncate_from: LogIndex | None = None,
    ) -> None:
        d = self._d()
        cut = first_cut(d.snap_index, LogIndex(d.snap_index + len(d.log)), truncate_from)
        encoded: list[bytes] = []
        if entries:
            check_batch(entries, LogIndex(d.snap_index + 1), LogIndex(cut - 1))
            cut = entries[0].index
            check_join(self.term(LogIndex(cut - 1)), entries)
            encoded = [encode_entry(e) for e in entries]
        if hard_state is not None:
            check_hard_state(d.hard_state, hard_state)
            encode_hard_state(hard_state)  # fail here, as LMDB would, if it cannot be stored
        # The commit point: nothing below can fail.
        keep = cut - d.snap_index - 1
        del d.log[keep:], d.terms[keep:]
        d.log.extend(encoded)
        d.terms.extend(e.term for e in entries)
        if hard_state is not None:
            d.hard_state = hard_state
