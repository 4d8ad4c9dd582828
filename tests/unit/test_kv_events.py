"""The KV event log (coord/kv/events.py) against the twin and LMDB: which mutations
record events and in what order, prefix filtering, whole-entry batches and
resumption, retention, compaction and COMPACTED, restart, replica agreement."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import lmdb
import pytest

from coord.kv.codec import CodecError, pack
from coord.kv.commands import (
    Cas,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    ExtCommand,
    Get,
    Put,
    Txn,
)
from coord.kv.events import (
    WatchBatch,
    WatchCompacted,
    decode_events,
    encode_events,
    retain_slack,
)
from coord.kv.lmdb_state import LmdbKVStore
from coord.kv.machine import ApplyContext, KVStateMachine
from coord.kv.store import KVReadView, KVStore, KVWriteView, MemoryKVStore
from coord.kv.types import ClientId, EventKind, KVConfig, WatchEvent
from coord.raft.types import LogIndex
from tests.unit.test_kv_support import CONFIG, MAP_SIZE, Driver, Log, StoreHarness, kv_harness

__all__ = ["kv_harness"]

PUT, DELETE = EventKind.PUT, EventKind.DELETE


class Client:
    """One session on a Driver; each `do` is one log entry; returns its index."""

    def __init__(self, driver: Driver) -> None:
        self.d = driver
        self.cid: ClientId = driver.session()
        self.seq = 0

    def do(self, command: Put | Delete | Cas | Txn | ExtCommand) -> LogIndex:
        self.seq += 1
        entry = self.d.log.request(self.cid, self.seq, command, acked=self.seq - 1)
        self.d.run(entry)
        return entry.index


def ev(index: int, sub: int, kind: EventKind, key: bytes, value: bytes | None = None) -> WatchEvent:
    return WatchEvent(LogIndex(index), sub, kind, key, value)


def batch(machine: KVStateMachine, prefix: bytes, start: int, **kw: int) -> WatchBatch:
    got = machine.watch(prefix, LogIndex(start), kw.pop("max_events", 1_000), **kw)
    assert isinstance(got, WatchBatch), got
    return got


def drain(machine: KVStateMachine, prefix: bytes, start: int, **kw: int) -> list[WatchEvent]:
    """Every event a watcher resuming at each next_index collects (bounded loop)."""
    out: list[WatchEvent] = []
    index = start
    for _ in range(1_000):
        got = batch(machine, prefix, index, **kw)
        assert got.next_index >= index
        out.extend(got.events)
        if got.next_index > machine.applied_index:
            return out
        index = got.next_index
    raise AssertionError("the watcher made no progress")


@pytest.fixture
def driver(kv_harness: StoreHarness) -> Driver:
    return Driver(kv_harness.store)


def test_each_change_is_one_event_in_execution_order(driver: Driver) -> None:
    c = Client(driver)
    i1 = c.do(Put(b"a", b"1"))
    i2 = c.do(Delete(b"a"))
    i3 = c.do(Cas(b"b", None, b"2"))
    i4 = c.do(Txn((), then=(Put(b"x", b"3"), Get(b"x"), Delete(b"b"), Put(b"y", b"4"))))
    assert batch(driver.machine, b"", 1).events == (
        ev(i1, 0, PUT, b"a", b"1"),
        ev(i2, 0, DELETE, b"a"),
        ev(i3, 0, PUT, b"b", b"2"),
        ev(i4, 0, PUT, b"x", b"3"),
        ev(i4, 1, DELETE, b"b"),
        ev(i4, 2, PUT, b"y", b"4"),
    )


def test_what_changes_nothing_records_nothing(driver: Driver) -> None:
    c = Client(driver)
    c.do(Put(b"k", b"v"))
    before = batch(driver.machine, b"", 1).events
    c.do(Delete(b"missing"))
    c.do(Cas(b"k", b"wrong", b"new"))  # fails
    c.do(Cas(b"new", b"x", b"y"))  # fails: no such key
    never = Compare(b"k", CompareTarget.VERSION, CompareOp.GT, 99)
    c.do(Txn((never,), then=(Put(b"k", b"t"),), otherwise=(Get(b"k"),)))
    # a retransmitted request is answered from the reply cache: no second event
    driver.run(driver.log.request(c.cid, 1, Put(b"k", b"v"), acked=0))
    assert batch(driver.machine, b"", 1).events == before


def test_the_else_branch_of_a_txn_records_its_changes(driver: Driver) -> None:
    c = Client(driver)
    never = Compare(b"k", CompareTarget.VALUE, CompareOp.EQ, b"nope")
    i = c.do(Txn((never,), then=(Put(b"t", b"1"),), otherwise=(Put(b"e", b"2"),)))
    assert batch(driver.machine, b"", 1).events == (ev(i, 0, PUT, b"e", b"2"),)


def test_a_prefix_selects_its_keys_and_next_index_passes_the_rest(driver: Driver) -> None:
    c = Client(driver)
    ia = c.do(Put(b"app/1", b"a"))
    c.do(Put(b"other", b"o"))
    ib = c.do(Txn((), then=(Put(b"ap", b"no"), Put(b"app/2", b"b"))))
    c.do(Put(b"zzz", b"z"))
    got = batch(driver.machine, b"app/", 1)
    assert got.events == (ev(ia, 0, PUT, b"app/1", b"a"), ev(ib, 1, PUT, b"app/2", b"b"))
    assert got.next_index == driver.machine.applied_index + 1
    assert batch(driver.machine, b"app/", ib + 1).events == ()


def test_a_batch_holds_whole_entries_and_resuming_repeats_nothing(driver: Driver) -> None:
    c = Client(driver)
    for n in range(6):
        c.do(Txn((), then=tuple(Put(b"k%d" % j, b"%d" % n) for j in range(3))))
    every = batch(driver.machine, b"", 1).events
    assert len(every) == 18
    first = batch(driver.machine, b"", 1, max_events=4)
    assert len(first.events) == 6  # two whole entries: max_events is a soft bound
    assert first.next_index == first.events[-1].index + 1
    for max_events in (1, 2, 5, 100):
        for max_scan in (1, 2, 3, 4, 7, 4096):
            got = drain(driver.machine, b"", 1, max_events=max_events, max_scan=max_scan)
            assert tuple(got) == every, (max_events, max_scan)


def test_a_scan_bound_inside_one_big_entry_still_returns_that_entry(driver: Driver) -> None:
    c = Client(driver)
    i = c.do(Txn((), then=tuple(Put(b"k%02d" % j, b"v") for j in range(10))))
    got = batch(driver.machine, b"k", i, max_scan=3)
    assert [e.sub for e in got.events] == list(range(10))
    assert got.next_index == i + 1


def test_a_watcher_ahead_of_this_member_gets_nothing_and_keeps_its_index(
    driver: Driver,
) -> None:
    Client(driver).do(Put(b"a", b"1"))
    ahead = driver.machine.applied_index + 5
    got = batch(driver.machine, b"", ahead)
    assert (got.events, got.next_index) == ((), ahead)


def event_log(store: KVStore) -> tuple[LogIndex, list[WatchEvent]]:
    """The floor and every stored event."""
    with store.reader() as view:
        return view.events_floor(), view.events(LogIndex(0), None, 0)


def test_compaction_drops_events_and_older_indexes_get_compacted(
    kv_harness: StoreHarness,
) -> None:
    driver = Driver(kv_harness.store)
    c = Client(driver)
    idx = [c.do(Put(b"k%d" % n, b"v")) for n in range(5)]
    floor = driver.machine.compact_events(idx[2], batch=1)  # several rounds of one event
    assert floor == idx[2]
    for start in (1, idx[0], idx[2]):
        assert driver.machine.watch(b"", LogIndex(start), 10) == WatchCompacted(idx[2])
    assert [e.index for e in batch(driver.machine, b"", idx[2] + 1).events] == idx[3:]
    assert driver.machine.compact_events(idx[0]) == idx[2]  # the floor never goes back
    floor, events = event_log(kv_harness.store)
    assert floor == idx[2] and [e.index for e in events] == idx[3:]


def test_compaction_stops_at_the_applied_index(driver: Driver) -> None:
    c = Client(driver)
    c.do(Put(b"k", b"v"))
    applied = driver.machine.applied_index
    assert driver.machine.compact_events(LogIndex(applied + 100)) == applied
    c.do(Put(b"k", b"w"))
    assert len(batch(driver.machine, b"", applied + 1).events) == 1


def test_retention_keeps_the_newest_events(kv_harness: StoreHarness) -> None:
    d = Driver(kv_harness.store, replace(CONFIG, event_retention=4))
    c = Client(d)
    idx = [c.do(Put(b"k%d" % n, b"v")) for n in range(7)]
    i_txn = c.do(Txn((), then=(Put(b"t1", b"a"), Put(b"t2", b"b"))))
    floor, events = event_log(kv_harness.store)
    assert [(e.index, e.sub) for e in events] == [
        (idx[5], 0), (idx[6], 0), (i_txn, 0), (i_txn, 1)]
    assert floor == idx[4]
    assert d.machine.watch(b"", LogIndex(1), 10) == WatchCompacted(idx[4])
    assert len(batch(d.machine, b"", idx[4] + 1).events) == 4


def test_replicas_agree_on_the_log_whatever_their_batches(tmp_path: Path) -> None:
    config = replace(CONFIG, event_retention=5)
    log = Log()
    twin = MemoryKVStore()
    one = KVStateMachine(twin, config)
    one.apply([log.register()])
    cid = ClientId(1)
    entries = [log.request(cid, n + 1, Txn((), then=(Put(b"a%d" % n, b"x"), Delete(b"a0"))),
                           acked=n) for n in range(9)]
    for e in entries:
        one.apply([e])
    with LmdbKVStore(tmp_path / "kv", map_size=MAP_SIZE) as store:
        other = KVStateMachine(store, config)
        other.apply(log.entries[:1])
        other.apply(entries[:4])
        other.apply(entries[4:])
        assert other.dump() == one.dump()
        assert event_log(store) == event_log(twin)
        assert len(event_log(twin)[1]) == 5


def test_the_log_survives_a_restart(kv_harness: StoreHarness) -> None:
    d = Driver(kv_harness.store)
    c = Client(d)
    c.do(Put(b"a", b"1"))
    c.do(Put(b"b", b"2"))
    d.machine.compact_events(LogIndex(c.do(Put(b"c", b"3")) - 1))
    before = event_log(kv_harness.store)
    assert before[0] > 0 and len(before[1]) == 1
    assert event_log(kv_harness.restart()) == before


class _TableExt:
    """An extension that writes a table: the file system's kind of command."""

    space = 1

    def on_entry(self, view: KVWriteView, ctx: ApplyContext) -> None:
        return None

    def execute(self, view: KVWriteView, payload: bytes, ctx: ApplyContext) -> bytes:
        view.table("t").put(payload, b"x")
        return b"ok"

    def session_ended(self, view: KVWriteView, client_id: ClientId, ctx: ApplyContext) -> None:
        return None

    def query(self, view: KVReadView, payload: bytes) -> bytes:
        return b""


