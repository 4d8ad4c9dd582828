"""An in-memory log store: the test twin of the LMDB log (satisfies `LogView`).

Invariant: `_entries[k]` holds the entry with index `_first + k`, indices are
contiguous and terms never decrease along the log.  `append` enforces the
store rule of `coord.raft.logview`: writing entries starting at index i first
drops every stored entry with index >= i.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from coord.raft.logview import LogUnavailable, limit_size
from coord.raft.types import Entry, LogIndex, Term


class MemLog:
    __slots__ = ("_entries", "_first", "_prev_term")

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._first = 1  # index of _entries[0]; moves only with compaction
        self._prev_term = Term(0)  # term of index _first - 1 (0 for the sentinel)
        self._entries: list[Entry] = []
        self.append(list(entries))

    def first_index(self) -> LogIndex:
        return LogIndex(self._first)

    def last_index(self) -> LogIndex:
        return LogIndex(self._first + len(self._entries) - 1)

    def term(self, index: LogIndex) -> Term:
        k = index - self._first
        if k == -1:
            return self._prev_term
        if 0 <= k < len(self._entries):
            return self._entries[k].term
        raise LogUnavailable(f"index {index} outside [{self._first - 1}, {self.last_index()}]")

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int) -> Sequence[Entry]:
        if lo < self._first or hi > self.last_index() + 1:
            raise LogUnavailable(f"entries [{lo}, {hi}) outside the stored log")
        return limit_size(self._entries[lo - self._first : hi - self._first], max_bytes)

    def append(self, entries: Sequence[Entry]) -> None:
        """Write entries, replacing any stored suffix from entries[0].index on."""
        if not entries:
            return
        start = entries[0].index
        if start < self._first or start > self.last_index() + 1:
            raise LogUnavailable(f"append at {start} would leave a gap after {self.last_index()}")
        del self._entries[start - self._first :]
        self._entries.extend(entries)

    def truncate_prefix(self, upto: LogIndex, term: Term) -> None:
        """Compaction / snapshot install (the `LogStore.truncate_prefix` rule): forget
        entries <= upto; keep the rest only if the log holds (upto, term) (§7)."""
        if upto < self._first:
            return
        keep = upto <= self.last_index() and self.term(upto) == term
        if keep:
            del self._entries[: upto - self._first + 1]
        else:
            self._entries = []
        self._first, self._prev_term = upto + 1, term

    def copy(self) -> MemLog:
        """An independent copy (the simulator's durable snapshot of a node's log)."""
        clone = MemLog()
        clone._first, clone._prev_term = self._first, self._prev_term
        clone._entries = list(self._entries)
        return clone

    def all_entries(self) -> list[Entry]:
        return list(self._entries)
