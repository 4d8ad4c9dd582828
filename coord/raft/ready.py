"""What the core hands to its driver: the `Ready` batch and the results of
`propose` / `read_index`.

The driver handles a Ready in one fixed order, written once per driver:

1. persist: if `truncate_from` is set, delete stored entries >= it; append
   `entries`; write `hard_state` if set; fsync when `must_sync`; write
   `snapshot_chunks` to the partial snapshot (durably);
2. send `messages` (only now: replies such as vote grants and append acks
   promise that the state above is durable);
3. apply `committed_entries` to the state machine, in order;
4. serve `read_states` (their index is <= the last applied entry) and fail
   `failed_reads`;
5. call `core.advance(ready)`;
6. if a snapshot chunk was `last`: verify the snapshot; if it checks, replace
   the state machine's state with it when meta.index > the applied index,
   call `core.snapshot_installed(meta)`, then `truncate_prefix(index, term)`
   on the log store (before the next Ready: its messages include the "done");
   if it does not, call `core.snapshot_corrupt(meta)`.

Only one Ready is outstanding: `ready()` raises until the previous one was
advanced.  `step`, `tick`, `propose` and `read_index` may be called while a
Ready is being handled; their effects appear in the next Ready.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coord.raft.messages import Message, ReadCtx
from coord.raft.readindex import ReadState
from coord.raft.snapshot import SnapshotChunk
from coord.raft.types import Entry, HardState, LogIndex, NodeId, Term


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts a driver shows or routes by (never persisted)."""

    role: Role
    leader: NodeId | None
    term: Term


@dataclass(frozen=True, slots=True)
class Ready:
    hard_state: HardState | None  # write when not None
    must_sync: bool  # fsync before sending: entries, term or vote changed
    entries: tuple[Entry, ...]  # append (after truncating from truncate_from)
    truncate_from: LogIndex | None  # a stored suffix from here on conflicts: delete it
    messages: tuple[Message, ...]  # send after persisting
    committed_entries: tuple[Entry, ...]  # apply in order after sending
    read_states: tuple[ReadState, ...]  # serve after applying committed_entries
    failed_reads: tuple[ReadCtx, ...]  # reads abandoned (leadership lost): retry elsewhere
    soft_state: SoftState  # role/leader/term as of this Ready
    snapshot_chunks: tuple[SnapshotChunk, ...] = ()  # write to the partial snapshot (step 1)


@dataclass(frozen=True, slots=True)
class Proposed:
    """Appended at (index, term): it is committed iff the entry applied at
    `index` has this term; an entry of another term there means it was lost."""

    index: LogIndex
    term: Term


@dataclass(frozen=True, slots=True)
class NotLeader:
    """Retry at `leader_hint` (None: no leader known yet; retry later)."""

    leader_hint: NodeId | None


@dataclass(frozen=True, slots=True)
class Overloaded:
    """Retryable: the leader already holds `uncommitted_bytes` of uncommitted proposals."""

    uncommitted_bytes: int
    limit: int


@dataclass(frozen=True, slots=True)
class ReadQueued:
    """The read is in progress; its ReadState (or a failure) appears in a later Ready."""

    ctx: ReadCtx


@dataclass(frozen=True, slots=True)
class Refused:
    """The leader will not take this proposal now: `reason` says why (a configuration
    change in progress, a leadership transfer, a learner not caught up...)."""

    reason: str


@dataclass(frozen=True, slots=True)
class TransferStarted:
    """Leadership is being handed to `target`; the transfer aborts after an election
    timeout if the target has not taken over by then."""

    target: NodeId


ProposeResult = Proposed | NotLeader | Overloaded | Refused
TransferResult = TransferStarted | NotLeader | Refused
ReadResult = ReadQueued | NotLeader
