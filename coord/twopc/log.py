"""The 2PC log interface and its in-memory twin.

A node's log is an append-only sequence of records plus, for participants,
the data they guard (key -> bytes), changed atomically with the record that
explains the change.

Invariants (both implementations):
* `append(record, writes, sync=True)` returns only when the record, the
  writes, and every earlier unsynced append are durable, as one atomic step:
  after a crash either all of it is there or none.
* An unsynced append (`sync=False`) is visible to `records()` at once but may
  be lost by a crash until a later synced append (or `flush()`) covers it;
  it is never reordered after a later append.
* `records()` returns records in append order; `data()` the current values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coord.twopc.records import Change, LogRecord


class TwoPcLog(Protocol):
    def append(self, record: LogRecord, writes: Sequence[Change] = (), *,
               sync: bool = True) -> None: ...

    def flush(self) -> None:
        """Make every unsynced append durable."""

    def records(self) -> list[LogRecord]: ...

    def data(self) -> dict[str, bytes]: ...

    def close(self) -> None: ...


def apply_changes(data: dict[str, bytes], writes: Sequence[Change]) -> None:
    for c in writes:
        if c.value is None:
            data.pop(c.key, None)
        else:
            data[c.key] = c.value


class MemoryLog:
    """In-memory twin with a crash model: `crash()` keeps only what was synced."""

    def __init__(self) -> None:
        self._durable: list[tuple[LogRecord, tuple[Change, ...]]] = []
        self._pending: list[tuple[LogRecord, tuple[Change, ...]]] = []  # not yet synced
        self.syncs = 0  # how many forced writes (what an fsync count would be)

    def append(self, record: LogRecord, writes: Sequence[Change] = (), *,
               sync: bool = True) -> None:
        self._pending.append((record, tuple(writes)))
        if sync:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._durable += self._pending
            self._pending = []
            self.syncs += 1

    def records(self) -> list[LogRecord]:
        return [r for r, _ in (*self._durable, *self._pending)]

    def durable_records(self) -> list[LogRecord]:
        """What a crash right now would leave (for checkers)."""
        return [r for r, _ in self._durable]

    def data(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for _, writes in (*self._durable, *self._pending):
            apply_changes(out, writes)
        return out

    def crash(self) -> None:
        """Lose every unsynced append, as a power cut would."""
        self._pending = []

    def close(self) -> None:
        return None