def test_extension_commands_record_no_events() -> None:
    d = Driver(MemoryKVStore(tables=["t"]))
    d.machine = KVStateMachine(MemoryKVStore(tables=["t"]), CONFIG, [_TableExt()])
    c = Client(d)
    c.do(ExtCommand(1, b"file"))
    i = c.do(Put(b"k", b"v"))
    assert d.machine.dump().tables == (("t", ((b"file", b"x"),)),)
    assert batch(d.machine, b"", 1).events == (ev(i, 0, PUT, b"k", b"v"),)


def test_apply_listeners_hear_of_each_committed_apply(driver: Driver) -> None:
    heard: list[tuple[LogIndex, int]] = []

    def listener(index: LogIndex) -> None:  # the state is committed when we are called
        heard.append((index, driver.machine.applied_index))

    driver.machine.add_apply_listener(listener)
    c = Client(driver)
    i = c.do(Put(b"k", b"v"))
    assert heard[-1] == (i, i)


def test_a_write_that_fails_records_no_event(kv_harness: StoreHarness) -> None:
    with pytest.raises(RuntimeError), kv_harness.store.writer() as w:
        w.append_event(ev(1, 0, PUT, b"k", b"v"))
        raise RuntimeError("abort")
    with kv_harness.store.reader() as r:
        assert (r.events(LogIndex(0), None, 0), r.event_count()) == ([], 0)


