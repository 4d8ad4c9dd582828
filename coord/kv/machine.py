"""The replicated KV state machine: applies committed Raft entries, serves reads.

Sans-IO and deterministic: the result of applying an entry depends only on
the store's state and the entry (its index and its recorded timestamp) -
no clocks, no randomness, no iteration over unordered containers.  Two
replicas fed the same entries hold identical state (`dump()`).

Invariants:

* `apply` takes consecutive entries starting at `applied_index + 1` and
  applies them in ONE store transaction that also records the new applied
  index, so the state and the applied index can never disagree, even after a
  crash; an out-of-order entry raises `ApplyOrderError` before anything is
  written.  On restart the driver resumes at `applied_index + 1`.
* NOOP and CONFIG entries change nothing but the applied index.  A COMMAND
  entry that does not decode yields a BAD_COMMAND result (on every replica
  alike) rather than an exception: the log is not ours to refuse.
* Revisions are log indexes: a put at index i sets mod_revision = i.
* A `ClientRequest(Put)` entry (nearly every write) takes a fast path
  (`decode_put_request`, `_apply_put`) that does exactly what the general
  path does, in the same order, without building the log record's values.
* `read` serves Get/Range from the last committed state without touching the
  log; linearizability is the driver's job (ReadIndex or lease: wait until
  applied_index >= the read index, then call `read`).

* Extensions (`Extension`: other state machines on the same log, such as
  the file system) share the session layer and the transaction: an
  `ExtCommand(space, payload)` inside a `ClientRequest` is executed at most
  once by the extension registered for `space`, its encoded result cached
  like any reply; a `LeaderCommand` runs its `ExtCommand` outside any
  session.  Every extension sees every entry (`on_entry`, before the entry's
  own effect) and every end of a session (`session_ended`), inside the same
  transaction.  An extension payload that does not decode is BAD_COMMAND, as
  is a space with no extension.

* Snapshots (Raft compaction): `write_snapshot` / `restore_snapshot` pass
  through to a store that can stream its whole state (`SnapshotStore`: the
  LMDB store; extension tables included, so the file system's state travels
  with it).  `snapshot_taken(index)` is the hook a driver calls whenever a
  snapshot at `index` exists (taken or installed): the log behind it may be
  compacted, so anything that mirrors the log (an event log for watches)
  may compact up to it; `snapshot_index` remembers the newest.

* Watch events (`coord.kv.events`, docs/watch.md): every KV mutation a
  command makes (put, delete of an existing key, successful cas, each such op
  of a txn) appends an event in the same transaction; extension commands
  (the file system) produce none.  Retention runs after each KV command.
  The event log is not part of snapshots (its compaction is local, and
  snapshots of one index must be the same bytes on every member): a
  restored state starts its log at the snapshot index.  `snapshot_taken`
  schedules the compaction of the events up to the snapshot index; `apply`
  carries it out, at most `COMPACT_PER_APPLY` events per call, in the same
  transaction (so in the worker thread the driver already uses, never on the
  trio thread, and never visible half-done).  `compact_events` does it at
  once (blocking).  Apply listeners are called after each committed
  `apply`, from the applying thread: they must only hand the news over
  (e.g. `TrioToken.run_sync_soon`), never block.

The store calls block (LMDB commit); a trio driver runs `apply` through
`trio.to_thread.run_sync` and never holds a view across an await.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from coord.kv import sessions
from coord.kv.codec import CodecError
from coord.kv.commands import (
    Body,
    Cas,
    ClientRequest,
    Command,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    EndSession,
    ExtCommand,
    Get,
    KeepAlive,
    LeaderCommand,
    Put,
    PutRequest,
    Query,
    Range,
    RegisterClient,
    Txn,
    TxnOp,
    decode_put_request,
    decode_record,
)
from coord.kv.events import (
    COMPACT_PER_APPLY,
    DEFAULT_MAX_SCAN,
    EventRecorder,
    WatchBatch,
    WatchCompacted,
    compact,
    retain,
    select_events,
)
from coord.kv.results import (
    CasResult,
    DeleteResult,
    ErrorCode,
    ErrorResult,
    ExtResult,
    GetResult,
    OpResult,
    PutResult,
    RangeResult,
    Result,
    TxnResult,
)
from coord.kv.store import KVReadView, KVStore, KVWriteView
from coord.kv.types import (
    ClientId,
    EventKind,
    KeyValue,
    KVConfig,
    LogTime,
    SeqNo,
    StateDump,
    WatchEvent,
)
from coord.raft.types import Entry, EntryKind, LogIndex


class ApplyOrderError(Exception):
    """Entries were not handed over as applied_index + 1, + 2, ... (a driver bug)."""


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one applied entry, for the driver to answer the waiting client."""

    index: LogIndex
    result: Result | None  # None for NOOP/CONFIG entries
    client_id: ClientId | None = None  # whose request this was, if any
    seq: SeqNo | None = None


