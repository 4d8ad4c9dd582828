"""KV semantics and the apply contract, against both the in-memory twin and LMDB."""

from __future__ import annotations

import pytest

from coord.kv.commands import (
    Cas,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Get,
    Put,
    Range,
    Txn,
    encode_command,
)
from coord.kv.machine import ApplyOrderError, KVStateMachine
from coord.kv.results import (
    CasResult,
    DeleteResult,
    ErrorCode,
    ErrorResult,
    GetResult,
    PutResult,
    RangeResult,
    TxnResult,
)
from coord.kv.types import ClientId, KeyValue
from coord.raft.types import Entry, EntryKind, LogIndex, Term
from tests.unit.test_kv_support import CONFIG, Driver, StoreHarness, kv_harness

__all__ = ["kv_harness"]  # the fixture is used by name


class Client:
    """One session on a Driver; runs commands with increasing seqs."""

    def __init__(self, driver: Driver) -> None:
        self.d = driver
        self.cid: ClientId = driver.session()
        self.seq = 0

    def do(self, command: Put | Delete | Cas | Txn) -> object:
        self.seq += 1
        return self.d.run(self.d.log.request(self.cid, self.seq, command, acked=self.seq - 1))


def kv(key: bytes, value: bytes, version: int, create: int, mod: int) -> KeyValue:
    return KeyValue(key, value, version, LogIndex(create), LogIndex(mod))


@pytest.fixture
def driver(kv_harness: StoreHarness) -> Driver:
    return Driver(kv_harness.store)


# --- put / get / delete and revisions ---------------------------------------------------------


def test_put_sets_revisions_from_log_indexes_and_counts_versions(driver: Driver) -> None:
    c = Client(driver)  # the RegisterClient is entry 1
    assert c.do(Put(b"a", b"1")) == PutResult(LogIndex(2), 1)
    assert c.do(Put(b"b", b"x")) == PutResult(LogIndex(3), 1)
    assert c.do(Put(b"a", b"2")) == PutResult(LogIndex(4), 2)
    m = driver.machine
    assert m.read(Get(b"a")) == GetResult(kv(b"a", b"2", 2, 2, 4))
    assert m.read(Get(b"b")) == GetResult(kv(b"b", b"x", 1, 3, 3))
    assert m.read(Get(b"zz")) == GetResult(None)


def test_delete_removes_and_recreation_starts_a_new_life(driver: Driver) -> None:
    c = Client(driver)
    c.do(Put(b"k", b"1"))
    c.do(Put(b"k", b"2"))
    assert c.do(Delete(b"k")) == DeleteResult(True)
    assert c.do(Delete(b"k")) == DeleteResult(False)
    assert driver.machine.read(Get(b"k")) == GetResult(None)
    assert c.do(Put(b"k", b"3")) == PutResult(LogIndex(6), 1)
    assert driver.machine.read(Get(b"k")) == GetResult(kv(b"k", b"3", 1, 6, 6))


def test_cas_puts_only_on_the_expected_value(driver: Driver) -> None:
    c = Client(driver)
    created = c.do(Cas(b"k", None, b"v1"))
    assert created == CasResult(True, kv(b"k", b"v1", 1, 2, 2))
    assert c.do(Cas(b"k", None, b"v2")) == CasResult(False, kv(b"k", b"v1", 1, 2, 2))
    assert c.do(Cas(b"k", b"wrong", b"v2")) == CasResult(False, kv(b"k", b"v1", 1, 2, 2))
    assert c.do(Cas(b"k", b"v1", b"v2")) == CasResult(True, kv(b"k", b"v2", 2, 2, 5))
    assert c.do(Cas(b"missing", b"v1", b"x")) == CasResult(False, None)
    assert driver.machine.read(Get(b"missing")) == GetResult(None)


# --- range ------------------------------------------------------------------------------------