def test_events_must_be_appended_in_order(kv_harness: StoreHarness) -> None:
    with kv_harness.store.writer() as w:
        w.append_event(ev(5, 1, PUT, b"k", b"v"))
        with pytest.raises(ValueError, match="out of order"):
            w.append_event(ev(5, 0, PUT, b"k", b"v"))


def test_a_retention_drop_goes_a_slack_below_the_bound(kv_harness: StoreHarness) -> None:
    """Retention 32: slack 2, so a drop leaves 30 events and the next one comes
    three entries later; the log never holds more than 32."""
    assert retain_slack(32) == 2 and retain_slack(4) == 0
    d = Driver(kv_harness.store, replace(CONFIG, event_retention=32))
    c = Client(d)
    counts, floors = [], []
    for n in range(40):
        c.do(Put(b"k%d" % n, b"v"))
        floor, events = event_log(kv_harness.store)
        counts.append(len(events))
        floors.append(floor)
    assert counts[:32] == list(range(1, 33))
    assert counts[32:] == [30, 31, 32, 30, 31, 32, 30, 31]
    _, events = event_log(kv_harness.store)
    assert floors[-1] == events[0].index - 1  # exactly the dropped events are below it


def test_a_store_older_than_the_event_log_starts_compacted(tmp_path: Path) -> None:
    path = tmp_path / "kv"
    store = LmdbKVStore(path, map_size=MAP_SIZE)
    d = Driver(store)
    Client(d).do(Put(b"k", b"v"))
    applied = d.machine.applied_index
    store.close()
    env = lmdb.open(str(path), max_dbs=32, map_size=MAP_SIZE)
    try:  # what a store written before the event log existed looks like
        meta, events = env.open_db(b"events_meta"), env.open_db(b"events")  # no txn open yet
        with env.begin(write=True) as txn:
            txn.drop(meta, delete=False)
            txn.drop(events, delete=False)
    finally:
        env.close()
    with LmdbKVStore(path, map_size=MAP_SIZE) as reopened:
        machine = KVStateMachine(reopened, CONFIG)
        assert machine.watch(b"", LogIndex(1), 10) == WatchCompacted(applied)


