"""The KVStore contract (twin and LMDB): atomic write transactions, restart, views,
and replay after losing non-checkpointed commits."""

from __future__ import annotations

import shutil
from pathlib import Path

import lmdb
import msgpack
import pytest

from coord.kv.commands import Put
from coord.kv.lmdb_state import (
    DIRTY_MARKER,
    FORMAT_VERSION,
    KVStoreError,
    KVStoreFullError,
    LmdbKVStore,
)
from coord.kv.machine import KVStateMachine
from coord.kv.store import MemoryKVStore
from coord.kv.types import ClientId, KeyValue, LogTime, SeqNo, SessionRecord
from coord.raft.types import LogIndex
from tests.unit.test_kv_support import CONFIG, MAP_SIZE, Log, StoreHarness, kv_harness

__all__ = ["kv_harness"]


class Boom(Exception):
    pass


def kv(key: bytes, mod: int = 1) -> KeyValue:
    return KeyValue(key, b"v" + key, 1, LogIndex(1), LogIndex(mod))


def fill(h: StoreHarness) -> None:
    with h.store.writer() as w:
        for key in (b"a", b"b", b"c"):
            w.put(kv(key))
        w.put_session(ClientId(1), SessionRecord(LogTime(10), SeqNo(0), 2))
        w.put_reply(ClientId(1), SeqNo(1), b"r1")
        w.put_reply(ClientId(1), SeqNo(2), b"r2")
        w.set_applied(LogIndex(5))
        w.set_log_time(LogTime(10))


def test_a_write_that_raises_leaves_nothing(kv_harness: StoreHarness) -> None:
    fill(kv_harness)
    with kv_harness.store.reader() as r:
        before = r.dump()
    with pytest.raises(Boom), kv_harness.store.writer() as w:
        w.put(kv(b"a", mod=9))
        w.put(kv(b"new"))
        assert w.delete(b"b")
        w.put_session(ClientId(1), SessionRecord(LogTime(20), SeqNo(1), 1))
        w.put_session(ClientId(2), SessionRecord(LogTime(20), SeqNo(0), 0))
        w.prune_replies(ClientId(1), SeqNo(1))
        w.delete_session(ClientId(1))
        w.set_applied(LogIndex(6))
        w.set_log_time(LogTime(20))
        raise Boom
    for restart in (False, True):
        store = kv_harness.restart() if restart else kv_harness.store
        with store.reader() as r:
            assert r.dump() == before
        assert store.applied_index() == 5


def test_committed_writes_survive_a_restart(kv_harness: StoreHarness) -> None:
    fill(kv_harness)
    with kv_harness.store.reader() as r:
        before = r.dump()
    assert before.applied == 5 and len(before.kvs) == 3 and len(before.sessions) == 1
    with kv_harness.restart().reader() as r:
        assert r.dump() == before


def test_views_range_and_reply_pruning(kv_harness: StoreHarness) -> None:
    fill(kv_harness)
    with kv_harness.store.writer() as w:
        assert [x.key for x in w.range(b"a", b"c", 0)[0]] == [b"a", b"b"]
        assert w.range(b"", None, 2) == ([kv(b"a"), kv(b"b")], True)
        assert w.range(b"", None, 3) == ([kv(b"a"), kv(b"b"), kv(b"c")], False)
        assert w.reply(ClientId(1), SeqNo(2)) == b"r2"
        assert w.prune_replies(ClientId(1), SeqNo(1)) == 1
        assert w.reply(ClientId(1), SeqNo(1)) is None
        assert w.prune_replies(ClientId(2), SeqNo(9)) == 0
        assert not w.delete(b"zz")
    with kv_harness.store.reader() as r:
        assert r.dump().sessions[0][2] == ((SeqNo(2), b"r2"),)