def test_range_is_ordered_half_open_and_limited(driver: Driver) -> None:
    c = Client(driver)
    for key in (b"b", b"a", b"d", b"c", b"e"):
        c.do(Put(key, key.upper()))
    read = driver.machine.read

    def keys(q: Range) -> tuple[list[bytes], bool]:
        result = read(q)
        assert isinstance(result, RangeResult)
        return [item.key for item in result.kvs], result.more

    assert keys(Range(b"")) == ([b"a", b"b", b"c", b"d", b"e"], False)
    assert keys(Range(b"b", b"d")) == ([b"b", b"c"], False)
    assert keys(Range(b"b", b"d", limit=1)) == ([b"b"], True)
    assert keys(Range(b"b", b"d", limit=2)) == ([b"b", b"c"], False)
    assert keys(Range(b"bb", None, limit=2)) == ([b"c", b"d"], True)
    assert keys(Range(b"f")) == ([], False)
    assert keys(Range(b"d", b"a")) == ([], False)
    assert keys(Range(b"", b"\xff", 10)) == ([b"a", b"b", b"c", b"d", b"e"], False)


# --- txn --------------------------------------------------------------------------------------


def test_txn_runs_then_when_every_compare_holds_else_otherwise(driver: Driver) -> None:
    c = Client(driver)
    c.do(Put(b"k", b"5"))  # index 2
    ok = Txn(
        (
            Compare(b"k", CompareTarget.VALUE, CompareOp.EQ, b"5"),
            Compare(b"k", CompareTarget.VERSION, CompareOp.LT, 2),
            Compare(b"k", CompareTarget.MOD_REVISION, CompareOp.GT, 1),
            Compare(b"k", CompareTarget.CREATE_REVISION, CompareOp.NE, 7),
        ),
        then=(Put(b"k", b"6"), Get(b"k"), Put(b"other", b"o"), Range(b"a", None, 1)),
        otherwise=(Delete(b"k"),),
    )
    res = c.do(ok)  # index 3
    assert res == TxnResult(
        True,
        (
            PutResult(LogIndex(3), 2),
            GetResult(kv(b"k", b"6", 2, 2, 3)),  # ops see the earlier ops of the same txn
            PutResult(LogIndex(3), 1),
            RangeResult((kv(b"k", b"6", 2, 2, 3),), True),
        ),
    )
    failing = Txn(
        (Compare(b"k", CompareTarget.VALUE, CompareOp.EQ, b"5"),),
        then=(Delete(b"k"),),
        otherwise=(Get(b"k"), Delete(b"other")),
    )
    assert c.do(failing) == TxnResult(
        False, (GetResult(kv(b"k", b"6", 2, 2, 3)), DeleteResult(True))
    )
    assert driver.machine.read(Get(b"k")) == GetResult(kv(b"k", b"6", 2, 2, 3))


def test_txn_compares_on_a_missing_key(driver: Driver) -> None:
    c = Client(driver)

    def holds(target: CompareTarget, op: CompareOp, operand: bytes | int) -> bool:
        res = c.do(Txn((Compare(b"none", target, op, operand),)))
        assert isinstance(res, TxnResult)
        return res.succeeded

    # A missing key has version/revisions 0 and no value: every VALUE compare fails.
    assert holds(CompareTarget.VERSION, CompareOp.EQ, 0)
    assert holds(CompareTarget.CREATE_REVISION, CompareOp.EQ, 0)
    assert not holds(CompareTarget.MOD_REVISION, CompareOp.GT, 0)
    assert not holds(CompareTarget.VALUE, CompareOp.NE, b"x")
    assert not holds(CompareTarget.VALUE, CompareOp.EQ, b"")
    assert holds(CompareTarget.VERSION, CompareOp.NE, 1)


def test_an_empty_txn_succeeds_and_does_nothing(driver: Driver) -> None:
    c = Client(driver)
    assert c.do(Txn(())) == TxnResult(True, ())


