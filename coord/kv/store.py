"""Storage for the KV state machine: the Protocols and the in-memory twin.

A `KVStore` holds the keys, the client sessions with their cached replies,
the applied index and the log time.  The state machine changes it only
inside `writer()`, one transaction per batch of applied entries, and the
applied index is written in that same transaction, so "state as of index i"
and "applied index = i" are never separated.

Durability contract (what the driver and the log compaction rely on):

* A transaction is atomic: on an exception inside `writer()` nothing of it
  is kept.  A committed transaction survives a *process* crash.
* It is guaranteed to survive an OS crash or power loss only once
  `checkpoint()` has returned; until then the store may come back at any
  earlier committed state (never a torn one).  That is safe because the
  Raft log still holds every entry after the store's durable applied index:
  on restart the driver re-applies from `applied_index() + 1`.  The log is
  compacted only behind a durable snapshot file, and a store that came back
  behind the compaction point is restored from that snapshot first
  (`coord.raft.snapdriver`).

Extensions (other state machines on the same log, e.g. the file system)
keep their state in named *tables* of the same store, so they commit in the
same transaction as the KV state and the applied index.  A table is an
ordered map of bytes to bytes (byte order of keys, like LMDB); the store is
told the table names when it is opened, and `table(name)` of an unknown name
is a programming error (KeyError).

The event log (docs/watch.md) is kept in the store: `append_event` writes
an event in the same transaction as the mutation it records.  It is not
part of `dump()` (nor of LMDB snapshots): its low end is compacted on each
member's own schedule.  Events are
appended in (index, sub) order and removed only from the old end
(`drop_events`), which raises the *floor*: every event of an entry at or
below the floor may be gone, every event of an entry above it is present.

The idle index (which sessions to expire) is *lazy*: a session is indexed
at its last activity when it is created, and activity does not move it, so
a request writes only its session record.  The indexed time is therefore a
lower bound of the session's last activity.  `idle_sessions` walks the
index from the oldest time; an entry whose session turns out to have been
active since is moved to its true last activity (which is past the cut-off,
so one walk never meets it twice).  Each session's entry moves at most
once per TTL, and the walk is a function of the state alone, so every
replica (and both stores) collect the same sessions at the same entries.

Views are valid only inside their `with` block; none may be kept or used
across an `await` (the LMDB views are live transactions).
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from coord.kv.types import (
    ClientId,
    KeyValue,
    LogTime,
    SeqNo,
    SessionRecord,
    StateDump,
    WatchEvent,
)
from coord.raft.types import LogIndex

#: Table keys follow LMDB's limit, like KV keys.
MAX_TABLE_KEY = 511


class TableReader(Protocol):
    """One named table of an extension, read-only."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        """Items with start <= key < end (end None: no bound) in key order, at most
        `limit` of them (limit >= 1: callers page through big tables)."""
        ...


class TableWriter(TableReader, Protocol):
    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> bool:
        """Remove the key; False if there was none."""
        ...


class KVReadView(Protocol):
    """A consistent read-only view of the state (one read transaction)."""

    def table(self, name: str) -> TableReader:
        """An extension's named table in this same transaction."""
        ...

    def applied_index(self) -> LogIndex: ...

    def log_time(self) -> LogTime: ...

    def get(self, key: bytes) -> KeyValue | None: ...

    def range(self, start: bytes, end: bytes | None, limit: int) -> tuple[list[KeyValue], bool]:
        """Records with start <= key < end (end None: no bound) in key order, at most
        `limit` of them (0: no limit), and whether more matched."""
        ...

    def session(self, client_id: ClientId) -> SessionRecord | None: ...

    def reply(self, client_id: ClientId, seq: SeqNo) -> bytes | None: ...

    def events(self, start: LogIndex, end: LogIndex | None, limit: int) -> list[WatchEvent]:
        """Stored events with start <= index < end (end None: no bound) in (index, sub)
        order, at most `limit` of them (0: no limit)."""
        ...

    def events_floor(self) -> LogIndex:
        """Events of entries at or below this index may be gone; none above it are."""
        ...

    def event_count(self) -> int:
        """How many events are stored."""
        ...

    def dump(self) -> StateDump:
        """Everything but the event log, in canonical order."""
        ...


