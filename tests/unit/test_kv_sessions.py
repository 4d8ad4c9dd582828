"""Client sessions in the state machine (thesis §6.3): at-most-once execution,
several outstanding requests, acknowledgement pruning, expiry by log time."""

from __future__ import annotations

import pytest

from coord.kv.client import ClientSession
from coord.kv.commands import Delete, Get, KeepAlive, Put
from coord.kv.machine import KVStateMachine
from coord.kv.results import (
    DeleteResult,
    ErrorCode,
    ErrorResult,
    GetResult,
    KeepAliveResult,
    PutResult,
    RegisterResult,
)
from coord.kv.types import ClientId, KVConfig, LogTime, SeqNo
from coord.raft.types import LogIndex
from tests.unit.test_kv_support import CONFIG, TTL, Driver, StoreHarness, kv_harness

__all__ = ["kv_harness"]


@pytest.fixture
def driver(kv_harness: StoreHarness) -> Driver:
    return Driver(kv_harness.store)


def code(result: object) -> ErrorCode | None:
    return result.code if isinstance(result, ErrorResult) else None


def test_register_gives_the_entry_index_as_client_id(driver: Driver) -> None:
    driver.run(driver.log.noop())
    applied = driver.apply(driver.log.register(at=5))
    assert applied.result == RegisterResult(ClientId(2), TTL)
    assert applied.client_id == 2
    (cid, record, replies) = driver.machine.dump().sessions[0]
    assert (cid, record.last_activity, record.acked, record.outstanding, replies) == (
        2,
        5,
        0,
        0,
        (),
    )


def test_a_duplicate_returns_the_cached_reply_and_does_not_execute_again(driver: Driver) -> None:
    log = driver.log
    cid = driver.session()
    first = driver.run(log.request(cid, 1, Put(b"k", b"v")))
    assert first == PutResult(LogIndex(2), 1)
    # The client retries seq 1 (its reply was lost): the retry is another log entry.
    again = driver.apply(log.request(cid, 1, Put(b"k", b"v")))
    assert again.result == first
    assert (again.client_id, again.seq) == (cid, 1)
    # The put happened once: version 1, revision of the first entry.
    got = driver.machine.read(Get(b"k"))
    assert isinstance(got, GetResult) and got.kv is not None
    assert (got.kv.version, got.kv.mod_revision) == (1, 2)


def test_a_duplicate_returns_the_original_reply_even_if_the_state_moved_on(
    driver: Driver,
) -> None:
    log = driver.log
    a, b = driver.session(), driver.session()
    assert driver.run(log.request(a, 1, Delete(b"k"))) == DeleteResult(False)
    driver.run(log.request(b, 1, Put(b"k", b"v")))
    # Re-executing a's delete now would delete b's key and answer True.
    assert driver.run(log.request(a, 1, Delete(b"k"))) == DeleteResult(False)
    assert driver.machine.read(Get(b"k")) != GetResult(None)


def test_several_outstanding_requests_in_any_order(driver: Driver) -> None:
    log = driver.log
    cid = driver.session()
    # Seqs 3, 1, 2 arrive out of order; each executes once, in log order.
    r3 = driver.run(log.request(cid, 3, Put(b"k", b"three")))
    r1 = driver.run(log.request(cid, 1, Put(b"k", b"one")))
    r2 = driver.run(log.request(cid, 2, Put(b"k", b"two")))
    assert [r3, r1, r2] == [PutResult(LogIndex(i), v) for i, v in ((2, 1), (3, 2), (4, 3))]
    for seq, first in ((1, r1), (2, r2), (3, r3)):
        assert driver.run(log.request(cid, seq, Put(b"k", b"again"))) == first
    got = driver.machine.read(Get(b"k"))
    assert isinstance(got, GetResult) and got.kv is not None and got.kv.value == b"two"
    (_, record, replies) = driver.machine.dump().sessions[0]
    assert record.outstanding == 3 and [s for s, _ in replies] == [1, 2, 3]


