"""The core's view of its log: durable entries (via `LogView`) plus unstable ones.

Unstable entries are those the core has accepted but the driver has not yet
reported persisted (through `advance`).  Invariants:

* the effective log is store[first .. offset-1] followed by `unstable`, where
  `offset` is the index of unstable[0]; entries below `offset` are never
  rewritten by a pending write, so reading them from the store is safe even
  while the driver is persisting;
* every unstable entry is handed to the driver in the next Ready, and only
  one Ready is outstanding, so an entry emitted as committed is persisted by
  the driver (persist → apply) before it is applied;
* applied <= committed <= last_index(); committed never decreases;
* `floor` (index, term) is the compaction point as the core sees it: nothing
  at or below it is read from the store, and it only moves up, always before
  the store itself is compacted (`compact_to`) or replaced by an installed
  snapshot (`restore`), so the core never reads an index the driver is
  removing in a worker thread; floor <= applied.
"""

from __future__ import annotations

from collections.abc import Sequence

from coord.raft.logview import LogUnavailable, LogView, entry_size, limit_size
from coord.raft.types import Entry, LogIndex, Term


class RaftLog:
    __slots__ = ("applied", "committed", "floor", "offset", "store", "unstable")

    def __init__(self, store: LogView, committed: LogIndex, applied: LogIndex) -> None:
        self.store = store
        self.unstable: list[Entry] = []  # accepted, not yet reported persisted
        self.offset = store.last_index() + 1  # index of unstable[0]
        last = store.last_index()
        if not applied <= committed <= last:
            raise ValueError(f"need applied {applied} <= committed {committed} <= last {last}")
        self.committed = committed  # highest index known committed
        self.applied = applied  # highest index handed to the state machine
        base = LogIndex(store.first_index() - 1)
        self.floor: tuple[LogIndex, Term] = (base, store.term(base))  # compaction point

    # -- reading ----------------------------------------------------------
    def last_index(self) -> LogIndex:
        if self.unstable:
            return self.unstable[-1].index
        return LogIndex(self.offset - 1)

    def first_index(self) -> LogIndex:
        return LogIndex(self.floor[0] + 1)

    def term(self, index: LogIndex) -> Term:
        """Term at index; index 0 and first_index-1 are answered; beyond last raises."""
        if index <= self.floor[0]:
            if index == self.floor[0]:
                return self.floor[1]
            raise LogUnavailable(f"index {index} is compacted (floor {self.floor[0]})")
        if index >= self.offset:
            k = index - self.offset
            if k < len(self.unstable):
                return self.unstable[k].term
            raise LogUnavailable(f"index {index} beyond last {self.last_index()}")
        return self.store.term(index)

    def last_term(self) -> Term:
        return self.term(self.last_index())

    def match_term(self, index: LogIndex, term: Term) -> bool:
        if index > self.last_index() or index < self.first_index() - 1:
            return False
        return self.term(index) == term

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int) -> Sequence[Entry]:
        """Entries [lo, hi) within max_bytes (at least one), stitched across store and unstable."""
        if lo >= hi:
            return ()
        if lo <= self.floor[0]:
            raise LogUnavailable(f"entries from {lo} are compacted (floor {self.floor[0]})")
        if lo >= self.offset:
            return limit_size(self.unstable[lo - self.offset : hi - self.offset], max_bytes)
        stored = self.store.entries(lo, min(hi, LogIndex(self.offset)), max_bytes)
        if hi <= self.offset or len(stored) < self.offset - lo:
            return stored
        room = max_bytes - sum(entry_size(e) for e in stored)
        more = limit_size(self.unstable[: hi - self.offset], room, at_least_one=False)
        return [*stored, *more] if more else stored

    def is_up_to_date(self, last_index: LogIndex, last_term: Term) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours."""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def find_conflict_by_term(self, index: LogIndex, term: Term) -> LogIndex:
        """Largest j <= index with term(j) <= term (terms never decrease, so bisect)."""
        lo: int = self.first_index() - 1
        hi: int = min(index, self.last_index())
        if hi <= lo or self.term(LogIndex(hi)) <= term:
            # At or below the compaction point: only a snapshot can help, any such index will do.
            return LogIndex(hi)
        # invariant: term(lo) <= term (lo is the sentinel or snapshot base), term(hi) > term
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.term(LogIndex(mid)) <= term:
                lo = mid
            else:
                hi = mid
        return LogIndex(lo)

    # -- writing ----------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that directly follow or overwrite part of the log."""
        if not entries:
            return
        start = entries[0].index
        if start > self.last_index() + 1:
            raise LogUnavailable(f"append at {start} leaves a gap after {self.last_index()}")
        if start <= self.committed:
            raise AssertionError(f"overwriting committed index {start} (commit {self.committed})")
        if start == self.last_index() + 1:
            self.unstable.extend(entries)
        elif start >= self.offset:
            del self.unstable[start - self.offset :]
            self.unstable.extend(entries)
        else:
            # The conflict reaches into the store: re-emit from `start` on.
            self.unstable = list(entries)
            self.offset = start

    def maybe_append(
        self, prev_index: LogIndex, prev_term: Term, entries: Sequence[Entry]
    ) -> LogIndex | None:
        """Fig. 2 AppendEntries receiver steps 2-4; returns the last matching index or None."""
        if not self.match_term(prev_index, prev_term):
            return None
        for n, entry in enumerate(entries):
            if not self.match_term(entry.index, entry.term):
                # Step 3: delete the conflicting entry and all that follow it, then append.
                self.append(entries[n:])
                break
        return LogIndex(prev_index + len(entries))

    def commit_to(self, index: LogIndex) -> bool:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index
            return True
        return False

    # -- snapshots --------------------------------------------------------
    def compact_to(self, index: LogIndex) -> Term:
        """Raise the floor to `index` (<= applied) before the store forgets it; its term."""
        if not self.floor[0] <= index <= self.applied:
            raise ValueError(f"compact to {index}: floor {self.floor[0]}, applied {self.applied}")
        term = self.term(index)
        self.floor = (index, term)
        return term

    def restore(self, index: LogIndex, term: Term) -> None:
        """An installed snapshot replaced the state up to (index, term) (> applied).

        §7: entries after it are kept if the log holds (index, term); otherwise
        the whole log goes.  The store is made to agree by `truncate_prefix(index,
        term)`, which keeps or drops by the same rule.
        """
        keep = self.match_term(index, term)
        self.floor = (index, term)
        self.committed = max(self.committed, index)  # committed entries past it match it
        self.applied = index
        if keep:
            del self.unstable[: max(0, index - self.offset + 1)]
            self.offset = max(self.offset, index + 1)
        else:
            self.unstable = []
            self.offset = index + 1

    # -- driver hand-off --------------------------------------------------
    def stable_to(self, index: LogIndex, term: Term) -> None:
        """The driver persisted entries up to (index, term): drop them from unstable.

        If a later step already replaced that entry the write was superseded
        and the entries stay unstable, to be emitted again.
        """
        k = index - self.offset
        if 0 <= k < len(self.unstable) and self.unstable[k].term == term:
            del self.unstable[: k + 1]
            self.offset = index + 1

    def next_committed(self, max_bytes: int) -> Sequence[Entry]:
        if self.committed <= self.applied:
            return ()
        return self.entries(LogIndex(self.applied + 1), LogIndex(self.committed + 1), max_bytes)
