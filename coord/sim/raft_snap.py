"""Snapshots in the Raft simulator: the simulated state machine's snapshot
encoding and each node's durable snapshot files.

The simulated state machine is the list of applied entries, so a snapshot is
that list encoded (msgpack [term, kind, data] per entry, index implied) with
a CRC-32 digest; installing one rebuilds the list exactly, and the checker
verifies every restored entry against what was committed.

`SnapFiles` models a member's snapshot directory: the newest complete
snapshot and the partial one being received.  Both are written durably at
once (a real driver fsyncs each chunk before acknowledging it), so they
survive a simulated crash while the log's unsynced tail does not.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import msgpack

from coord.raft.snapshot import MemorySnapshots, SnapshotChunk, SnapshotMeta
from coord.raft.types import Entry, EntryKind, LogIndex, NodeId, Term


def encode_state(entries: Sequence[Entry], voters: Sequence[NodeId]) -> tuple[SnapshotMeta, bytes]:
    """A snapshot of the simulated state machine (entries 1 .. len(entries))."""
    data: bytes = msgpack.packb(
        [[int(e.term), int(e.kind), e.data] for e in entries], use_bin_type=True
    )
    last = entries[-1]
    meta = SnapshotMeta(
        last.index, last.term, tuple(sorted(voters)), (), len(data), zlib.crc32(data)
    )
    return meta, data


def decode_state(data: bytes) -> list[Entry]:
    raw = msgpack.unpackb(data, raw=False, use_list=True)
    return [
        Entry(Term(t), LogIndex(i), EntryKind(k), d) for i, (t, k, d) in enumerate(raw, start=1)
    ]


class SnapFiles:
    """A node's snapshot files (durable as soon as written)."""

    __slots__ = ("partial", "reader", "snapshot")

    def __init__(self) -> None:
        self.snapshot: tuple[SnapshotMeta, bytes] | None = None  # the newest complete one
        self.partial: tuple[SnapshotMeta, bytes] | None = None  # being received
        self.reader = MemorySnapshots()  # what the core reads when sending

    def keep(self, meta: SnapshotMeta, data: bytes) -> None:
        self.snapshot = (meta, data)
        self.reader.put(meta, data)

    def write(self, chunk: SnapshotChunk) -> None:
        """Write a chunk the way the file store does: offset 0 starts a new partial."""
        if chunk.offset == 0 or self.partial is None or self.partial[0] != chunk.meta:
            base = b""
        else:
            base = self.partial[1][: chunk.offset]
        self.partial = (chunk.meta, base + chunk.data)

    def complete(self) -> tuple[SnapshotMeta, bytes] | None:
        """The finished partial, if its digest checks; the partial is dropped either way."""
        assert self.partial is not None
        meta, data = self.partial
        self.partial = None
        if len(data) != meta.size or zlib.crc32(data) != meta.digest:
            return None
        self.keep(meta, data)
        return meta, data

    def received(self) -> tuple[SnapshotMeta, int] | None:
        """What the core is told at start: the partial snapshot and its length."""
        return None if self.partial is None else (self.partial[0], len(self.partial[1]))