@dataclass(frozen=True, slots=True)
class ApplyContext:
    """What an extension knows about the entry being applied."""

    index: LogIndex
    now: LogTime  # the entry's log time (monotonic; unchanged by NOOP/CONFIG entries)
    client_id: ClientId | None = None  # the session the command runs in, if any


class Extension(Protocol):
    """A state machine that shares the KV log, sessions and transactions."""

    @property
    def space(self) -> int:
        """The `ExtCommand.space` this extension executes (>= 1, unique)."""
        ...

    def on_entry(self, view: KVWriteView, ctx: ApplyContext) -> None:
        """Called before each applied entry of any kind (e.g. to bootstrap state)."""
        ...

    def execute(self, view: KVWriteView, payload: bytes, ctx: ApplyContext) -> bytes:
        """Run one command; return its encoded result.  Raise CodecError, before
        changing anything, for a payload that does not decode."""
        ...

    def session_ended(self, view: KVWriteView, client_id: ClientId, ctx: ApplyContext) -> None:
        """The session `client_id` is gone (expired or ended): release what it held."""
        ...

    def query(self, view: KVReadView, payload: bytes) -> bytes:
        """Answer a query from the committed state; raise CodecError if it does not decode."""
        ...


class ByteSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class SnapshotSource(Protocol):
    """A pinned state, streamed once by `write` (which closes it), or `close`d unused."""

    def write(self, out: ByteSink) -> LogIndex: ...

    def close(self) -> None: ...


@runtime_checkable
class SnapshotStore(Protocol):
    """A store that can stream its whole state out and replace it atomically."""

    def open_snapshot(self) -> SnapshotSource: ...

    def write_snapshot(self, out: ByteSink) -> LogIndex: ...

    def restore_snapshot(self, inp: BinaryIO) -> LogIndex: ...


