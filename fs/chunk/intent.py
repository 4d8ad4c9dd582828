"""Prepared mutations ("intents") of a chunk replica: the participant's side of
the two-phase commit.  Pure types, no I/O.

An intent is what a replica promised when it voted READY for mutation
(token, serial) of a chunk: the data (kept durably beside the index) and
the place it goes.  Its life:

    PREPARED --decision COMMIT--> APPLIED --data durable in the chunk file--> (forgotten)
        |
        +------decision ABORT---> ABORTED (a marker without data, kept while
                                           `token` is the replica's current one)

Invariants the stores keep (fs/chunk/store.py, fs/chunk/disk.py):

* A PREPARED intent's data is durable before the replica votes, and
  nothing of it is readable: reads see committed mutations only.
* Decisions are taken strictly in serial order per (chunk, token): the
  replica's `ReplicaState.serial` is the last serial *decided* under
  `ReplicaState.token`, committed unless it is among the ABORTED markers.
  So "committed (token, s)" is `state.token == token and s <= state.serial
  and s not aborted` - what a new primary needs to settle an old mutation.
* An APPLIED intent is in the index (checksums, length) and its data is in
  the chunk file, maybe not yet durable there: until a checkpoint syncs the
  chunk file, recovery re-applies it from the staged copy (redo), so a
  commit never needs its own data sync.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coord.lease import FencingToken
from fs.types import CHUNK_SIZE, ChunkHandle, ChunkVersion

IntentKey = tuple[FencingToken, int]  # (token, serial): the order decisions are taken in


class IntentStatus(enum.IntEnum):
    PREPARED = 0  # voted READY, undecided
    APPLIED = 1  # committed and in the index; its data may still need a redo after a crash
    ABORTED = 2  # decided ABORT; a marker (no data) answering "what became of serial s?"


@dataclass(frozen=True, slots=True)
class Intent:
    """One mutation a replica prepared (or a marker of one it aborted)."""

    handle: ChunkHandle
    token: FencingToken
    serial: int
    version: ChunkVersion  # the version the mutation carries (adopted when it commits)
    offset: int  # a write's first byte; a truncate's new length
    length: int  # a write's byte count (0 for a truncate)
    truncate: bool
    status: IntentStatus = IntentStatus.PREPARED
    old_length: int = 0  # APPLIED: the replica's data length before (for the redo)

    @property
    def key(self) -> IntentKey:
        return self.token, self.serial

    @property
    def end(self) -> int:
        """Where the mutation's effect ends (a truncate affects everything past it)."""
        return CHUNK_SIZE if self.truncate else self.offset + self.length

    def overlaps(self, offset: int, length: int) -> bool:
        """Would a read of [offset, offset + length) see this mutation's effect?"""
        return length > 0 and offset < self.end and self.offset < offset + length

    @property
    def undecided(self) -> bool:
        return self.status is IntentStatus.PREPARED


def committed(state_token: int, state_serial: int, aborted: frozenset[int] | set[int],
              key: IntentKey) -> bool | None:
    """What a replica's decision record says about `key`: True committed, False
    aborted or never decided here, None unknown (the replica moved on to a
    newer token, so its markers of `key`'s token are gone)."""
    token, serial = key
    if state_token > token:
        return None
    return state_token == token and serial <= state_serial and serial not in aborted
