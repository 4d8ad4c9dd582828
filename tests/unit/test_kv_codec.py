"""The KV wire forms: every value round-trips exactly, and no input bytes make the
decoders raise anything but CodecError (a bad entry must become BAD_COMMAND)."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    Get,
    KeepAlive,
    LogRecord,
    Put,
    Query,
    Range,
    RegisterClient,
    Txn,
    decode_body,
    decode_command,
    decode_query,
    decode_record,
    encode_body,
    encode_command,
    encode_query,
    encode_record,
    stamp,
)
from coord.kv.results import (
    CasResult,
    DeleteResult,
    ErrorCode,
    ErrorResult,
    GetResult,
    KeepAliveResult,
    PutResult,
    RangeResult,
    RegisterResult,
    Result,
    TxnResult,
    decode_result,
    encode_result,
)
from coord.kv.types import MAX_KEY_BYTES, ClientId, KeyValue, LogTime, SeqNo
from coord.raft.types import LogIndex

keys = st.binary(min_size=1, max_size=8) | st.sampled_from([b"a", b"b", b"\x00", b"\xff" * 9])
values = st.binary(max_size=16)
ints = st.integers(0, 2**40)


def compares() -> st.SearchStrategy[Compare]:
    def build(key: bytes, target: CompareTarget, op: CompareOp, b: bytes, n: int) -> Compare:
        return Compare(key, target, op, b if target is CompareTarget.VALUE else n)

    return st.builds(
        build, keys, st.sampled_from(CompareTarget), st.sampled_from(CompareOp), values, ints
    )


queries: st.SearchStrategy[Query] = st.builds(Get, keys) | st.builds(
    Range, st.binary(max_size=4), st.none() | keys, st.integers(0, 5)
)
txn_ops = st.builds(Put, keys, values) | st.builds(Delete, keys) | queries
commands: st.SearchStrategy[Command] = (
    st.builds(Put, keys, values)
    | st.builds(Delete, keys)
    | st.builds(Cas, keys, st.none() | values, values)
    | st.builds(
        Txn,
        st.lists(compares(), max_size=3).map(tuple),
        st.lists(txn_ops, max_size=3).map(tuple),
        st.lists(txn_ops, max_size=3).map(tuple),
    )
)
ids = st.integers(1, 2**63 - 1)
bodies: st.SearchStrategy[Body] = (
    st.just(RegisterClient())
    | st.builds(KeepAlive, ids.map(ClientId), ints.map(SeqNo))
    | st.builds(
        ClientRequest,
        ids.map(ClientId),
        st.integers(1, 2**40).map(SeqNo),
        ints.map(SeqNo),
        commands,
    )
)
revs = st.integers(1, 2**40).map(LogIndex)
kvs = st.builds(KeyValue, keys, values, st.integers(1, 99), revs, revs)
op_results = (
    st.builds(PutResult, revs, st.integers(1, 99))
    | st.builds(DeleteResult, st.booleans())
    | st.builds(GetResult, st.none() | kvs)
    | st.builds(RangeResult, st.lists(kvs, max_size=3).map(tuple), st.booleans())
)
results: st.SearchStrategy[Result] = (
    op_results
    | st.builds(CasResult, st.booleans(), st.none() | kvs)
    | st.builds(TxnResult, st.booleans(), st.lists(op_results, max_size=3).map(tuple))
    | st.builds(RegisterResult, ids.map(ClientId), st.integers(1, 10**6))
    | st.builds(KeepAliveResult, ints.map(LogTime))
    | st.builds(ErrorResult, st.sampled_from(ErrorCode), st.text(max_size=10))
)


@given(commands)
def test_commands_round_trip(command: Command) -> None:
    assert decode_command(encode_command(command)) == command


@given(queries)
def test_queries_round_trip(query: Query) -> None:
    assert decode_query(encode_query(query)) == query


@given(bodies, ints)
def test_log_records_round_trip(body: Body, now: int) -> None:
    assert decode_body(encode_body(body)) == body
    assert decode_record(stamp(body, now)) == LogRecord(LogTime(now), body)
    assert decode_record(encode_record(LogRecord(LogTime(now), body))) == LogRecord(
        LogTime(now), body
    )


@given(results)
def test_results_round_trip(result: Result) -> None:
    assert decode_result(encode_result(result)) == result


def test_the_encoding_is_compact() -> None:
    record = stamp(ClientRequest(ClientId(12), SeqNo(3), SeqNo(2), Put(b"key", b"value")), 10**12)
    assert len(record) == 29  # docs/storage.md quotes this figure


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_random_bytes_never_raise_anything_but_codec_error(raw: bytes) -> None:
    for decode in (decode_record, decode_command, decode_query, decode_body, decode_result):
        with contextlib.suppress(CodecError):
            decode(raw)


_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.binary(max_size=3) | st.text(max_size=2),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=12,
)


_TAGS = [1, 2, 3, 4, 5, 6, 16, 17, 18, *range(32, 41)]
_tagged = st.builds(
    lambda tag, rest: [tag, *rest], st.sampled_from(_TAGS), st.lists(_junk, max_size=5)
)
_shapes = _junk | _tagged | st.builds(lambda t, body: [t, body], st.integers(0, 9), _tagged)


@settings(max_examples=300)
@given(_shapes)
def test_well_formed_msgpack_of_the_wrong_shape_is_a_codec_error(obj: object) -> None:
    raw = msgpack.packb(obj, use_bin_type=True)
    for decode in (decode_record, decode_command, decode_query, decode_body, decode_result):
        with contextlib.suppress(CodecError):
            decode(raw)


@pytest.mark.parametrize(
    "raw",
    [
        msgpack.packb([1, b"", b"v"]),  # empty key
        msgpack.packb([1, b"k" * (MAX_KEY_BYTES + 1), b"v"]),  # key too long
        msgpack.packb([1, "k", b"v"]),  # key as a string
        msgpack.packb([6, b"a", None, -1]),  # negative limit
        msgpack.packb([5, b"k"]),  # a query where a command is expected
        msgpack.packb([4, [[b"k", 0, 0, 5]], [], []]),  # VALUE compare with an int
        msgpack.packb([4, [], [[4, [], [], []]], []]),  # nested txn
        msgpack.packb([1, b"k", b"v", b"extra"]),
        msgpack.packb([True, b"k"]),
    ],
)
def test_specific_malformed_commands_are_refused(raw: bytes) -> None:
    with pytest.raises(CodecError):
        decode_command(raw)


def test_bad_records_are_refused() -> None:
    with pytest.raises(CodecError):
        decode_record(msgpack.packb([-1, [16]]))  # negative time
    with pytest.raises(CodecError):
        decode_record(msgpack.packb([0, [18, 0, 1, 0, [1, b"k", b"v"]]]))  # client 0
    with pytest.raises(CodecError):
        decode_record(msgpack.packb([0, [18, 1, 0, 0, [1, b"k", b"v"]]]))  # seq 0


def test_constructors_validate_their_fields() -> None:
    with pytest.raises(ValueError):
        Put(b"", b"v")
    with pytest.raises(ValueError):
        Compare(b"k", CompareTarget.VERSION, CompareOp.EQ, b"1")
    with pytest.raises(ValueError):
        Compare(b"k", CompareTarget.VERSION, CompareOp.EQ, True)
    with pytest.raises(ValueError):
        Txn((), then=(Cas(b"k", None, b"v"),))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Range(b"a", b"", 0)
    with pytest.raises(ValueError):
        ClientRequest(ClientId(1), SeqNo(0), SeqNo(0), Put(b"k", b"v"))