def test_idle_sessions_are_listed_oldest_first_and_follow_updates(
    kv_harness: StoreHarness,
) -> None:
    with kv_harness.store.writer() as w:
        for cid, at in ((5, 30), (3, 10), (4, 10), (6, 50)):
            w.put_session(ClientId(cid), SessionRecord(LogTime(at), SeqNo(0), 0))
        assert w.idle_sessions(LogTime(31), 10) == [3, 4, 5]
        assert w.idle_sessions(LogTime(31), 2) == [3, 4]
        assert w.idle_sessions(LogTime(10), 10) == []
        w.put_reply(ClientId(4), SeqNo(1), b"r")
        w.delete_session(ClientId(4))
        assert w.idle_sessions(LogTime(100), 10) == [3, 5, 6]
        assert w.reply(ClientId(4), SeqNo(1)) is None
        w.delete_session(ClientId(77))  # absent: harmless


def test_the_idle_index_is_lazy_and_moves_a_stale_entry_when_it_meets_it(
    kv_harness: StoreHarness,
) -> None:
    """Activity leaves a session's index entry where it was (a lower bound); a walk
    that meets it moves it to the true last activity, so the next walk passes it."""
    with kv_harness.store.writer() as w:
        for cid, at in ((5, 30), (3, 10), (4, 10), (6, 50)):
            w.put_session(ClientId(cid), SessionRecord(LogTime(at), SeqNo(0), 0))
        w.put_session(ClientId(3), SessionRecord(LogTime(40), SeqNo(0), 0))  # activity
        assert w.session(ClientId(3)) == SessionRecord(LogTime(40), SeqNo(0), 0)
        # 3 is still indexed at 10: it uses one of the two places of this walk, and is
        # not idle before 40, so it is moved to 40
        assert w.idle_sessions(LogTime(40), 2) == [4]
        assert w.idle_sessions(LogTime(40), 2) == [4, 5]  # 3 is now behind 5
        assert w.idle_sessions(LogTime(41), 10) == [4, 5, 3]
        assert w.idle_sessions(LogTime(40), 10) == [4, 5]
        # a record whose activity goes below its index entry (no session rule does
        # that) is re-indexed at once, so it is never missed
        w.put_session(ClientId(6), SessionRecord(LogTime(1), SeqNo(0), 0))
        assert w.idle_sessions(LogTime(2), 10) == [6]


def test_checkpoint_returns_the_applied_index(kv_harness: StoreHarness) -> None:
    fill(kv_harness)
    assert kv_harness.store.checkpoint() == 5


# --- replay after losing commits that were not checkpointed (the twin models power loss) -----


def build_log() -> Log:
    log = Log()
    log.register(at=0)  # client 1
    for seq in range(1, 13):
        log.request(
            ClientId(1), seq, Put(b"k%d" % (seq % 4), b"%d" % seq), acked=max(0, seq - 2), at=seq
        )
        if seq % 5 == 0:
            log.request(ClientId(1), seq, Put(b"dup", b"x"), acked=max(0, seq - 2))  # a retry
            log.noop()
    return log


def test_replay_after_power_loss_reaches_the_same_state() -> None:
    log = build_log()
    reference = KVStateMachine(MemoryKVStore(), CONFIG)
    reference.apply(log.entries)

    store = MemoryKVStore()
    machine = KVStateMachine(store, CONFIG)
    machine.apply(log.entries[:6])
    durable = store.checkpoint()
    machine.apply(log.entries[6:11])
    machine.apply(log.entries[11:14])
    store = store.crash(power_loss=True)  # the last two commits are gone
    machine = KVStateMachine(store, CONFIG)
    assert machine.applied_index == durable == 6
    # The driver resumes from applied + 1 using the Raft log, which was not compacted
    # beyond the checkpoint.
    machine.apply(log.entries[machine.applied_index :])
    assert machine.dump() == reference.dump()


def test_a_process_crash_keeps_every_commit() -> None:
    log = build_log()
    store = MemoryKVStore()
    machine = KVStateMachine(store, CONFIG)
    machine.apply(log.entries[:9])
    before = machine.dump()
    assert KVStateMachine(store.crash(), CONFIG).dump() == before


