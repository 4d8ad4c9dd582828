"""2PC log records and the two log implementations (MemoryLog, LmdbLog) against
one contract: order, atomic data writes, unsynced records lost by a crash,
format checks; the LMDB crash case kills a real process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coord.twopc.lmdb_log import LmdbLog, LogFormatError
from coord.twopc.log import MemoryLog, TwoPcLog
from coord.twopc.records import (
    BeginRecord,
    Change,
    CorruptRecord,
    DecisionRecord,
    EndRecord,
    LogRecord,
    PreparedRecord,
    decode_record,
    encode_record,
)
from coord.twopc.types import Decision, NodeName, TxId

T = TxId("t1")
NAMES = st.text(min_size=1, max_size=8).map(NodeName)
CHANGES = st.builds(Change, st.text(max_size=8), st.none() | st.binary(max_size=16))
RECORDS: st.SearchStrategy[LogRecord] = st.one_of(
    st.builds(BeginRecord, st.text().map(TxId), st.tuples(NAMES, NAMES)),
    st.builds(DecisionRecord, st.text().map(TxId), st.sampled_from(Decision)),
    st.builds(EndRecord, st.text().map(TxId)),
    st.builds(PreparedRecord, st.text().map(TxId), NAMES, st.lists(NAMES).map(tuple),
              st.lists(CHANGES).map(tuple), st.lists(CHANGES).map(tuple)),
)


@given(RECORDS)
def test_every_record_round_trips(record: LogRecord) -> None:
    assert decode_record(encode_record(record)) == record


@pytest.mark.parametrize("raw", [
    b"\xc1", msgpack.packb([99, []]), msgpack.packb([2, ["t", "maybe"]]),
    msgpack.packb([1, ["t"]]), msgpack.packb({"tag": 1}),
])
def test_garbage_is_a_corrupt_record(raw: bytes) -> None:
    with pytest.raises(CorruptRecord):
        decode_record(raw)


@pytest.fixture(params=["memory", "lmdb"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TwoPcLog]:
    impl: TwoPcLog = MemoryLog() if request.param == "memory" else LmdbLog(tmp_path / "log")
    try:
        yield impl
    finally:
        impl.close()


def test_records_come_back_in_order_with_their_data(log: TwoPcLog) -> None:
    prepared = PreparedRecord(T, NodeName("c"), (NodeName("p"),), (Change("k", None),),
                              (Change("k", b"v"),))
    log.append(prepared, prepared.redo)
    log.append(DecisionRecord(T, Decision.ABORT), prepared.undo)
    log.append(EndRecord(T), sync=False)
    assert log.records() == [prepared, DecisionRecord(T, Decision.ABORT), EndRecord(T)]
    assert log.data() == {}
    log.append(DecisionRecord(TxId("t2"), Decision.COMMIT), [Change("a", b"1"), Change("b", b"2")])
    assert log.data() == {"a": b"1", "b": b"2"}


def test_memory_log_crash_keeps_only_synced_appends() -> None:
    log = MemoryLog()
    log.append(BeginRecord(T, (NodeName("p"),)))
    log.append(EndRecord(T), [Change("x", b"1")], sync=False)
    assert log.records()[-1] == EndRecord(T)
    log.crash()
    assert log.records() == [BeginRecord(T, (NodeName("p"),))] and log.data() == {}
    log.append(EndRecord(T), sync=False)
    log.flush()  # a later flush covers it
    log.crash()
    assert log.records()[-1] == EndRecord(T)


def test_lmdb_log_survives_reopen(tmp_path: Path) -> None:
    log = LmdbLog(tmp_path / "log")
    log.append(BeginRecord(T, (NodeName("p"),)), [Change("k", b"v")])
    log.close()
    again = LmdbLog(tmp_path / "log")
    try:
        assert again.records() == [BeginRecord(T, (NodeName("p"),))]
        assert again.data() == {"k": b"v"}
        again.append(EndRecord(T))  # appends continue after the old ones
        assert again.records()[-1] == EndRecord(T)
    finally:
        again.close()


_KILLED_WRITER = """
import os, sys
from pathlib import Path
from coord.twopc.lmdb_log import LmdbLog
from coord.twopc.records import BeginRecord, EndRecord
log = LmdbLog(Path(sys.argv[1]))
log.append(BeginRecord("t1", ("p",)))
log.append(EndRecord("t1"), sync=False)
os._exit(9)  # dies without close(): the unsynced END was never written
"""


def test_lmdb_log_loses_unsynced_appends_when_the_process_dies(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "log")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 9, out.stderr
    log = LmdbLog(tmp_path / "log")
    try:
        assert log.records() == [BeginRecord(T, (NodeName("p"),))]
    finally:
        log.close()


def test_lmdb_log_refuses_another_format(tmp_path: Path) -> None:
    import lmdb

    env = lmdb.open(str(tmp_path / "log"), max_dbs=3)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"format", (7).to_bytes(8, "big"), db=meta)
    env.close()
    with pytest.raises(LogFormatError):
        LmdbLog(tmp_path / "log")