class KVWriteView(KVReadView, Protocol):
    """The read view plus changes; all of them commit or abort together."""

    def table(self, name: str) -> TableWriter: ...

    def set_applied(self, index: LogIndex) -> None: ...

    def set_log_time(self, now: LogTime) -> None: ...

    def put(self, kv: KeyValue) -> None: ...

    def delete(self, key: bytes) -> bool:
        """Remove the key; False if there was none."""
        ...

    def put_session(self, client_id: ClientId, record: SessionRecord) -> None:
        """Create or replace a session.  A new session is indexed at its last activity;
        a replaced one keeps its index entry unless its last activity went below it."""
        ...

    def delete_session(self, client_id: ClientId) -> None:
        """Remove a session and every reply cached for it."""
        ...

    def idle_sessions(self, before: LogTime, limit: int) -> list[ClientId]:
        """The sessions with last_activity < before among the first `limit` index entries
        indexed before `before` (by indexed time, ties by id), in that order.  Each of
        those entries whose session is not idle is moved to its last activity."""
        ...

    def put_reply(self, client_id: ClientId, seq: SeqNo, reply: bytes) -> None: ...

    def prune_replies(self, client_id: ClientId, upto: SeqNo, after: int = 0) -> int:
        """Drop the client's cached replies with after < seq <= upto; return how many.
        The caller knows none is at or below `after` (the session's acked)."""
        ...

    def append_event(self, event: WatchEvent) -> None:
        """Store an event; it must come after every stored one in (index, sub) order."""
        ...

    def drop_events(self, upto: LogIndex, limit: int) -> int:
        """Remove the oldest events, at most `limit` (>= 1) and none with index > upto;
        the floor rises to the index of the last one removed.  Returns how many."""
        ...

    def raise_events_floor(self, index: LogIndex) -> None:
        """Set the floor to max(floor, index) (the events below are dropped separately)."""
        ...


class KVStore(Protocol):
    def applied_index(self) -> LogIndex:
        """The index of the last entry whose effects are committed here."""
        ...

    def reader(self) -> AbstractContextManager[KVReadView]: ...

    def writer(self) -> AbstractContextManager[KVWriteView]:
        """A write transaction: committed when the block exits normally, aborted on error."""
        ...

    def checkpoint(self) -> LogIndex:
        """Make every committed transaction durable; return the applied index now durable.
        The Raft log may be compacted up to (not beyond) this index."""
        ...

    def close(self) -> None: ...


# --- the in-memory twin -----------------------------------------------------------------------


class _Data:
    """The twin's whole state.  Values are immutable, so a shallow copy is a snapshot."""

    __slots__ = (
        "applied", "events", "events_floor", "idle", "indexed", "keys", "kvs", "log_time",
        "replies", "sessions", "tables",
    )

    def __init__(self, tables: Iterable[str] = ()) -> None:
        self.applied = LogIndex(0)
        self.log_time = LogTime(0)
        self.kvs: dict[bytes, KeyValue] = {}
        self.keys: list[bytes] = []  # sorted keys of kvs, for range
        self.sessions: dict[ClientId, SessionRecord] = {}
        self.idle: list[tuple[LogTime, ClientId]] = []  # sorted (indexed_at, id)
        self.indexed: dict[ClientId, LogTime] = {}  # each session's time in `idle`
        self.replies: dict[ClientId, dict[SeqNo, bytes]] = {}
        # name -> (items, sorted keys of items)
        self.tables: dict[str, tuple[dict[bytes, bytes], list[bytes]]] = {
            name: ({}, []) for name in sorted(tables)
        }
        self.events: list[WatchEvent] = []  # in (index, sub) order
        self.events_floor = LogIndex(0)

    def copy(self) -> _Data:
        clone = _Data()
        clone.tables = {n: (dict(items), list(keys)) for n, (items, keys) in self.tables.items()}
        clone.applied, clone.log_time = self.applied, self.log_time
        clone.kvs, clone.keys = dict(self.kvs), list(self.keys)
        clone.sessions, clone.idle = dict(self.sessions), list(self.idle)
        clone.indexed = dict(self.indexed)
        clone.replies = {cid: dict(r) for cid, r in self.replies.items()}
        clone.events, clone.events_floor = list(self.events), self.events_floor
        return clone


