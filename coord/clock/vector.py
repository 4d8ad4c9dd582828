"""Vector clocks (Fidge 1988, Mattern 1989; the chapter's "vector timestamps").

A `VectorClock` is an immutable, sparse map from node id to a counter; a node
that is absent counts as 0.  For two clocks a, b:

    a <= b  iff  a[i] <= b[i] for every node i
    a <  b  iff  a <= b and a != b          (a happened before b)
    a || b  iff  neither a <= b nor b <= a  (a and b are concurrent)

Invariants (checked at construction, relied on everywhere else):

* every stored counter is > 0: zero entries are never stored, so two clocks
  are equal exactly when their internal dicts are equal, and `len()` is the
  number of nodes that have ever ticked;
* counters are ints >= 0 (a negative counter is rejected, never clamped);
* the internal dict is never mutated after construction, so a clock can be
  shared freely, hashed and used as a dict key (release consistency keys
  intervals by their clocks).

Every operation is one pass over the entries (O(n) for n non-zero nodes);
there is no sorting and no per-pair work.  Node ids are ints (any `NewType`
of int, e.g. `coord.raft.types.NodeId`, fits).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping


class Order(enum.Enum):
    """How one clock relates to another: exactly one holds for any pair."""

    BEFORE = "before"  # self happened before other (self < other)
    AFTER = "after"  # other happened before self (self > other)
    EQUAL = "equal"
    CONCURRENT = "concurrent"


class VectorClock:
    """An immutable vector timestamp; see the module docstring for the laws."""

    __slots__ = ("_entries", "_hash")

    _entries: dict[int, int]  # node -> counter; only counters > 0 are stored
    _hash: int | None  # cached hash, computed on first use

    def __init__(self, entries: Mapping[int, int] | None = None) -> None:
        clean: dict[int, int] = {}
        if entries:
            for node, count in entries.items():
                if not isinstance(node, int) or isinstance(node, bool):
                    raise TypeError(f"vector clock node id must be an int, got {node!r}")
                if not isinstance(count, int) or isinstance(count, bool):
                    raise TypeError(f"vector clock counter must be an int, got {count!r}")
                if count < 0:
                    raise ValueError(f"negative vector clock counter {count} for node {node}")
                if count:
                    clean[node] = count
        self._entries = clean
        self._hash = None

    @classmethod
    def _trusted(cls, entries: dict[int, int]) -> VectorClock:
        """Wrap a dict already known to satisfy the invariants (no copy, no checks)."""
        clock = cls.__new__(cls)
        clock._entries = entries
        clock._hash = None
        return clock

    # -- reading -----------------------------------------------------------

    def __getitem__(self, node: int) -> int:
        return self._entries.get(node, 0)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[int]:
        return iter(self._entries)

    def items(self) -> Iterator[tuple[int, int]]:
        """The non-zero (node, counter) pairs, in no particular order."""
        return iter(self._entries.items())

    # -- producing new clocks ------------------------------------------------

    def increment(self, node: int) -> VectorClock:
        """The clock of the next local event on `node`: strictly after self."""
        entries = dict(self._entries)
        entries[node] = entries.get(node, 0) + 1
        return VectorClock._trusted(entries)

    def merge(self, other: VectorClock) -> VectorClock:
        """The pointwise maximum: the least clock that is >= both."""
        if len(other._entries) > len(self._entries):
            big, small = other._entries, self._entries
        else:
            big, small = self._entries, other._entries
        entries = dict(big)
        for node, count in small.items():
            if count > entries.get(node, 0):
                entries[node] = count
        return VectorClock._trusted(entries)

    # -- comparing -----------------------------------------------------------

    def compare(self, other: VectorClock) -> Order:
        """Classify the pair in one pass over self's entries."""
        mine, theirs = self._entries, other._entries
        less = False  # some node where self < other
        greater = False  # some node where self > other
        shared = 0  # how many of self's nodes also appear in other
        for node, count in mine.items():
            their_count = theirs.get(node)
            if their_count is None:
                greater = True  # count > 0 here, 0 there
                continue
            shared += 1
            if count < their_count:
                less = True
            elif count > their_count:
                greater = True
        if len(theirs) > shared:
            less = True  # other has a node self lacks: > 0 there, 0 here
        if less:
            return Order.CONCURRENT if greater else Order.BEFORE
        return Order.AFTER if greater else Order.EQUAL

    def happens_before(self, other: VectorClock) -> bool:
        return self.compare(other) is Order.BEFORE

    def concurrent(self, other: VectorClock) -> bool:
        return self.compare(other) is Order.CONCURRENT

    def __lt__(self, other: VectorClock) -> bool:
        return self.compare(other) is Order.BEFORE

    def __le__(self, other: VectorClock) -> bool:
        return self.compare(other) in (Order.BEFORE, Order.EQUAL)

    def __gt__(self, other: VectorClock) -> bool:
        return self.compare(other) is Order.AFTER

    def __ge__(self, other: VectorClock) -> bool:
        return self.compare(other) in (Order.AFTER, Order.EQUAL)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VectorClock):
            return NotImplemented
        return self._entries == other._entries

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._entries.items()))
        return self._hash

    # -- wire ----------------------------------------------------------------

    def to_dict(self) -> dict[int, int]:
        """A fresh plain dict of the non-zero entries, for the wire.

        msgpack unpacks int map keys only with `strict_map_key=False`.
        """
        return dict(self._entries)

    @classmethod
    def from_dict(cls, data: Mapping[int, int]) -> VectorClock:
        """Validate a peer's dict (ints only, no negatives); raise ValueError/TypeError."""
        return cls(data)

    def __repr__(self) -> str:
        body = ", ".join(f"{node}: {count}" for node, count in sorted(self._entries.items()))
        return f"VectorClock({{{body}}})"
