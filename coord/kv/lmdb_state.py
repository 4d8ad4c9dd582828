"""LmdbKVStore: the KV state machine's state in its own LMDB environment.

Layout (named DBs in one env, separate from the Raft log's env):

* ``kv``       key bytes -> u64 version ++ u64 create_revision ++ u64 mod_revision ++ value
* ``sessions`` u64 client id -> u64 last_activity ++ u64 acked ++ u64 outstanding
               ++ u64 indexed_at (the time its ``idle`` key carries)
* ``idle``     u64 indexed_at ++ u64 client id -> b"" (the lazy idle index of
               `coord.kv.store`: indexed_at <= last_activity, moved only when
               expiry finds it stale)
* ``sessions`` also holds the cached replies: u64 client id ++ u64 seq ->
               encoded reply.  A session's 8-byte key sorts just before its
               replies' 16-byte keys, so a request's record, the reply it
               acknowledges and the reply it caches share one leaf page, and
               a commit dirties one table for the session layer, not two.
* ``meta``     ``format``, ``applied`` (u64), ``log_time`` (u64)
* ``events``   u64 index ++ u32 sub -> msgpack [kind, key, value or nil] (the watch log)
* ``events_meta`` ``floor`` (u64); the number of events is LMDB's own count of
  ``events``' records (`Transaction.stat`, O(1)), so appending an event writes
  nothing but the event
* one named DB per extension table (e.g. ``fs_inodes``), declared when the
  store is opened, committed in the same transactions as the above

All integers in keys are big-endian so LMDB's byte order is numeric order.

A write view keeps the values that almost every applied entry reads and
rewrites - the log time, the event floor and the event count - in fields,
and writes the changed ones once, just before the transaction commits
(`_LmdbView.flush`, called by `LmdbKVStore._txn`): one put per commit
instead of one or two per entry, and no read per entry.  Within the view the
fields are the truth; nothing else in the transaction reads those records.
A store created before the event log existed gets its event floor = its
applied index when first opened: the events of those entries were never
recorded, and a watcher asking for them gets COMPACTED instead of a silent gap.

Durability: the env is opened with `sync=True, metasync=False`.  A commit
fdatasyncs the data pages but writes the meta page without waiting, so LMDB
keeps atomicity and consistency (never a torn state) while a power loss may
roll back the last commit(s) - the "ACI without D" mode documented for
MDB_NOMETASYNC.  That is exactly what `KVStore` promises: committed state
survives a process crash (page cache), and `checkpoint()` (`env.sync(True)`)
makes it survive a power loss.  Losing a non-checkpointed commit only means
re-applying entries that the Raft log still holds.  Without the data sync
(`MDB_NOSYNC`) LMDB may corrupt the file on a power loss when the file
system reorders writes.

`sync_commits=False` (what `ddfs meta` uses) is that NOSYNC mode made safe:
commits cost no fdatasync at all, and the store is treated as disposable
after an unclean stop.  A `dirty` marker is created (and fsynced) before
the first unsynced commit and removed by `close()` after an `env.sync`; a
store opened with the marker present is deleted, and the member rebuilds its
state from its snapshot and the Raft log (coord.raft.snapdriver's start-up:
the log is only compacted behind a durable snapshot, so the two always
cover the state).  The state is a deterministic function of the committed
log, so nothing is lost; what a rebuild costs is the replay (at most
`snapshot_every` + `keep_tail` entries) and the watch events below the
snapshot (a watcher from before it gets COMPACTED).  This is etcd's choice
too (its backend commits in the background; the WAL is what is durable):
measured with tools/raftprobe at 64 clients, quiet machine, 2 interleaved
pairs: 4,594/4,420 writes/s instead of 4,310/4,016, total CPU per write
0.33-0.34 ms instead of 0.35-0.37, because the leader's apply thread no
longer waits ~1-2 ms for a sync before its next batch.

No transaction outlives a `with` block; a trio driver runs `apply` (and so
`writer()`) in `trio.to_thread.run_sync`.

Snapshots (Raft compaction): `write_snapshot` streams every named database
from ONE read transaction (LMDB's MVCC: applies go on meanwhile and the
snapshot is exactly the state at the applied index it reports), in a
canonical order (databases by name, keys in LMDB order), so equal states give
equal bytes on every member.  `restore_snapshot` replaces the contents of
every database in ONE write transaction: a reader sees the old state or the
new one, and a crash leaves one of the two.  The event log (``events``,
``events_meta``) is not in snapshots: each member compacts it on its own
schedule, so it would make snapshots of one index differ between members.
A restore empties it and sets its floor to the snapshot's applied index, in
the same transaction.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

import lmdb
import msgpack

from coord.kv.codec import pack
from coord.kv.store import MAX_TABLE_KEY, KVReadView, KVWriteView
from coord.kv.types import (
    ClientId,
    EventKind,
    KeyValue,
    LogTime,
    SeqNo,
    SessionRecord,
    StateDump,
    WatchEvent,
)
from coord.raft.snapfile import fsync_dir
from coord.raft.types import LogIndex

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the fixed-width kv record (no deployed data had 1)
DEFAULT_MAP_SIZE = 1 << 30
MAX_DBS = 32  # the five KV databases plus extension tables

_U64 = struct.Struct(">Q")
_PAIR = struct.Struct(">QQ")
_EVENT_KEY = struct.Struct(">QI")  # (index, sub)
_KV_HEAD = struct.Struct(">QQQ")  # version, create_revision, mod_revision (then the value)
_SESSION = struct.Struct(">QQQQ")  # last_activity, acked, outstanding, indexed_at
#: Pruning a range of at most this many seqs deletes them one by one (the common case is
#: one: the client acknowledges its previous reply); a wider range uses a cursor.
_PRUNE_POINTS = 8
_NO_TIME = 2**64  # above every log time: "the idle index is empty"
_FORMAT, _APPLIED, _LOG_TIME = b"format", b"applied", b"log_time"
_EVENTS_FLOOR = b"floor"  # key in events_meta


class KVStoreError(Exception):
    """The KV store on disk cannot be used (wrong format, closed, full)."""


class KVStoreFullError(KVStoreError):
    """The LMDB map is full; the transaction was aborted."""


def _kv_value(kv: KeyValue) -> bytes:
    # A fixed header and the raw value: every put and get goes through this pair,
    # and struct + concatenation costs about half of a msgpack round trip.
    return _KV_HEAD.pack(kv.version, kv.create_revision, kv.mod_revision) + kv.value


def _kv_from(key: bytes, raw: bytes) -> KeyValue:
    version, create, mod = _KV_HEAD.unpack_from(raw)  # no LogIndex() calls: a hot path
    return KeyValue(key, raw[_KV_HEAD.size :], version, create, mod)


def _event_from(key: bytes, raw: bytes) -> WatchEvent:
    index, sub = _EVENT_KEY.unpack(key)
    kind, k, value = msgpack.unpackb(raw, raw=False)
    return WatchEvent(LogIndex(index), sub, EventKind(kind), k, value)


def _session_from(raw: bytes) -> SessionRecord:
    last, acked, outstanding, _ = _SESSION.unpack(raw)
    return SessionRecord(LogTime(last), SeqNo(acked), outstanding)


_KV_DBS = frozenset({"kv", "sessions", "idle", "meta", "events", "events_meta"})
_SNAPSHOT_MAGIC = "ddfs-kv-snapshot"
_SNAPSHOT_VERSION = 1
_SNAPSHOT_BLOCK = 1 << 16  # bytes buffered before each write to the sink


class ByteSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Dbs:
    """The env's named databases."""

    def __init__(self, env: lmdb.Environment, tables: Iterable[str]) -> None:
        self.kv = env.open_db(b"kv")
        self.sessions = env.open_db(b"sessions")
        self.idle = env.open_db(b"idle")
        self.meta = env.open_db(b"meta")
        self.events = env.open_db(b"events")
        self.events_meta = env.open_db(b"events_meta")
        names = sorted(set(tables))
        if _KV_DBS & set(names) or len(names) + len(_KV_DBS) > MAX_DBS:
            raise KVStoreError(f"bad extension tables {names}")
        self.tables = {name: env.open_db(name.encode()) for name in names}

    def all(self) -> list[tuple[str, lmdb._Database]]:
        """Every database of the state, by name: the snapshot's canonical order."""
        fixed = {"kv": self.kv, "sessions": self.sessions, "idle": self.idle,
                 "meta": self.meta}
        return sorted([*fixed.items(), *self.tables.items()])