class _MemoryView:
    """A view on `_Data`; when `undo` is a list, every change appends its inverse."""

    def __init__(self, data: _Data, undo: list[Callable[[], None]] | None) -> None:
        self._d = data
        self._undo = undo

    def _writable(self) -> list[Callable[[], None]]:
        if self._undo is None:
            raise RuntimeError("write through a read-only view")
        return self._undo

    # reads

    def table(self, name: str) -> _MemoryTable:
        items, keys = self._d.tables[name]
        return _MemoryTable(items, keys, self._undo)

    def applied_index(self) -> LogIndex:
        return self._d.applied

    def log_time(self) -> LogTime:
        return self._d.log_time

    def get(self, key: bytes) -> KeyValue | None:
        return self._d.kvs.get(key)

    def range(self, start: bytes, end: bytes | None, limit: int) -> tuple[list[KeyValue], bool]:
        keys = self._d.keys
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else max(lo, bisect.bisect_left(keys, end))
        stop = hi if limit == 0 else min(hi, lo + limit)
        return [self._d.kvs[k] for k in keys[lo:stop]], stop < hi

    def session(self, client_id: ClientId) -> SessionRecord | None:
        return self._d.sessions.get(client_id)

    def reply(self, client_id: ClientId, seq: SeqNo) -> bytes | None:
        return self._d.replies.get(client_id, {}).get(seq)

    def dump(self) -> StateDump:
        d = self._d
        sessions = tuple(
            (cid, rec, tuple(sorted(d.replies.get(cid, {}).items())))
            for cid, rec in sorted(d.sessions.items())
        )
        tables = tuple(
            (name, tuple((k, items[k]) for k in keys)) for name, (items, keys) in d.tables.items()
        )
        return StateDump(
            d.applied, d.log_time, tuple(d.kvs[k] for k in d.keys), sessions, tables
        )

    def events(self, start: LogIndex, end: LogIndex | None, limit: int) -> list[WatchEvent]:
        evs = self._d.events
        lo = bisect.bisect_left(evs, start, key=_event_index)
        hi = len(evs) if end is None else max(lo, bisect.bisect_left(evs, end, key=_event_index))
        return evs[lo : hi if limit == 0 else min(hi, lo + limit)]

    def events_floor(self) -> LogIndex:
        return self._d.events_floor

    def event_count(self) -> int:
        return len(self._d.events)

    # writes: each primitive sets one slot and records how to restore it

    def set_applied(self, index: LogIndex) -> None:
        old = self._d.applied
        self._writable().append(lambda: setattr(self._d, "applied", old))
        self._d.applied = index

    def set_log_time(self, now: LogTime) -> None:
        old = self._d.log_time
        self._writable().append(lambda: setattr(self._d, "log_time", old))
        self._d.log_time = now

    def _set_kv(self, key: bytes, kv: KeyValue | None) -> None:
        undo = self._writable()
        old = self._d.kvs.get(key)
        undo.append(lambda: self._set_kv_raw(key, old))
        self._set_kv_raw(key, kv)

    def _set_kv_raw(self, key: bytes, kv: KeyValue | None) -> None:
        d = self._d
        if kv is None:
            if d.kvs.pop(key, None) is not None:
                d.keys.pop(bisect.bisect_left(d.keys, key))
        else:
            if key not in d.kvs:
                bisect.insort(d.keys, key)
            d.kvs[key] = kv

    def put(self, kv: KeyValue) -> None:
        self._set_kv(kv.key, kv)

    def delete(self, key: bytes) -> bool:
        existed = key in self._d.kvs
        self._set_kv(key, None)
        return existed

    def _set_session_raw(
        self, cid: ClientId, rec: SessionRecord | None, at: LogTime | None
    ) -> None:
        d = self._d
        d.sessions.pop(cid, None)
        old_at = d.indexed.pop(cid, None)
        if old_at is not None:
            d.idle.remove((old_at, cid))
        if rec is not None and at is not None:
            d.sessions[cid], d.indexed[cid] = rec, at
            bisect.insort(d.idle, (at, cid))

    def _replace_session(
        self, cid: ClientId, rec: SessionRecord | None, at: LogTime | None
    ) -> None:
        old, old_at = self._d.sessions.get(cid), self._d.indexed.get(cid)
        self._writable().append(lambda: self._set_session_raw(cid, old, old_at))
        self._set_session_raw(cid, rec, at)

    def _set_reply_raw(self, cid: ClientId, seq: SeqNo, reply: bytes | None) -> None:
        replies = self._d.replies.setdefault(cid, {})
        if reply is None:
            replies.pop(seq, None)
        else:
            replies[seq] = reply
        if not replies:
            del self._d.replies[cid]

    def put_session(self, client_id: ClientId, record: SessionRecord) -> None:
        at = self._d.indexed.get(client_id)
        if at is None or record.last_activity < at:
            at = record.last_activity
        self._replace_session(client_id, record, at)

    def delete_session(self, client_id: ClientId) -> None:
        self.prune_replies(client_id, SeqNo(2**63))
        self._replace_session(client_id, None, None)

    def idle_sessions(self, before: LogTime, limit: int) -> list[ClientId]:
        stop = bisect.bisect_left(self._d.idle, (before, ClientId(-1)))
        out: list[ClientId] = []
        for _, cid in self._d.idle[: min(stop, limit)]:
            record = self._d.sessions[cid]
            if record.last_activity < before:
                out.append(cid)
            else:  # active since it was indexed: move it to its true time (lazy index)
                self._replace_session(cid, record, record.last_activity)
        return out

    def put_reply(self, client_id: ClientId, seq: SeqNo, reply: bytes) -> None:
        old = self.reply(client_id, seq)
        self._writable().append(lambda: self._set_reply_raw(client_id, seq, old))
        self._set_reply_raw(client_id, seq, reply)

    def prune_replies(self, client_id: ClientId, upto: SeqNo, after: int = 0) -> int:
        undo = self._writable()
        doomed = [
            (s, r) for s, r in self._d.replies.get(client_id, {}).items() if after < s <= upto
        ]
        for seq, reply in doomed:
            undo.append(functools.partial(self._set_reply_raw, client_id, seq, reply))
            self._set_reply_raw(client_id, seq, None)
        return len(doomed)

    def append_event(self, event: WatchEvent) -> None:
        evs = self._d.events
        if evs and (evs[-1].index, evs[-1].sub) >= (event.index, event.sub):
            raise ValueError(f"event ({event.index}, {event.sub}) out of order")
        self._writable().append(lambda: evs.__delitem__(-1))  # undo runs newest first
        evs.append(event)

    def drop_events(self, upto: LogIndex, limit: int) -> int:
        undo, d = self._writable(), self._d
        n = min(limit, bisect.bisect_right(d.events, upto, key=_event_index))
        if n > 0:
            doomed, old_floor = d.events[:n], d.events_floor
            undo.append(lambda: self._restore_events(doomed, old_floor))
            del d.events[:n]
            d.events_floor = LogIndex(max(old_floor, doomed[-1].index))
        return n

    def _restore_events(self, doomed: list[WatchEvent], floor: LogIndex) -> None:
        self._d.events[:0] = doomed
        self._d.events_floor = floor

    def raise_events_floor(self, index: LogIndex) -> None:
        old = self._d.events_floor
        self._writable().append(lambda: setattr(self._d, "events_floor", old))
        self._d.events_floor = LogIndex(max(old, index))


