"""The read-only view of the durable Raft log that the core needs (a Protocol).

The core never writes to storage: it reads the durable log through `LogView`
and hands new entries to the driver in `Ready.entries`.  A store satisfies the
Protocol when, at every moment the core calls it:

* indices are contiguous: entries first_index() .. last_index() are present;
  an empty log has last_index() == first_index() - 1 (and first_index() == 1
  until snapshots exist, Raft part 2);
* term(i) is defined for first_index() - 1 <= i <= last_index(); term(0) == 0
  (the empty log's sentinel); other indices raise LogUnavailable;
* entries(lo, hi, max_bytes) returns the entries lo .. hi-1 in order, cut
  early so the payload stays within max_bytes, but always at least one entry
  when lo < hi (otherwise a single large entry could never be replicated);
* the store changes only when the driver applies a Ready: it appends
  `Ready.entries` after deleting every stored entry with index >=
  Ready.entries[0].index (a conflicting suffix; `Ready.truncate_from` says
  when one may exist).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coord.raft.types import Entry, LogIndex, Term

#: Bytes counted per entry on top of its payload, so empty entries still cost something.
ENTRY_OVERHEAD = 16


def entry_size(entry: Entry) -> int:
    """The size used by every byte limit in the core (append, inflight, uncommitted, apply)."""
    return len(entry.data) + ENTRY_OVERHEAD


class LogUnavailable(LookupError):
    """The index is outside the range the log can answer for."""


class LogView(Protocol):
    def first_index(self) -> LogIndex: ...

    def last_index(self) -> LogIndex: ...

    def term(self, index: LogIndex) -> Term: ...

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int) -> Sequence[Entry]: ...


def limit_size(
    entries: Sequence[Entry], max_bytes: int, *, at_least_one: bool = True
) -> Sequence[Entry]:
    """The longest prefix within max_bytes (by default never fewer than one entry)."""
    total = 0
    for n, entry in enumerate(entries):
        total += entry_size(entry)
        if total > max_bytes and (n > 0 or not at_least_one):
            return entries[:n]
    return entries