class _LmdbTable:
    """A TableWriter over one named DB in the view's transaction."""

    __slots__ = ("_db", "_t")

    def __init__(self, txn: lmdb.Transaction, db: lmdb._Database) -> None:
        self._t, self._db = txn, db

    def get(self, key: bytes) -> bytes | None:
        raw = self._t.get(key, db=self._db)
        return None if raw is None else bytes(raw)

    def scan(self, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        cursor = self._t.cursor(db=self._db)
        found = cursor.first() if start == b"" else cursor.set_range(start)
        while found and len(out) < limit:
            key = bytes(cursor.key())
            if end is not None and key >= end:
                break
            out.append((key, bytes(cursor.value())))
            found = cursor.next()
        return out

    def put(self, key: bytes, value: bytes) -> None:
        if not 1 <= len(key) <= MAX_TABLE_KEY:
            raise ValueError(f"table keys must be 1..{MAX_TABLE_KEY} bytes")
        self._t.put(key, value, db=self._db)

    def delete(self, key: bytes) -> bool:
        return bool(self._t.delete(key, db=self._db))


class _LmdbView:
    """KVWriteView over one LMDB transaction (read-only transactions refuse writes)."""

    def __init__(self, txn: lmdb.Transaction, dbs: _Dbs) -> None:
        self._t = txn
        self._db = dbs
        # Write-back copies (see the module docstring); None: not read yet.  Every
        # change goes through these fields, so they never go stale within the view.
        self._log_time: int | None = None
        self._floor: int | None = None
        self._event_count: int | None = None  # records in `events` (LMDB's count)
        self._dirty_log_time = False  # _log_time differs from the stored record
        # indexed_at of the sessions read or written in this view (saves a re-read
        # when a request's session is written back)
        self._indexed: dict[int, int] = {}
        # A lower bound of the idle index's smallest time (None: unknown): expiry,
        # asked on every entry, skips the index while `before` is at most this.
        self._idle_min: int | None = None
        self._dirty_floor = False  # _floor differs from the stored record

    def flush(self) -> None:
        """Write the changed write-back copies: called once, just before the commit."""
        if self._dirty_log_time and self._log_time is not None:
            self._t.put(_LOG_TIME, _U64.pack(self._log_time), db=self._db.meta)
            self._dirty_log_time = False
        if self._dirty_floor and self._floor is not None:
            self._t.put(_EVENTS_FLOOR, _U64.pack(self._floor), db=self._db.events_meta)
            self._dirty_floor = False

    # reads

    def table(self, name: str) -> _LmdbTable:
        return _LmdbTable(self._t, self._db.tables[name])

    def _meta_u64(self, key: bytes) -> int:
        raw = self._t.get(key, db=self._db.meta)
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def applied_index(self) -> LogIndex:
        return LogIndex(self._meta_u64(_APPLIED))

    def log_time(self) -> LogTime:
        if self._log_time is None:
            self._log_time = self._meta_u64(_LOG_TIME)
        return LogTime(self._log_time)

    def get(self, key: bytes) -> KeyValue | None:
        raw = self._t.get(key, db=self._db.kv)
        return None if raw is None else _kv_from(key, bytes(raw))

    def range(self, start: bytes, end: bytes | None, limit: int) -> tuple[list[KeyValue], bool]:
        out: list[KeyValue] = []
        cursor = self._t.cursor(db=self._db.kv)
        found = cursor.first() if start == b"" else cursor.set_range(start)
        while found:
            key = bytes(cursor.key())
            if end is not None and key >= end:
                return out, False
            if limit and len(out) == limit:
                return out, True
            out.append(_kv_from(key, bytes(cursor.value())))
            found = cursor.next()
        return out, False

    def session(self, client_id: ClientId) -> SessionRecord | None:
        raw = self._t.get(_U64.pack(client_id), db=self._db.sessions)
        if raw is None:
            return None
        last, acked, outstanding, self._indexed[client_id] = _SESSION.unpack(raw)
        return SessionRecord(last, acked, outstanding)  # no NewType calls: a hot path

    def _indexed_at(self, client_id: ClientId) -> int | None:
        """The session's idle-index time (None: no such session)."""
        at = self._indexed.get(client_id)
        if at is None and self.session(client_id) is not None:
            at = self._indexed[client_id]
        return at

    def reply(self, client_id: ClientId, seq: SeqNo) -> bytes | None:
        raw = self._t.get(_PAIR.pack(client_id, seq), db=self._db.sessions)
        return None if raw is None else bytes(raw)

    def events(self, start: LogIndex, end: LogIndex | None, limit: int) -> list[WatchEvent]:
        out: list[WatchEvent] = []
        cursor = self._t.cursor(db=self._db.events)
        found = cursor.set_range(_EVENT_KEY.pack(start, 0))
        stop = None if end is None else _EVENT_KEY.pack(end, 0)
        while found and (limit == 0 or len(out) < limit):
            key = bytes(cursor.key())
            if stop is not None and key >= stop:
                break
            out.append(_event_from(key, bytes(cursor.value())))
            found = cursor.next()
        return out

    def _events_u64(self, key: bytes) -> int:
        raw = self._t.get(key, db=self._db.events_meta)
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def events_floor(self) -> LogIndex:
        if self._floor is None:
            self._floor = self._events_u64(_EVENTS_FLOOR)
        return LogIndex(self._floor)

    def event_count(self) -> int:
        if self._event_count is None:
            self._event_count = int(self._t.stat(self._db.events)["entries"])
        return self._event_count

    def dump(self) -> StateDump:
        kvs, _ = self.range(b"", None, 0)
        sessions: list[tuple[ClientId, SessionRecord, list[tuple[SeqNo, bytes]]]] = []
        for key, raw in self._t.cursor(db=self._db.sessions).iternext():
            if len(key) == _U64.size:  # a session; its replies follow it
                cid = ClientId(_U64.unpack(key)[0])
                sessions.append((cid, _session_from(bytes(raw)), []))
            else:
                cid, seq = _PAIR.unpack(key)
                if not sessions or sessions[-1][0] != cid:
                    raise KVStoreError(f"a reply of client {cid} without its session")
                sessions[-1][2].append((SeqNo(seq), bytes(raw)))
        tables = tuple(
            (name, tuple((bytes(k), bytes(v)) for k, v in self._t.cursor(db=db).iternext()))
            for name, db in self._db.tables.items()
        )
        return StateDump(
            self.applied_index(), self.log_time(), tuple(kvs),
            tuple((cid, rec, tuple(replies)) for cid, rec, replies in sessions), tables
        )

    # writes

    def set_applied(self, index: LogIndex) -> None:
        self._t.put(_APPLIED, _U64.pack(index), db=self._db.meta)

    def set_log_time(self, now: LogTime) -> None:
        if now != self.log_time():
            self._log_time, self._dirty_log_time = now, True

    def put(self, kv: KeyValue) -> None:
        self._t.put(kv.key, _kv_value(kv), db=self._db.kv)

    def delete(self, key: bytes) -> bool:
        return bool(self._t.delete(key, db=self._db.kv))

    def _write_session(self, client_id: ClientId, record: SessionRecord, at: int) -> None:
        raw = _SESSION.pack(record.last_activity, record.acked, record.outstanding, at)
        self._t.put(_U64.pack(client_id), raw, db=self._db.sessions)
        self._indexed[client_id] = at

    def _move_idle(self, client_id: ClientId, old: int | None, new: int) -> None:
        if old is not None:
            self._t.delete(_PAIR.pack(old, client_id), db=self._db.idle)
        self._t.put(_PAIR.pack(new, client_id), b"", db=self._db.idle)
        if self._idle_min is not None:
            self._idle_min = min(self._idle_min, new)

    def put_session(self, client_id: ClientId, record: SessionRecord) -> None:
        at = self._indexed_at(client_id)
        if at is None or record.last_activity < at:  # new, or moved back (not by sessions.py)
            self._move_idle(client_id, at, record.last_activity)
            at = record.last_activity
        self._write_session(client_id, record, at)  # activity alone leaves the index alone

    def delete_session(self, client_id: ClientId) -> None:
        at = self._indexed_at(client_id)
        if at is None:
            return
        self.prune_replies(client_id, SeqNo(2**64 - 1))
        self._t.delete(_PAIR.pack(at, client_id), db=self._db.idle)
        self._t.delete(_U64.pack(client_id), db=self._db.sessions)
        del self._indexed[client_id]

    def idle_sessions(self, before: LogTime, limit: int) -> list[ClientId]:
        if self._idle_min is not None and before <= self._idle_min:
            return []  # every indexed time is >= before: nothing can be idle
        seen: list[tuple[int, ClientId]] = []
        cursor = self._t.cursor(db=self._db.idle)
        found = cursor.first()
        while found and len(seen) < limit:
            at, cid = _PAIR.unpack(cursor.key())
            if at >= before:
                break
            seen.append((at, ClientId(cid)))
            found = cursor.next()
        if not seen:
            self._idle_min = at if found else _NO_TIME
            return []
        out: list[ClientId] = []
        for at, cid in seen:
            record = self.session(cid)
            if record is None:
                raise KVStoreError(f"idle index names session {cid}, which does not exist")
            if record.last_activity < before:
                out.append(cid)
            else:  # active since it was indexed: index it at its true time, after `before`
                self._move_idle(cid, at, record.last_activity)
                self._write_session(cid, record, record.last_activity)
        self._idle_min = None
        return out

    def put_reply(self, client_id: ClientId, seq: SeqNo, reply: bytes) -> None:
        self._t.put(_PAIR.pack(client_id, seq), reply, db=self._db.sessions)

    def prune_replies(self, client_id: ClientId, upto: SeqNo, after: int = 0) -> int:
        if upto - after <= _PRUNE_POINTS:
            removed, db = 0, self._db.sessions
            for seq in range(after + 1, upto + 1):
                if self._t.delete(_PAIR.pack(client_id, seq), db=db):
                    removed += 1
            return removed
        cursor = self._t.cursor(db=self._db.sessions)
        removed = 0
        found = cursor.set_range(_PAIR.pack(client_id, after + 1))
        while found:
            key = cursor.key()
            if len(key) != _PAIR.size:  # the next session's record: no more replies
                break
            cid, seq = _PAIR.unpack(key)
            if cid != client_id or seq > upto:
                break
            cursor.delete()  # moves to the next record, or off the end (empty key)
            removed += 1
            found = bool(cursor.key())
        return removed

    def append_event(self, event: WatchEvent) -> None:
        raw = pack((int(event.kind), event.key, event.value))
        count = self.event_count()  # before the put: LMDB's count would include it
        # append=True: LMDB refuses (False) a key not above the last one, and skips
        # the tree search, since events only ever arrive in order.
        if not self._t.put(_EVENT_KEY.pack(event.index, event.sub), raw, db=self._db.events,
                           append=True):
            raise ValueError(f"event ({event.index}, {event.sub}) out of order")
        self._event_count = count + 1

    def drop_events(self, upto: LogIndex, limit: int) -> int:
        count = self.event_count()  # before the deletes: LMDB's count would omit them
        cursor = self._t.cursor(db=self._db.events)
        removed, last = 0, 0
        found = cursor.first()
        while found and removed < limit:
            index, _ = _EVENT_KEY.unpack(cursor.key())
            if index > upto:
                break
            cursor.delete()  # moves to the next record, or off the end (empty key)
            removed, last = removed + 1, index
            found = bool(cursor.key())
        if removed:
            self._event_count = count - removed
            self.raise_events_floor(LogIndex(last))
        return removed

    def raise_events_floor(self, index: LogIndex) -> None:
        if index > self.events_floor():
            self._floor, self._dirty_floor = index, True

    def restart_events(self, floor: LogIndex) -> None:
        """Empty the event log and set its floor (a restored snapshot's log starts there)."""
        self._t.drop(self._db.events, delete=False)
        self._floor, self._dirty_floor, self._event_count = floor, True, 0


class LmdbSnapshotSource:
    """A pinned state (one read transaction) to stream once, on any one thread at a time
    (py-lmdb uses MDB_NOTLS: a read transaction may move between threads)."""

    def __init__(self, txn: lmdb.Transaction, dbs: _Dbs) -> None:
        self._txn: lmdb.Transaction | None = txn
        self._dbs = dbs

    def write(self, out: ByteSink) -> LogIndex:
        """Stream the pinned state to `out` (canonical order); its applied index.  Closes."""
        txn = self._txn
        if txn is None:
            raise KVStoreError("snapshot source already used")
        try:
            packer = msgpack.Packer(use_bin_type=True)
            dbs = self._dbs.all()
            applied = _LmdbView(txn, self._dbs).applied_index()
            buf = bytearray(packer.pack([_SNAPSHOT_MAGIC, _SNAPSHOT_VERSION, [n for n, _ in dbs]]))
            for number, (_, db) in enumerate(dbs):
                for key, value in txn.cursor(db=db).iternext():
                    buf += packer.pack((number, key, value))
                    if len(buf) >= _SNAPSHOT_BLOCK:
                        out.write(bytes(buf))
                        buf.clear()
            out.write(bytes(buf))
            return applied
        finally:
            self.close()

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None


#: Present while a store with unsynced commits (`sync_commits=False`) is open.
DIRTY_MARKER = "dirty"
_ENV_FILES = ("data.mdb", "lock.mdb")


def _durable_touch(path: Path) -> None:
    with open(path, "wb") as f:
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def _discard_if_dirty(path: Path) -> None:
    """A store with unsynced commits that was not closed cleanly may be torn (LMDB
    without its data sync can corrupt on a power loss): drop it, so the member
    rebuilds the state from its snapshot and the Raft log (coord.raft.snapdriver)."""
    if not (path / DIRTY_MARKER).exists():
        return
    log.warning("KV store %s was not closed cleanly: discarding it; the state is rebuilt "
                "from the snapshot and the Raft log", path)
    for name in _ENV_FILES:
        (path / name).unlink(missing_ok=True)
    fsync_dir(path)


class LmdbKVStore:
    """KVStore on LMDB; see the module docstring for the layout and durability."""

    def __init__(
        self, path: Path | str, map_size: int = DEFAULT_MAP_SIZE, *, tables: Iterable[str] = (),
        sync_commits: bool = True,
    ) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self._path = Path(path)
        self._sync_commits = sync_commits
        if not sync_commits:
            _discard_if_dirty(self._path)
            _durable_touch(self._path / DIRTY_MARKER)  # before the first unsynced commit
        self._env: lmdb.Environment | None = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=MAX_DBS,
            sync=sync_commits,
            metasync=False,  # ACI per commit; D at checkpoint() - see the module docstring
            writemap=False,
            readahead=False,
            meminit=False,
        )
        try:
            self._dbs = _Dbs(self._env, tables)
        except BaseException:
            self._env.close()
            raise
        with self._env.begin(write=True, db=self._dbs.meta) as txn:
            raw = txn.get(_FORMAT)
            if raw is None:
                txn.put(_FORMAT, msgpack.packb(FORMAT_VERSION))
            elif msgpack.unpackb(raw) != FORMAT_VERSION:
                raise KVStoreError(f"KV store format {msgpack.unpackb(raw)} != {FORMAT_VERSION}")
            if txn.get(_EVENTS_FLOOR, db=self._dbs.events_meta) is None:  # new, or older
                floor = txn.get(_APPLIED) or _U64.pack(0)
                txn.put(_EVENTS_FLOOR, floor, db=self._dbs.events_meta)

    def _e(self) -> lmdb.Environment:
        if self._env is None:
            raise KVStoreError("KV store closed")
        return self._env

    def applied_index(self) -> LogIndex:
        with self.reader() as view:
            return view.applied_index()

    @contextmanager
    def _txn(self, write: bool) -> Iterator[_LmdbView]:
        # lmdb's Transaction context manager commits on normal exit, aborts on error.
        env = self._e()
        try:
            with env.begin(write=write) as txn:
                view = _LmdbView(txn, self._dbs)
                yield view
                if write:
                    view.flush()  # the write-back copies, inside the transaction
        except lmdb.MapFullError as exc:
            raise KVStoreFullError(f"KV store full (map size {env.info()['map_size']})") from exc
        except lmdb.Error as exc:  # ENOSPC reaches LMDB's commit as EIO, for one
            raise KVStoreError(f"KV store {env.path()}: write failed: {exc} (disk full?)") from exc

    def reader(self) -> AbstractContextManager[KVReadView]:
        return self._txn(write=False)

    def writer(self) -> AbstractContextManager[KVWriteView]:
        return self._txn(write=True)

    def open_snapshot(self) -> LmdbSnapshotSource:
        """Pin the current state (a read transaction) for a later `write`: opening is
        cheap, so a driver opens it right after an apply and streams it elsewhere."""
        return LmdbSnapshotSource(self._e().begin(), self._dbs)

    def write_snapshot(self, out: ByteSink) -> LogIndex:
        """Stream the whole state to `out` from one read transaction; its applied index."""
        return self.open_snapshot().write(out)

    def restore_snapshot(self, inp: BinaryIO) -> LogIndex:
        """Replace the whole state by a snapshot (one transaction); the new applied index."""
        env = self._e()
        unpacker = msgpack.Unpacker(inp, raw=False, use_list=False, max_buffer_size=1 << 30)
        head = next(unpacker, None)
        if not (isinstance(head, tuple) and len(head) == 3 and head[0] == _SNAPSHOT_MAGIC):
            raise KVStoreError("not a KV snapshot")
        mine = dict(self._dbs.all())
        if head[1] != _SNAPSHOT_VERSION or set(head[2]) != set(mine):
            raise KVStoreError(f"snapshot version {head[1]} with databases {head[2]} does not "
                               f"fit this store ({sorted(mine)})")
        dbs = [mine[name] for name in head[2]]
        try:
            with env.begin(write=True) as txn:
                for db in dbs:
                    txn.drop(db, delete=False)
                for number, key, value in unpacker:
                    # Keys arrive in LMDB order within each database: append skips the search.
                    txn.put(key, value, db=dbs[number], append=True)
                view = _LmdbView(txn, self._dbs)
                applied = view.applied_index()
                view.restart_events(applied)  # not in snapshots: see the module docstring
                view.flush()
        except lmdb.MapFullError as exc:
            raise KVStoreFullError(f"KV store full (map size {env.info()['map_size']})") from exc
        env.sync(True)
        return applied

    def checkpoint(self) -> LogIndex:
        env = self._e()
        applied = self.applied_index()  # read first: everything up to it is committed
        env.sync(True)
        return applied

    def close(self) -> None:
        """Close; a store with unsynced commits syncs first and then drops its dirty
        marker, so the next open keeps the state."""
        if self._env is not None:
            env, self._env = self._env, None
            if not self._sync_commits:
                env.sync(True)
            env.close()
            if not self._sync_commits:
                (self._path / DIRTY_MARKER).unlink(missing_ok=True)
                fsync_dir(self._path)

    def __enter__(self) -> LmdbKVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
