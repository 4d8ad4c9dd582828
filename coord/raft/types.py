"""Shared Raft vocabulary: ids, log entries and the durable hard state.

These types are the contract between the sans-IO core, the storage adapters
and the driver.  They are plain frozen values; nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

Term = NewType("Term", int)
LogIndex = NewType("LogIndex", int)
NodeId = NewType("NodeId", int)

#: `HardState.vote` when the node has not voted in its current term.
NO_VOTE: NodeId | None = None


class EntryKind(enum.IntEnum):
    """What a log entry carries; the state machine only sees COMMAND entries."""

    NOOP = 0  # appended by a new leader to commit entries of earlier terms (§5.4.2)
    COMMAND = 1  # an opaque state-machine command (bytes)
    CONFIG = 2  # a membership configuration (Raft part 2)


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry.  Index 0 / term 0 is the empty log's sentinel and is never stored."""

    term: Term
    index: LogIndex
    kind: EntryKind
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What Raft must fsync before answering a vote or acknowledging entries (§5.1, fig. 2).

    `commit` is persisted too (as etcd does) so a restarted node can apply up
    to it without waiting for a leader; it is never required for safety.
    """

    term: Term = Term(0)
    vote: NodeId | None = None
    commit: LogIndex = LogIndex(0)
