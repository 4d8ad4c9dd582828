"""Values of the replicated KV store: ids, per-key records, session records, config.

Invariants:

* A revision is the Raft log index of the entry that made the change, so every
  replica computes the same revisions.  `create_revision <= mod_revision`, and
  `version` counts the puts since the key was (re)created: 1 after creation.
* `LogTime` is milliseconds of the *leader's* wall clock as recorded in the
  log entry, made monotonic by the state machine (max with the previous one);
  it is the only notion of time the state machine has.
* A session's `outstanding` equals the number of replies cached for it; all
  cached replies have seq > `acked`.
* A `WatchEvent` is identified by (index, sub): the Raft index of the entry
  whose KV mutation it records and its position among that entry's events
  (0, 1, ... in execution order).  The event log holds, for every index above
  its floor, exactly the events that entry produced (docs/watch.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

from coord.raft.types import LogIndex

ClientId = NewType("ClientId", int)  # = the log index of the RegisterClient entry
SeqNo = NewType("SeqNo", int)  # per-client request number, starting at 1
LogTime = NewType("LogTime", int)  # ms, leader wall clock recorded in the log

#: LMDB's key limit; every replica refuses longer keys the same way.
MAX_KEY_BYTES = 511


def check_key(key: bytes, what: str = "key") -> None:
    if not isinstance(key, bytes) or not 1 <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"{what} must be 1..{MAX_KEY_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key with its value and metadata, as stored and as returned to clients."""

    key: bytes
    value: bytes
    version: int  # puts since creation (1 = just created)
    create_revision: LogIndex  # index of the put that created the key
    mod_revision: LogIndex  # index of the latest put


class EventKind(enum.IntEnum):
    """What a watch event records; the numbers are persisted, never renumber."""

    PUT = 1
    DELETE = 2


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change of one key, as the event log stores it and watchers receive it."""

    index: LogIndex  # the log entry that made the change (= the put's mod_revision)
    sub: int  # 0, 1, ... among the events of that entry (a txn yields several)
    kind: EventKind
    key: bytes
    value: bytes | None  # the new value of a PUT; None (a tombstone) for a DELETE


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A client session (thesis §6.3); its cached replies are stored beside it."""

    last_activity: LogTime  # log time of the latest entry for this client
    acked: SeqNo  # client has every reply with seq <= acked; those are dropped
    outstanding: int  # number of cached replies (all with seq > acked)


@dataclass(frozen=True, slots=True)
class StateDump:
    """The whole state in canonical order: for comparisons, tests and snapshots."""

    applied: LogIndex
    log_time: LogTime
    kvs: tuple[KeyValue, ...]
    sessions: tuple[tuple[ClientId, SessionRecord, tuple[tuple[SeqNo, bytes], ...]], ...]
    # extension tables by name (sorted), each as its items in key order
    tables: tuple[tuple[str, tuple[tuple[bytes, bytes], ...]], ...] = ()
    # Not the watch event log: like a snapshot, the dump is the replicated state,
    # and the log's low end is compacted on each member's own schedule.


@dataclass(frozen=True, slots=True)
class KVConfig:
    """State-machine parameters.  They decide results, so every replica must use the
    same values (they belong to the cluster's configuration, not to one node)."""

    session_ttl_ms: int = 60_000  # a session expires this long after its last entry
    max_outstanding: int = 1_024  # cached replies per session before new seqs are refused
    expire_batch: int = 16  # idle sessions removed per applied entry (bounds apply cost)
    # Watch events kept (the newest ones); 0 keeps every event until compact_events.
    event_retention: int = 100_000

    def validate(self) -> KVConfig:
        if self.session_ttl_ms <= 0:
            raise ValueError("session_ttl_ms must be positive")
        if self.max_outstanding < 1:
            raise ValueError("max_outstanding must be at least 1")
        if self.expire_batch < 1:
            raise ValueError("expire_batch must be at least 1 or sessions are never collected")
        if self.event_retention < 0:
            raise ValueError("event_retention must be >= 0 (0: keep every event)")
        return self