def test_value_compares_are_bytewise(driver: Driver) -> None:
    c = Client(driver)
    c.do(Put(b"k", b"b"))
    lt = Txn((Compare(b"k", CompareTarget.VALUE, CompareOp.LT, b"ba"),))
    gt = Txn((Compare(b"k", CompareTarget.VALUE, CompareOp.GT, b"a\xff"),))
    assert c.do(lt) == TxnResult(True, ())
    assert c.do(gt) == TxnResult(True, ())


# --- the apply contract -----------------------------------------------------------------------


def test_noop_and_config_entries_only_advance_the_applied_index(driver: Driver) -> None:
    before = driver.machine.dump()
    config_entry = Entry(Term(1), LogIndex(2), EntryKind.CONFIG, b"members")
    out = driver.machine.apply([driver.log.noop(), config_entry])
    assert [(a.index, a.result) for a in out] == [(1, None), (2, None)]
    after = driver.machine.dump()
    assert after.applied == 2
    assert (after.kvs, after.sessions, after.log_time) == (
        before.kvs,
        before.sessions,
        before.log_time,
    )


def test_undecodable_entries_are_applied_as_bad_command_results(driver: Driver) -> None:
    log = driver.log
    garbage = [
        log.raw(b"\xc1"),
        log.raw(b"\x93\x01\x02\x03"),
        log.raw(encode_command(Put(b"k", b"v"))),
    ]
    out = driver.machine.apply(garbage)
    for applied in out:
        assert isinstance(applied.result, ErrorResult)
        assert applied.result.code is ErrorCode.BAD_COMMAND
    assert driver.machine.applied_index == 3
    assert driver.machine.read(Get(b"k")) == GetResult(None)


def test_a_batch_is_applied_in_one_transaction_with_its_applied_index(
    kv_harness: StoreHarness,
) -> None:
    d = Driver(kv_harness.store)
    cid = d.session()
    batch = [d.log.request(cid, s, Put(b"k%d" % s, b"v"), acked=s - 1) for s in (1, 2, 3)]
    d.machine.apply(batch)
    state = d.machine.dump()
    assert state.applied == 4 and len(state.kvs) == 3
    # A batch that fails part-way (a gap after two good entries) leaves nothing behind.
    good = [d.log.request(cid, s, Put(b"x%d" % s, b"v"), acked=s - 1) for s in (4, 5)]
    gap = Entry(Term(1), LogIndex(d.log.next_index + 1), EntryKind.NOOP)
    with pytest.raises(ApplyOrderError):
        d.machine.apply([*good, gap])
    assert d.machine.dump() == state
    assert KVStateMachine(kv_harness.restart(), CONFIG).dump() == state


def test_reapplying_an_applied_index_raises_and_changes_nothing(driver: Driver) -> None:
    c = Client(driver)
    c.do(Put(b"k", b"1"))
    state = driver.machine.dump()
    old = driver.log.entries[1]
    with pytest.raises(ApplyOrderError):
        driver.machine.apply([old])
    assert driver.machine.dump() == state


def test_restart_resumes_at_applied_plus_one(kv_harness: StoreHarness) -> None:
    d = Driver(kv_harness.store)
    c = Client(d)
    c.do(Put(b"k", b"1"))
    c.do(Put(b"k", b"2"))
    state = d.machine.dump()
    restarted = KVStateMachine(kv_harness.restart(), CONFIG)
    assert restarted.applied_index == 3
    assert restarted.dump() == state
    # The driver hands over applied + 1 onwards: the next entry applies normally ...
    entry = d.log.request(c.cid, 3, Put(b"k", b"3"), acked=2)
    (applied,) = restarted.apply([entry])
    assert applied.result == PutResult(LogIndex(4), 3)
    # ... and the log's earlier entries are refused rather than applied twice.
    with pytest.raises(ApplyOrderError):
        restarted.apply(d.log.entries[1:])
    assert restarted.read(Get(b"k")) == GetResult(kv(b"k", b"3", 3, 2, 4))