class KVStateMachine:
    def __init__(
        self,
        store: KVStore,
        config: KVConfig | None = None,
        extensions: Sequence[Extension] = (),
    ) -> None:
        self._store = store
        self._config = (config or KVConfig()).validate()
        self._ext = {ext.space: ext for ext in extensions}
        if len(self._ext) != len(extensions) or any(space < 1 for space in self._ext):
            raise ValueError("extension spaces must be unique and >= 1")
        self.snapshot_index = LogIndex(0)  # newest snapshot known to exist (0: none)
        # called with the new applied index after each committed apply (see the docstring)
        self._apply_listeners: list[Callable[[LogIndex], None]] = []
        # events up to this index are to be compacted (by apply); up to _events_done they are
        self._events_compact_to = LogIndex(0)
        self._events_done = LogIndex(0)

    def _snapshot_store(self) -> SnapshotStore:
        if not isinstance(self._store, SnapshotStore):
            raise TypeError(f"{type(self._store).__name__} cannot take snapshots")
        return self._store

    def open_snapshot(self) -> SnapshotSource:
        """Pin the current state (one read transaction) to stream later."""
        return self._snapshot_store().open_snapshot()

    def write_snapshot(self, out: ByteSink) -> LogIndex:
        """Stream the whole state (one read transaction); the applied index it covers."""
        return self._snapshot_store().write_snapshot(out)

    def restore_snapshot(self, inp: BinaryIO) -> LogIndex:
        """Replace the whole state by a snapshot atomically; the new applied index."""
        applied = self._snapshot_store().restore_snapshot(inp)
        for listener in self._apply_listeners:  # watchers re-read (and find COMPACTED)
            listener(applied)
        return applied

    def snapshot_taken(self, index: LogIndex) -> None:
        """Hook: a snapshot at `index` exists; the log up to it may be compacted, and
        so may the watch events (the next applies drop them: see the docstring)."""
        self.snapshot_index = LogIndex(max(self.snapshot_index, index))
        self._events_compact_to = LogIndex(max(self._events_compact_to, index))

    @property
    def applied_index(self) -> LogIndex:
        return self._store.applied_index()

    def apply(
        self,
        entries: Sequence[Entry],
        announce: Callable[[Sequence[Applied]], None] | None = None,
    ) -> list[Applied]:
        """Apply consecutive committed entries in one transaction; return their outcomes.

        `announce(outcomes)`, if given, is called with the outcomes before the
        transaction commits (and so before its fsync), so a leader can answer
        its clients while the state store syncs: the outcomes are a function of
        the committed log alone, and a crash before the commit only means the
        entries are applied again, with the same outcomes.  Nothing may read
        the store on the strength of an announcement (the driver serves reads
        only after `apply` returns)."""
        if not entries:
            return []
        out: list[Applied] = []
        with self._store.writer() as view:
            expect = view.applied_index() + 1
            for entry in entries:
                if entry.index != expect:
                    raise ApplyOrderError(f"entry {entry.index} handed over, expected {expect}")
                out.append(self._apply_entry(view, entry))
                expect += 1
            view.set_applied(entries[-1].index)
            self._compact_some_events(view)
            if announce is not None:
                announce(out)  # before the commit: see the docstring
        for listener in self._apply_listeners:  # committed: watchers may read it now
            listener(entries[-1].index)
        return out

    def _compact_some_events(self, view: KVWriteView) -> None:
        """Part of the compaction `snapshot_taken` asked for (bounded per apply)."""
        if self._events_compact_to <= self._events_done:
            return
        if compact(view, self._events_compact_to, COMPACT_PER_APPLY) < COMPACT_PER_APPLY:
            self._events_done = LogIndex(min(self._events_compact_to, view.applied_index()))

    def add_apply_listener(self, listener: Callable[[LogIndex], None]) -> None:
        """Call `listener(applied_index)` after every committed `apply` (from the
        applying thread; it must not block)."""
        self._apply_listeners.append(listener)

    def watch(
        self,
        prefix: bytes,
        from_index: LogIndex,
        max_events: int,
        max_scan: int = DEFAULT_MAX_SCAN,
    ) -> WatchBatch | WatchCompacted:
        """The committed events of keys under `prefix` from `from_index` on
        (`coord.kv.events.select_events`)."""
        with self._store.reader() as view:
            return select_events(view, prefix, from_index, max_events, max_scan)

    def compact_events(self, upto_index: LogIndex, batch: int = 10_000) -> LogIndex:
        """Drop the events of entries up to `upto_index` (capped at the applied
        index); a watch from at or below it gets COMPACTED.  Returns the floor.
        Blocks (one write transaction per `batch` events, so applies interleave):
        a trio caller runs it in `trio.to_thread.run_sync`."""
        if batch < 1:
            raise ValueError("batch must be >= 1")
        with self._store.writer() as view:
            dropped = compact(view, upto_index, batch)
            floor = view.events_floor()
        while dropped == batch:  # each round removes `batch` events: bounded by the log
            with self._store.writer() as view:
                dropped = view.drop_events(floor, batch)
        return floor

    def read(self, query: Query) -> GetResult | RangeResult:
        """Answer a query from the committed state (no log entry)."""
        with self._store.reader() as view:
            return _query(view, query)

    def read_ext(self, space: int, payload: bytes) -> bytes:
        """Answer an extension's query from the committed state (no log entry).
        Raises KeyError for an unknown space, CodecError for a bad payload."""
        ext = self._ext[space]
        with self._store.reader() as view:
            return ext.query(view, payload)

    def dump(self) -> StateDump:
        with self._store.reader() as view:
            return view.dump()

    def _apply_entry(self, view: KVWriteView, entry: Entry) -> Applied:
        if entry.kind is not EntryKind.COMMAND:
            self._notify_entry(view, ApplyContext(entry.index, view.log_time()))
            return Applied(entry.index, None)
        put = decode_put_request(entry.data)
        if put is not None:
            return self._apply_put(view, entry.index, put)
        try:
            record = decode_record(entry.data)
        except CodecError as exc:
            self._notify_entry(view, ApplyContext(entry.index, view.log_time()))
            return Applied(entry.index, ErrorResult(ErrorCode.BAD_COMMAND, str(exc)))
        # The leader's clocks may step back across elections; log time never does.
        now = LogTime(max(view.log_time(), record.timestamp))
        view.set_log_time(now)
        ctx = ApplyContext(entry.index, now)
        self._notify_entry(view, ctx)

        def ended(cid: ClientId) -> None:
            for ext in self._ext.values():
                ext.session_ended(view, cid, ctx)

        sessions.expire_idle(view, now, self._config, ended)
        return self._apply_body(view, record.body, ctx, ended)

    def _apply_put(self, view: KVWriteView, index: LogIndex, put: PutRequest) -> Applied:
        """`_apply_entry` for a ClientRequest(Put), from its flat fields: the same
        steps in the same order (log time, extensions' hook, expiry, the session's
        at-most-once run of the put) without building the log record's values.
        Puts are nearly every write, applied on every replica: this path saves
        about 6 us of about 30 per applied Put (tools/bench_apply), and
        tests/unit/test_kv_fastpath.py checks it against the general path."""
        timestamp, cid, seq, acked, key, value = put
        now = LogTime(max(view.log_time(), timestamp))
        view.set_log_time(now)
        ctx = ApplyContext(index, now)
        self._notify_entry(view, ctx)

        def ended(cid: ClientId) -> None:
            for ext in self._ext.values():
                ext.session_ended(view, cid, ctx)

        sessions.expire_idle(view, now, self._config, ended)
        retention = self._config.event_retention

        def execute() -> Result:  # _execute(Put) without the match and the recorder
            kv = _put_record(view, index, key, value)
            view.append_event(WatchEvent(index, 0, EventKind.PUT, key, value))
            retain(view, index, retention, 1)
            return PutResult(kv.mod_revision, kv.version)

        result = sessions.run(view, cid, seq, acked, now, self._config, execute, ended)
        return Applied(index, result, cid, seq)

    def _apply_body(
        self, view: KVWriteView, body: Body, ctx: ApplyContext, ended: sessions.OnEnd
    ) -> Applied:
        index, now, config = ctx.index, ctx.now, self._config
        match body:
            case RegisterClient():
                cid = ClientId(index)
                return Applied(index, sessions.register(view, cid, now, config), cid)
            case KeepAlive():
                return Applied(
                    index, sessions.keep_alive(view, body, now, config, ended), body.client_id
                )
            case EndSession():
                return Applied(
                    index, sessions.end_session(view, body, now, config, ended), body.client_id
                )
            case LeaderCommand(command):
                return Applied(index, self._extension(view, command, ctx))
            case ClientRequest():
                in_session = ApplyContext(index, now, body.client_id)
                result = sessions.run_request(
                    view,
                    body,
                    now,
                    config,
                    lambda: self._execute(view, body.command, in_session),
                    ended,
                )
                return Applied(index, result, body.client_id, body.seq)
        raise AssertionError(f"unhandled log body {body!r}")  # decode_record admits no other

    def _notify_entry(self, view: KVWriteView, ctx: ApplyContext) -> None:
        for ext in self._ext.values():
            ext.on_entry(view, ctx)

    def _execute(self, view: KVWriteView, command: Command, ctx: ApplyContext) -> Result:
        if isinstance(command, ExtCommand):
            return self._extension(view, command, ctx)
        events = EventRecorder(view, ctx.index)
        result = _execute(view, events, ctx.index, command)
        retain(view, ctx.index, self._config.event_retention, events.count)
        return result

    def _extension(self, view: KVWriteView, command: ExtCommand, ctx: ApplyContext) -> Result:
        ext = self._ext.get(command.space)
        if ext is None:
            return ErrorResult(ErrorCode.BAD_COMMAND, f"no extension for space {command.space}")
        try:
            return ExtResult(ext.execute(view, command.payload, ctx))
        except CodecError as exc:
            return ErrorResult(ErrorCode.BAD_COMMAND, str(exc))