def test_events_round_trip_the_wire_and_bad_ones_are_refused() -> None:
    events = (ev(3, 0, PUT, b"k", b""), ev(3, 1, DELETE, b"\xff"))
    assert decode_events(encode_events(events)) == events
    for bad in ([[3, 0, 1, b"k", None]], [[3, 0, 2, b"k", b"v"]], [[3, 0, 9, b"k", b"v"]],
                [[0, 0, 1, b"k", b"v"]], [[3, 0, 1, b"k"]], {"a": 1}):
        with pytest.raises(CodecError):
            decode_events(pack(bad))


def test_a_negative_retention_is_refused() -> None:
    with pytest.raises(ValueError, match="event_retention"):
        KVConfig(event_retention=-1).validate()


def test_entries_without_changes_move_next_index_past_them(driver: Driver) -> None:
    c = Client(driver)
    c.do(Put(b"a", b"1"))
    driver.run(driver.log.noop())
    start = driver.machine.applied_index
    driver.run(driver.log.keep_alive(c.cid, acked=c.seq))
    got = batch(driver.machine, b"", start)
    assert got.events == () and got.next_index == driver.machine.applied_index + 1


# --- snapshots: the event log is local, compacted behind them ---------------------------------


def _lmdb_driver(path: Path, **config: int) -> tuple[LmdbKVStore, Driver]:
    store = LmdbKVStore(path, map_size=MAP_SIZE)
    return store, Driver(store, replace(CONFIG, **config))


def test_snapshots_leave_the_event_log_out_and_a_restore_starts_it_at_their_index(
    tmp_path: Path,
) -> None:
    src, d = _lmdb_driver(tmp_path / "a")
    c = Client(d)
    idx = [c.do(Put(b"k%d" % n, b"v")) for n in range(4)]
    out = io.BytesIO()
    assert d.machine.write_snapshot(out) == idx[-1]
    d.machine.compact_events(idx[1])  # compaction is local: the snapshot bytes do not change
    again = io.BytesIO()
    d.machine.write_snapshot(again)
    assert again.getvalue() == out.getvalue()
    dst, other = _lmdb_driver(tmp_path / "b")
    Client(other).do(Put(b"old", b"x"))  # an older state with events of its own
    heard: list[LogIndex] = []
    other.machine.add_apply_listener(heard.append)  # waiting watchers must re-read
    assert other.machine.restore_snapshot(io.BytesIO(out.getvalue())) == idx[-1]
    assert heard == [idx[-1]]
    assert event_log(dst) == (idx[-1], [])
    assert other.machine.watch(b"", LogIndex(1), 10) == WatchCompacted(idx[-1])
    # the restored state carries on with the source's log, and records new events
    entry = d.log.request(c.cid, c.seq + 1, Put(b"new", b"y"), acked=c.seq)
    other.machine.apply([entry])
    assert [e.index for e in batch(other.machine, b"", idx[-1] + 1).events] == [entry.index]
    src.close()
    dst.close()


def test_snapshot_taken_makes_the_next_applies_compact_behind_it(
    kv_harness: StoreHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("coord.kv.machine.COMPACT_PER_APPLY", 2)  # several applies' work
    d = Driver(kv_harness.store)
    c = Client(d)
    idx = [c.do(Put(b"k%d" % n, b"v")) for n in range(6)]
    d.machine.snapshot_taken(idx[4])
    floor, events = event_log(kv_harness.store)
    assert (floor, len(events)) == (0, 6)  # nothing happens until the next apply
    later = c.do(Put(b"x", b"1"))  # first apply: the floor moves, two events go
    floor, events = event_log(kv_harness.store)
    assert floor == idx[4] and len(events) == 5
    assert d.machine.watch(b"", idx[4], 10) == WatchCompacted(idx[4])
    c.do(Put(b"y", b"2"))
    c.do(Put(b"z", b"3"))
    floor, events = event_log(kv_harness.store)
    assert floor == idx[4] and [e.index for e in events] == [idx[5], later, later + 1,
                                                             later + 2]