def test_the_twin_refuses_reads_inside_a_write() -> None:
    store = MemoryKVStore()
    with pytest.raises(RuntimeError), store.writer():
        store.applied_index()
    assert store.applied_index() == 0  # and it is usable afterwards


# --- LMDB only --------------------------------------------------------------------------------


def test_lmdb_env_is_atomic_per_commit_and_durable_at_checkpoint(tmp_path: Path) -> None:
    with LmdbKVStore(tmp_path, map_size=MAP_SIZE) as store:
        env = store._env
        assert env is not None
        flags = env.flags()
        assert flags["sync"] and not flags["metasync"] and not flags["writemap"]


def test_lmdb_kv_full_map_aborts_the_batch(tmp_path: Path) -> None:
    log = Log()
    log.register()
    for seq in range(1, 11):
        log.request(ClientId(1), seq, Put(b"k%d" % seq, bytes(200_000)), acked=seq - 1)
    with LmdbKVStore(tmp_path, map_size=1 << 20) as store:
        machine = KVStateMachine(store, CONFIG)
        machine.apply(log.entries[:1])
        with pytest.raises(KVStoreFullError):
            machine.apply(log.entries[1:])
        assert machine.applied_index == 1
        machine.apply(log.entries[1:2])
        assert machine.applied_index == 2


def test_lmdb_kv_refuses_another_format(tmp_path: Path) -> None:
    LmdbKVStore(tmp_path, map_size=MAP_SIZE).close()
    env = lmdb.open(str(tmp_path), max_dbs=5, map_size=MAP_SIZE)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"format", msgpack.packb(FORMAT_VERSION + 1), db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()
    with pytest.raises(KVStoreError):
        LmdbKVStore(tmp_path, map_size=MAP_SIZE)


def test_lmdb_closed_store_refuses_use(tmp_path: Path) -> None:
    store = LmdbKVStore(tmp_path, map_size=MAP_SIZE)
    store.close()
    with pytest.raises(KVStoreError):
        store.applied_index()
    store.close()


# --- unsynced commits (sync_commits=False, what `ddfs meta` uses) ----------------------------


def test_unsynced_store_is_kept_after_a_clean_close(tmp_path: Path) -> None:
    log = build_log()
    with LmdbKVStore(tmp_path, map_size=MAP_SIZE, sync_commits=False) as store:
        env = store._env
        assert env is not None and not env.flags()["sync"]
        assert (tmp_path / DIRTY_MARKER).exists()  # before any commit can be torn
        machine = KVStateMachine(store, CONFIG)
        machine.apply(log.entries[:9])
        before = machine.dump()
    assert not (tmp_path / DIRTY_MARKER).exists()
    with LmdbKVStore(tmp_path, map_size=MAP_SIZE, sync_commits=False) as store:
        assert KVStateMachine(store, CONFIG).dump() == before


def test_unsynced_store_left_dirty_is_discarded_and_rebuilt_from_the_log(
    tmp_path: Path,
) -> None:
    log = build_log()
    reference = KVStateMachine(MemoryKVStore(), CONFIG)
    reference.apply(log.entries)
    crashed = tmp_path / "crashed"
    with LmdbKVStore(tmp_path / "live", map_size=MAP_SIZE, sync_commits=False) as store:
        KVStateMachine(store, CONFIG).apply(log.entries[:9])
        # The image a crash leaves: the files as they are while the store is open,
        # dirty marker included (nothing says whether the commits reached the disk).
        shutil.copytree(tmp_path / "live", crashed)
    with LmdbKVStore(crashed, map_size=MAP_SIZE, sync_commits=False) as store:
        machine = KVStateMachine(store, CONFIG)
        assert machine.applied_index == 0  # discarded, not trusted
        machine.apply(log.entries)  # the driver replays the Raft log
        assert machine.dump() == reference.dump()