def test_acknowledged_replies_are_pruned_and_their_seqs_refused(driver: Driver) -> None:
    log = driver.log
    cid = driver.session()
    for seq in (1, 2, 3):
        driver.run(log.request(cid, seq, Put(b"k", b"%d" % seq)))
    driver.run(log.request(cid, 4, Put(b"k", b"4"), acked=2))
    (_, record, replies) = driver.machine.dump().sessions[0]
    assert record.acked == 2 and record.outstanding == 2
    assert [s for s, _ in replies] == [3, 4]
    # seq 2's reply is gone and the client said it had it: a late copy is stale, not re-run.
    late = driver.run(log.request(cid, 2, Put(b"k", b"late")))
    assert code(late) is ErrorCode.STALE_SEQUENCE
    got = driver.machine.read(Get(b"k"))
    assert isinstance(got, GetResult) and got.kv is not None and got.kv.value == b"4"
    # acked never goes backwards: a delayed request carrying an older mark changes nothing.
    driver.run(log.request(cid, 3, Put(b"k", b"dup"), acked=1))
    assert driver.machine.dump().sessions[0][1].acked == 2


def test_keep_alive_acknowledges_and_extends_the_session(driver: Driver) -> None:
    log = driver.log
    cid = driver.session(at=0)
    driver.run(log.request(cid, 1, Put(b"k", b"v"), at=10))
    assert driver.run(log.keep_alive(cid, acked=1, at=TTL)) == KeepAliveResult(LogTime(2 * TTL))
    (_, record, replies) = driver.machine.dump().sessions[0]
    assert (record.acked, record.outstanding, replies) == (1, 0, ())
    # Alive at exactly last_activity + ttl, expired one millisecond later.
    assert driver.run(log.keep_alive(cid, at=2 * TTL)) == KeepAliveResult(LogTime(3 * TTL))
    assert code(driver.run(log.keep_alive(cid, at=3 * TTL + 1))) is ErrorCode.SESSION_EXPIRED


def test_an_expired_session_is_never_executed_again(driver: Driver) -> None:
    log = driver.log
    cid = driver.session(at=0)
    first = driver.run(log.request(cid, 1, Put(b"k", b"v"), at=100))
    assert first == PutResult(LogIndex(2), 1)
    # The client falls silent; another client's entry moves log time past the TTL.
    other = driver.session(at=100 + TTL + 1)
    assert other == 3
    assert [s[0] for s in driver.machine.dump().sessions] == [3]  # collected
    # The retry of seq 1 and a new seq 2 are both refused, not executed.
    assert code(driver.run(log.request(cid, 1, Put(b"k", b"v")))) is ErrorCode.SESSION_EXPIRED
    assert code(driver.run(log.request(cid, 2, Delete(b"k")))) is ErrorCode.SESSION_EXPIRED
    got = driver.machine.read(Get(b"k"))
    assert isinstance(got, GetResult) and got.kv is not None and got.kv.mod_revision == 2


def test_expiry_on_lookup_does_not_depend_on_collection(kv_harness: StoreHarness) -> None:
    # expire_batch = 1: collection lags behind; the lookup check still expires the session.
    d = Driver(kv_harness.store, KVConfig(session_ttl_ms=TTL, expire_batch=1))
    ids = [d.session(at=0) for _ in range(3)]
    assert code(d.run(d.log.keep_alive(ids[2], at=TTL + 1))) is ErrorCode.SESSION_EXPIRED
    left = [s[0] for s in d.machine.dump().sessions]
    assert ids[2] not in left and len(left) == 1  # one collected by the batch, one by lookup