def _event_index(event: WatchEvent) -> LogIndex:
    return event.index


class _MemoryTable:
    """TableWriter on the twin; writes refuse on a read-only view (undo is None)."""

    __slots__ = ("_items", "_keys", "_undo")

    def __init__(
        self, items: dict[bytes, bytes], keys: list[bytes], undo: list[Callable[[], None]] | None
    ) -> None:
        self._items, self._keys, self._undo = items, keys, undo

    def get(self, key: bytes) -> bytes | None:
        return self._items.get(key)

    def scan(self, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        keys = self._keys
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else max(lo, bisect.bisect_left(keys, end))
        return [(k, self._items[k]) for k in keys[lo : min(hi, lo + limit)]]

    def _set_raw(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            if self._items.pop(key, None) is not None:
                self._keys.pop(bisect.bisect_left(self._keys, key))
        else:
            if key not in self._items:
                bisect.insort(self._keys, key)
            self._items[key] = value

    def _set(self, key: bytes, value: bytes | None) -> None:
        if self._undo is None:
            raise RuntimeError("write through a read-only view")
        if not isinstance(key, bytes) or not 1 <= len(key) <= MAX_TABLE_KEY:
            raise ValueError(f"table keys must be 1..{MAX_TABLE_KEY} bytes")
        old = self._items.get(key)
        self._undo.append(functools.partial(self._set_raw, key, old))
        self._set_raw(key, value)

    def put(self, key: bytes, value: bytes) -> None:
        self._set(key, bytes(value))

    def delete(self, key: bytes) -> bool:
        existed = key in self._items
        if existed:
            self._set(key, None)
        return existed


class MemoryKVStore:
    """KVStore in memory: the simulator's twin of LmdbKVStore.

    It keeps two images: `committed` (what a process crash keeps: LMDB's
    committed pages live in the OS page cache) and `durable` (what a power loss
    keeps: the image at the last `checkpoint()`).  A write transaction changes
    `committed` in place and keeps an undo list, replayed backwards on error.
    Opening a view in the thread that has a write open raises, so a test
    cannot accidentally read uncommitted state; another thread (the trio
    thread while the driver applies in a worker, as with LMDB) waits for the
    write to end and then sees it committed, like an LMDB reader would see
    the last commit.
    """

    def __init__(self, data: _Data | None = None, *, tables: Iterable[str] = ()) -> None:
        self._data: _Data | None = data if data is not None else _Data(tables)
        self._durable = self._data.copy()
        self._writer: int | None = None  # the thread with the write open
        self._lock = threading.RLock()  # held by a write, and by a read (re-entrant)

    def _d(self) -> _Data:
        if self._data is None:
            raise RuntimeError("KV store closed")
        if self._writer == threading.get_ident():
            raise RuntimeError("KV store: a write transaction is open")
        return self._data

    def applied_index(self) -> LogIndex:
        with self._lock:
            return self._d().applied

    @contextmanager
    def _read(self) -> Iterator[KVReadView]:
        with self._lock:
            yield _MemoryView(self._d(), None)

    def reader(self) -> AbstractContextManager[KVReadView]:
        return self._read()

    @contextmanager
    def _write(self) -> Iterator[KVWriteView]:
        data = self._d()
        undo: list[Callable[[], None]] = []
        with self._lock:
            self._writer = threading.get_ident()
            try:
                yield _MemoryView(data, undo)
            except BaseException:
                for step in reversed(undo):
                    step()
                raise
            finally:
                self._writer = None

    def writer(self) -> AbstractContextManager[KVWriteView]:
        return self._write()

    def checkpoint(self) -> LogIndex:
        data = self._d()
        self._durable = data.copy()
        return data.applied

    def close(self) -> None:
        self._data = None

    def crash(self, power_loss: bool = False) -> MemoryKVStore:
        """Die and restart.  A process crash keeps every committed transaction; a
        power loss goes back to the last checkpoint.  This handle is closed."""
        data = self._d()
        survivor = self._durable.copy() if power_loss else data
        self._data = None
        store = MemoryKVStore(survivor)
        store._durable = self._durable.copy()
        return store
