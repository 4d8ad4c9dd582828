"""Typed Raft messages exchanged between nodes (all frozen values).

Every message names its sender, its receiver and the sender's term; the core
compares terms before anything else (fig. 2, "Rules for all servers").  A
message never carries mutable state, so the driver may encode, duplicate,
delay or drop it freely: the protocol tolerates all of these.

InstallSnapshot carries one chunk of the leader's newest snapshot; the
follower answers with the offset it wants next, so a transfer resumes where
it stopped after drops, a reconnect or a leader restart (docs/raft.md).

Leadership transfer (thesis §3.10): `TimeoutNow` tells a caught-up voter to
campaign at once, and its RequestVote carries `transfer=True`, which lets it
bypass leader stickiness (the old leader asked for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

from coord.raft.snapshot import SnapshotMeta
from coord.raft.types import Entry, LogIndex, NodeId, Term

_NO_INDEX = LogIndex(0)
_NO_TERM = Term(0)

#: An opaque client token identifying one linearizable read; echoed back in ReadState.
ReadCtx = NewType("ReadCtx", bytes)


@dataclass(frozen=True, slots=True)
class RequestVote:
    """§5.2 RequestVote RPC; with `pre_vote` it is the thesis §9.6 PreVote, which
    changes no state on the receiver and carries the term the sender *would* use."""

    src: NodeId
    dst: NodeId
    term: Term
    last_log_index: LogIndex
    last_log_term: Term
    pre_vote: bool = False
    transfer: bool = False  # sent on a leader's TimeoutNow: receivers ignore stickiness


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    src: NodeId
    dst: NodeId
    term: Term
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """§5.3 AppendEntries RPC carrying a batch of entries after (prev_log_index, prev_log_term)."""

    src: NodeId
    dst: NodeId
    term: Term
    prev_log_index: LogIndex
    prev_log_term: Term
    entries: tuple[Entry, ...]
    leader_commit: LogIndex


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Reply to AppendEntries.

    On success `match_index` is the last index known to match the leader.  On
    rejection `reject_index` echoes the prev_log_index that failed, and
    (`hint_index`, `hint_term`) is the follower's last entry at or below it
    whose term is <= prev_log_term: the leader can skip every index above the
    hint whose term is larger (fast backtracking, §5.3 last paragraphs).
    """

    src: NodeId
    dst: NodeId
    term: Term
    success: bool
    match_index: LogIndex = _NO_INDEX
    reject_index: LogIndex = _NO_INDEX
    hint_index: LogIndex = _NO_INDEX
    hint_term: Term = _NO_TERM


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader liveness ping.  `commit` is min(leader commit, follower match) so a
    follower never commits an entry it has not been shown to hold; `read_round`
    lets the reply confirm leadership for ReadIndex (thesis §6.4)."""

    src: NodeId
    dst: NodeId
    term: Term
    commit: LogIndex
    read_round: int


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    src: NodeId
    dst: NodeId
    term: Term
    read_round: int


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """A follower forwards a client's linearizable read to the leader (thesis §6.4.1)."""

    src: NodeId
    dst: NodeId
    term: Term
    ctx: ReadCtx


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    """The leader's confirmed read index for `ctx`; the follower serves the read
    once it has applied up to `index`."""

    src: NodeId
    dst: NodeId
    term: Term
    ctx: ReadCtx
    index: LogIndex


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """§7 InstallSnapshot RPC: bytes [offset, offset + len(data)) of snapshot `meta`."""

    src: NodeId
    dst: NodeId
    term: Term
    meta: SnapshotMeta
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """The follower wants snapshot `index` from byte `offset` on; with `done` it has
    installed it (or already held everything up to `index`): its log matches to `index`."""

    src: NodeId
    dst: NodeId
    term: Term
    index: LogIndex
    offset: int
    done: bool


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """The leader hands over: the receiver (a voter as up to date as the leader)
    starts a real election immediately, skipping pre-vote."""

    src: NodeId
    dst: NodeId
    term: Term


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | ReadIndexRequest
    | ReadIndexResponse
    | TimeoutNow
    | InstallSnapshot
    | InstallSnapshotResponse
)