def test_idle_sessions_are_collected_a_bounded_batch_per_entry(driver: Driver) -> None:
    ids = [driver.session(at=0) for _ in range(5)]
    driver.run(driver.log.noop())  # no timestamp: no collection
    assert len(driver.machine.dump().sessions) == 5
    live = driver.session(at=TTL + 1)  # expire_batch = 2: the two oldest go
    assert [s[0] for s in driver.machine.dump().sessions] == [*ids[2:], live]
    driver.run(driver.log.keep_alive(live))
    assert [s[0] for s in driver.machine.dump().sessions] == [ids[4], live]


def test_unknown_session_is_refused(driver: Driver) -> None:
    bogus = ClientId(99)
    assert code(driver.run(driver.log.request(bogus, 1, Put(b"k", b"v")))) is (
        ErrorCode.SESSION_EXPIRED
    )
    assert code(driver.run(driver.log.keep_alive(bogus))) is ErrorCode.SESSION_EXPIRED
    assert driver.machine.read(Get(b"k")) == GetResult(None)
    assert driver.machine.dump().sessions == ()


def test_log_time_is_the_leaders_clock_made_monotonic(driver: Driver) -> None:
    log = driver.log
    cid = driver.session(at=5_000)
    # A new leader whose clock is behind stamps earlier times: log time does not go back,
    # so the session cannot be resurrected or extended into the past.
    driver.run(log.keep_alive(cid, at=4_000))
    state = driver.machine.dump()
    assert state.log_time == 5_000 and state.sessions[0][1].last_activity == 5_000
    assert code(driver.run(log.keep_alive(cid, at=100))) is None
    assert code(driver.run(log.keep_alive(cid, at=5_000 + TTL + 1))) is ErrorCode.SESSION_EXPIRED


def test_too_many_outstanding_replies_refuse_new_seqs_without_executing(driver: Driver) -> None:
    log = driver.log
    cid = driver.session()
    for seq in range(1, CONFIG.max_outstanding + 1):
        driver.run(log.request(cid, seq, Put(b"k%d" % seq, b"v")))
    over = CONFIG.max_outstanding + 1
    refused = driver.run(log.request(cid, over, Put(b"over", b"v")))
    assert code(refused) is ErrorCode.TOO_MANY_OUTSTANDING
    assert driver.machine.read(Get(b"over")) == GetResult(None)
    # Once the client acknowledges, the same seq executes (it never ran before).
    retried = driver.run(log.request(cid, over, Put(b"over", b"v"), acked=2))
    assert isinstance(retried, PutResult)
    # Cached replies are still answered while the cache is full.
    assert driver.run(log.request(cid, 3, Put(b"k3", b"new"))) == PutResult(LogIndex(4), 1)


def test_sessions_survive_restart_with_their_cached_replies(kv_harness: StoreHarness) -> None:
    d = Driver(kv_harness.store)
    cid = d.session()
    first = d.run(d.log.request(cid, 1, Put(b"k", b"v")))
    restarted = KVStateMachine(kv_harness.restart(), CONFIG)
    (again,) = restarted.apply([d.log.request(cid, 1, Put(b"k", b"v"))])
    assert again.result == first


# --- the client's half ------------------------------------------------------------------------


def test_client_session_numbers_requests_and_tracks_the_low_water_mark() -> None:
    s = ClientSession(ClientId(7))
    reqs = [s.request(Put(b"k", b"%d" % i)) for i in range(4)]
    assert [(r.client_id, r.seq, r.acked) for r in reqs] == [(7, i, 0) for i in (1, 2, 3, 4)]
    assert s.outstanding == 4
    s.completed(SeqNo(2))
    s.completed(SeqNo(3))
    assert s.acked == 0 and s.outstanding == 2
    s.completed(SeqNo(1))
    assert s.acked == 3 and s.outstanding == 1
    s.completed(SeqNo(2))  # a duplicate reply is ignored
    assert s.keep_alive() == KeepAlive(ClientId(7), SeqNo(3))
    assert s.request(Put(b"k", b"x")).acked == 3
    with pytest.raises(ValueError):
        s.completed(SeqNo(9))
