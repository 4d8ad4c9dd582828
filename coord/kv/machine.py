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
* `read` serves Get/Range from the last committed state without touching the
  log; linearizability is the driver's job (ReadIndex or lease: wait until
  applied_index >= the read index, then call `read`).

The store calls block (LMDB commit); a trio driver runs `apply` through
`trio.to_thread.run_sync` and never holds a view across an await.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coord.kv import sessions
from coord.kv.codec import CodecError
from coord.kv.commands import (
    Cas,
    ClientRequest,
    Command,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Get,
    KeepAlive,
    Put,
    Query,
    Range,
    RegisterClient,
    Txn,
    TxnOp,
    decode_record,
)
from coord.kv.results import (
    CasResult,
    DeleteResult,
    ErrorCode,
    ErrorResult,
    GetResult,
    OpResult,
    PutResult,
    RangeResult,
    Result,
    TxnResult,
)
from coord.kv.store import KVReadView, KVStore, KVWriteView
from coord.kv.types import ClientId, KeyValue, KVConfig, LogTime, SeqNo, StateDump
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


class KVStateMachine:
    def __init__(self, store: KVStore, config: KVConfig | None = None) -> None:
        self._store = store
        self._config = (config or KVConfig()).validate()

    @property
    def applied_index(self) -> LogIndex:
        return self._store.applied_index()

    def apply(self, entries: Sequence[Entry]) -> list[Applied]:
        """Apply consecutive committed entries in one transaction; return their outcomes."""
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
        return out

    def read(self, query: Query) -> GetResult | RangeResult:
        """Answer a query from the committed state (no log entry)."""
        with self._store.reader() as view:
            return _query(view, query)

    def dump(self) -> StateDump:
        with self._store.reader() as view:
            return view.dump()

    def _apply_entry(self, view: KVWriteView, entry: Entry) -> Applied:
        if entry.kind is not EntryKind.COMMAND:
            return Applied(entry.index, None)
        try:
            record = decode_record(entry.data)
        except CodecError as exc:
            return Applied(entry.index, ErrorResult(ErrorCode.BAD_COMMAND, str(exc)))
        # The leader's clocks may step back across elections; log time never does.
        now = LogTime(max(view.log_time(), record.timestamp))
        view.set_log_time(now)
        sessions.expire_idle(view, now, self._config)
        body = record.body
        match body:
            case RegisterClient():
                cid = ClientId(entry.index)
                return Applied(entry.index, sessions.register(view, cid, now, self._config), cid)
            case KeepAlive():
                result = sessions.keep_alive(view, body, now, self._config)
                return Applied(entry.index, result, body.client_id)
            case ClientRequest():
                result = sessions.run_request(
                    view,
                    body,
                    now,
                    self._config,
                    lambda: _execute(view, entry.index, body.command),
                )
                return Applied(entry.index, result, body.client_id, body.seq)
        raise AssertionError(f"unhandled log body {body!r}")  # decode_record admits no other


# --- command semantics (pure functions of the view) ------------------------------------------


def _query(view: KVReadView, query: Query) -> GetResult | RangeResult:
    match query:
        case Get(key):
            return GetResult(view.get(key))
        case Range(start, end, limit):
            kvs, more = view.range(start, end, limit)
            return RangeResult(tuple(kvs), more)


def _put(view: KVWriteView, index: LogIndex, key: bytes, value: bytes) -> KeyValue:
    prev = view.get(key)
    if prev is None:
        kv = KeyValue(key, value, 1, index, index)
    else:
        kv = KeyValue(key, value, prev.version + 1, prev.create_revision, index)
    view.put(kv)
    return kv


def _op(view: KVWriteView, index: LogIndex, op: TxnOp) -> OpResult:
    match op:
        case Put(key, value):
            kv = _put(view, index, key, value)
            return PutResult(kv.mod_revision, kv.version)
        case Delete(key):
            return DeleteResult(view.delete(key))
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


def _execute(view: KVWriteView, index: LogIndex, command: Command) -> Result:
    match command:
        case Put() | Delete():
            return _op(view, index, command)
        case Cas(key, expected, new):
            current = view.get(key)
            matches = (
                current is None
                if expected is None
                else (current is not None and current.value == expected)
            )
            if not matches:
                return CasResult(False, current)
            return CasResult(True, _put(view, index, key, new))
        case Txn(compares, then, otherwise):
            succeeded = all(_holds(view, c) for c in compares)
            ops = then if succeeded else otherwise
            return TxnResult(succeeded, tuple(_op(view, index, op) for op in ops))