# --- command semantics (pure functions of the view) ------------------------------------------


def _query(view: KVReadView, query: Query) -> GetResult | RangeResult:
    match query:
        case Get(key):
            return GetResult(view.get(key))
        case Range(start, end, limit):
            kvs, more = view.range(start, end, limit)
            return RangeResult(tuple(kvs), more)


def _put_record(view: KVWriteView, index: LogIndex, key: bytes, value: bytes) -> KeyValue:
    prev = view.get(key)
    if prev is None:
        kv = KeyValue(key, value, 1, index, index)
    else:
        kv = KeyValue(key, value, prev.version + 1, prev.create_revision, index)
    view.put(kv)
    return kv


def _put(
    view: KVWriteView, events: EventRecorder, index: LogIndex, key: bytes, value: bytes
) -> KeyValue:
    kv = _put_record(view, index, key, value)
    events.put(key, value)
    return kv


def _op(view: KVWriteView, events: EventRecorder, index: LogIndex, op: TxnOp) -> OpResult:
    match op:
        case Put(key, value):
            kv = _put(view, events, index, key, value)
            return PutResult(kv.mod_revision, kv.version)
        case Delete(key):
            deleted = view.delete(key)
            if deleted:  # deleting a missing key changes nothing: no event
                events.deleted(key)
            return DeleteResult(deleted)
        case Get() | Range():
            return _query(view, op)


