"""Raft snapshots: what describes one, how the core reads one, what it asks a driver to write.

A snapshot is the state machine's whole state as of `SnapshotMeta.index`
(term `SnapshotMeta.term`), an opaque byte string of `size` bytes whose
`digest` the producer computed (the core never looks inside).  Invariants:

* the bytes of a snapshot are a function of its meta: two members holding a
  snapshot with equal meta hold equal bytes (the state machine is
  deterministic and its encoding is canonical), which is what lets a
  follower resume a partially received snapshot from another leader;
* `voters`/`learners`/`addresses` are the cluster configuration in force at
  `index` (`membership.snapshot_membership` turns them back into a
  `Membership`; `RaftNode` restores it on start and on install);
* a `SnapshotChunk` effect is written by the driver to the member's partial
  snapshot file at `offset` before the Ready's messages are sent (an
  acknowledgement of a chunk promises the bytes are on disk); the chunk with
  `last=True` completes it, and the driver then verifies, installs and calls
  `RaftNode.snapshot_installed` (or `snapshot_corrupt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from coord.raft.types import LogIndex, NodeId, Term


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: LogIndex  # last log index the snapshot includes
    term: Term  # term of that entry
    voters: tuple[NodeId, ...]  # configuration at `index` (sorted)
    learners: tuple[NodeId, ...]  # non-voting members at `index` (sorted; () for now)
    size: int  # bytes of the snapshot data
    digest: int  # the producer's 64-bit checksum of the data (xxh3_64 in ddfs)
    # The members' addresses at `index` (membership.Membership.addresses), so a log
    # compacted past a CONFIG entry still knows how to reach every member.
    addresses: tuple[tuple[NodeId, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Write `data` at `offset` of the partial snapshot `meta` (offset 0 starts it anew)."""

    meta: SnapshotMeta
    offset: int
    data: bytes
    last: bool  # offset + len(data) == meta.size: verify and install once written


class SnapshotReader(Protocol):
    """How a leader's core reads the snapshot it sends (a local file in ddfs)."""

    def read(self, meta: SnapshotMeta, offset: int, max_bytes: int) -> bytes | None:
        """Up to max_bytes of snapshot `meta` from `offset` (b"" at the end);
        None if that snapshot is no longer held (a newer one replaced it)."""
        ...


class MemorySnapshots:
    """The in-memory twin of a member's snapshot files (tests and the simulator)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: dict[SnapshotMeta, bytes] = {}

    def put(self, meta: SnapshotMeta, data: bytes) -> None:
        """Keep only the newest snapshot, as the file store does."""
        self.held = {meta: data}

    def read(self, meta: SnapshotMeta, offset: int, max_bytes: int) -> bytes | None:
        data = self.held.get(meta)
        return None if data is None else data[offset : offset + max_bytes]
