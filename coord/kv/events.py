"""The KV event log: recording changes as they are applied, and reading them back.

This is the chapter's message queue on the replicated store (docs/watch.md):
every applied KV mutation appends a `WatchEvent` to the state store in the
same transaction as the mutation, so the log is exactly as durable and as
replicated as the data, and every member holds the same events for every
index above its floor.  A watcher reads the events of a key prefix from an
index at its own pace.

Invariants:

* `EventRecorder` numbers one entry's events 0, 1, ... in execution order;
  only changes that happen produce events: a put (also a successful cas or a
  put inside a txn) and a delete of a key that existed.  A failed cas, a
  delete of a missing key, a read and a duplicate request (answered from the
  reply cache) produce none, so a watcher sees every change exactly once.
* `retain` keeps at most `retention` events (0: no bound), dropping the
  oldest; it is called once per applied entry and is a function of the state
  and the entry, so every replica drops the same events.  When it has to
  drop, it drops `retain_slack(retention)` more, so the log then grows for
  that many entries before the next drop: the old end's pages are rewritten
  once per slack entries instead of on every write.
* `select_events` never splits an entry: a batch holds every matching event
  of each entry it covers, and `next_index` is an entry boundary, so a
  watcher that resumes at `next_index` neither misses nor repeats an event.
  It scans at most about `max_scan` events per call (bounding the work of a
  call whatever the prefix), and `next_index` never goes below `from_index`.

Sans-IO: pure functions of a store view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coord.kv.codec import CodecError, as_bytes, as_int, as_list, as_opt_bytes, pack, unpack
from coord.kv.store import KVReadView, KVWriteView
from coord.kv.types import EventKind, WatchEvent
from coord.raft.types import LogIndex

#: A watch call scans at most about this many stored events (a whole entry more at worst).
DEFAULT_MAX_SCAN = 4_096
#: Events a snapshot's compaction drops per apply call (bounds the apply's extra work).
COMPACT_PER_APPLY = 4_096
#: Surplus events dropped per entry beyond what the entry added, so lowering the
#: retention bound shrinks the log over the following entries without one long apply.
RETAIN_CATCH_UP = 64
#: Extra events a retention drop removes (at most this, and at most 1/16 of the bound):
#: one drop of ~257 events costs far less than 257 drops of one (a cursor walk and the
#: old end's B-tree path per drop), about 2 us of CPU and 2-3 dirty pages per write.
RETAIN_SLACK = 256


def retain_slack(retention: int) -> int:
    """How many events below `retention` a drop goes (see the module invariants)."""
    return min(RETAIN_SLACK, retention // 16)


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Matching events from `from_index` on, and where to continue."""

    events: tuple[WatchEvent, ...]
    next_index: LogIndex  # ask for this index next; every event below it was considered
    applied: LogIndex  # the member's applied index when the batch was read


@dataclass(frozen=True, slots=True)
class WatchCompacted:
    """The events asked for are gone: every entry up to `floor` may have lost its events."""

    floor: LogIndex


class EventRecorder:
    """Appends the events of one applied entry, numbering them 0, 1, ..."""

    __slots__ = ("_index", "_view", "count")

    def __init__(self, view: KVWriteView, index: LogIndex) -> None:
        self._view = view
        self._index = index
        self.count = 0  # events recorded so far for this entry

    def put(self, key: bytes, value: bytes) -> None:
        self._record(EventKind.PUT, key, value)

    def deleted(self, key: bytes) -> None:
        self._record(EventKind.DELETE, key, None)

    def _record(self, kind: EventKind, key: bytes, value: bytes | None) -> None:
        self._view.append_event(WatchEvent(self._index, self.count, kind, key, value))
        self.count += 1


def retain(view: KVWriteView, index: LogIndex, retention: int, added: int) -> int:
    """After applying entry `index` (which added `added` events), drop the oldest
    events beyond `retention` (0: keep all); return how many.  `index`, not the
    view's applied index, bounds what may go: the applied index is only written
    at the end of a batch, and batches differ between replicas."""
    if retention == 0:
        return 0
    excess = view.event_count() - retention
    if excess <= 0:
        return 0
    return view.drop_events(
        index, min(excess, added + RETAIN_CATCH_UP) + retain_slack(retention)
    )