def _holds(view: KVReadView, cmp: Compare) -> bool:
    kv = view.get(cmp.key)
    actual: bytes | int
    if cmp.target is CompareTarget.VALUE:
        if kv is None:
            return False  # a missing key has no value to compare
        actual = kv.value
    elif cmp.target is CompareTarget.VERSION:
        actual = 0 if kv is None else kv.version
    elif cmp.target is CompareTarget.CREATE_REVISION:
        actual = 0 if kv is None else kv.create_revision
    else:
        actual = 0 if kv is None else kv.mod_revision
    operand = cmp.operand
    if isinstance(actual, bytes) != isinstance(operand, bytes):
        return False  # Compare's constructor forbids mixing types; stay total anyway
    sign = (actual > operand) - (actual < operand)  # type: ignore[operator]  # same type
    if cmp.op is CompareOp.EQ:
        return sign == 0
    if cmp.op is CompareOp.NE:
        return sign != 0
    return sign < 0 if cmp.op is CompareOp.LT else sign > 0


def _execute(
    view: KVWriteView, events: EventRecorder, index: LogIndex, command: Put | Delete | Cas | Txn
) -> Result:
    match command:
        case Put() | Delete():
            return _op(view, events, index, command)
        case Cas(key, expected, new):
            current = view.get(key)
            matches = (
                current is None
                if expected is None
                else (current is not None and current.value == expected)
            )
            if not matches:
                return CasResult(False, current)
            return CasResult(True, _put(view, events, index, key, new))
        case Txn(compares, then, otherwise):
            succeeded = all(_holds(view, c) for c in compares)
            ops = then if succeeded else otherwise
            return TxnResult(succeeded, tuple(_op(view, events, index, op) for op in ops))