def compact(view: KVWriteView, upto: LogIndex, batch: int) -> int:
    """One step of compaction: raise the floor to `upto` (at most the applied index)
    and drop up to `batch` events at or below it.  Returns how many were dropped."""
    view.raise_events_floor(LogIndex(min(upto, view.applied_index())))
    return view.drop_events(view.events_floor(), batch)


def _whole_entries(
    view: KVReadView, start: LogIndex, limit: int, applied: LogIndex
) -> tuple[list[WatchEvent], LogIndex]:
    """Up to about `limit` stored events from `start` on, cut at an entry boundary,
    and the index after them (applied + 1 when they reach the end)."""
    got = view.events(start, None, limit)
    if len(got) < limit:
        return got, LogIndex(applied + 1)
    cut = got[-1].index  # the read may have stopped inside this entry: leave it out
    whole = [ev for ev in got if ev.index != cut]
    if whole:
        return whole, cut
    # one entry holds `limit` events or more: take it whole
    return view.events(cut, LogIndex(cut + 1), 0), LogIndex(cut + 1)


def select_events(
    view: KVReadView,
    prefix: bytes,
    from_index: LogIndex,
    max_events: int,
    max_scan: int = DEFAULT_MAX_SCAN,
) -> WatchBatch | WatchCompacted:
    """The events of keys starting with `prefix` at indexes >= from_index (see the
    module invariants).  `max_events` (>= 1) is a soft bound: whole entries only.
    Reads in chunks, so a call that fills `max_events` early decodes little more."""
    floor, applied = view.events_floor(), view.applied_index()
    if from_index <= floor:
        return WatchCompacted(floor)
    if from_index > applied:  # this member is behind the watcher: nothing to add yet
        return WatchBatch((), from_index, applied)
    out: list[WatchEvent] = []
    index, scanned = from_index, 0
    chunk = max(1, min(max_scan, 2 * max_events))
    while index <= applied and scanned < max_scan:  # each round moves index forward
        events, after = _whole_entries(view, index, min(chunk, max_scan - scanned), applied)
        scanned += len(events)
        for i, ev in enumerate(events):
            if ev.key.startswith(prefix):
                out.append(ev)
            ends_entry = i + 1 == len(events) or events[i + 1].index != ev.index
            if ends_entry and len(out) >= max_events:
                return WatchBatch(tuple(out), LogIndex(ev.index + 1), applied)
        index = after
    return WatchBatch(tuple(out), index, applied)


# --- wire form (watch replies) ----------------------------------------------------------------


def _event_to_wire(ev: WatchEvent) -> list[Any]:
    return [ev.index, ev.sub, int(ev.kind), ev.key, ev.value]


def _event_from_wire(obj: object) -> WatchEvent:
    index, sub, kind, key, value = as_list(obj, "event", 5)
    try:
        event_kind = EventKind(as_int(kind, "event kind"))
    except ValueError as exc:
        raise CodecError(f"bad event kind: {exc}") from exc
    value = as_opt_bytes(value, "event value")
    if (event_kind is EventKind.PUT) != (value is not None):
        raise CodecError("a PUT event carries a value, a DELETE event none")
    return WatchEvent(
        LogIndex(as_int(index, "event index", 1)),
        as_int(sub, "event sub"),
        event_kind,
        as_bytes(key, "event key"),
        value,
    )


def encode_events(events: tuple[WatchEvent, ...] | list[WatchEvent]) -> bytes:
    return pack([_event_to_wire(ev) for ev in events])


def decode_events(raw: bytes) -> tuple[WatchEvent, ...]:
    """Events from a watch reply; raises CodecError if they do not decode."""
    return tuple(_event_from_wire(obj) for obj in as_list(unpack(raw), "events"))
