"""The KV hot paths agree with the general codec: the client's direct encoding
(`request_wire`, `query_wire`), the leader's shape check (`is_plain_request`),
its byte splice (`stamp_encoded`) and `encode_result`'s shortcuts.  A fast
path that accepted something the general decoder refuses, or produced a
different record, would let the leader propose what the replicas then reject
or read differently."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from coord.kv.codec import CodecError
from coord.kv.commands import (
    Body,
    ClientRequest,
    Command,
    Delete,
    LogRecord,
    Put,
    Query,
    decode_body,
    decode_record,
    encode_body,
    encode_query,
    is_plain_request,
    query_wire,
    request_wire,
    stamp,
    stamp_encoded,
)
from coord.kv.results import Result, _to_wire, encode_result
from coord.kv.types import MAX_KEY_BYTES, ClientId, LogTime, SeqNo
from tests.unit.test_kv_codec import _shapes, bodies, commands, ids, ints, queries, results

_now_ms = st.integers(0, 2**64 - 1) | st.just(1_764_000_000_000)


@given(ids, st.integers(1, 2**40), ints, commands)
def test_request_wire_packs_to_encode_body(cid: int, seq: int, acked: int,
                                          command: Command) -> None:
    req = ClientRequest(ClientId(cid), SeqNo(seq), SeqNo(acked), command)
    wire = request_wire(req.client_id, req.seq, req.acked, req.command)
    assert msgpack.Packer(use_bin_type=True).pack(wire) == encode_body(req)


@given(queries)
def test_query_wire_packs_to_encode_query(query: Query) -> None:
    assert msgpack.packb(query_wire(query), use_bin_type=True) == encode_query(query)


def _decoded_plain(raw: bytes) -> bool:
    """The general decoder's verdict: a valid session put or delete."""
    try:
        body = decode_body(raw)
    except CodecError:
        return False
    return isinstance(body, ClientRequest) and isinstance(body.command, Put | Delete)


@settings(max_examples=300)
@given(bodies)
def test_plain_request_check_agrees_with_decode_body_on_valid_bodies(body: Body) -> None:
    raw = encode_body(body)
    assert is_plain_request(raw) == _decoded_plain(raw)


_plainish = st.builds(
    lambda tag, cid, seq, acked, op, key, rest: [tag, cid, seq, acked, [op, key, *rest]],
    st.sampled_from([18, 17, True, 18.0]),
    st.sampled_from([0, 1, 7, -1, True, b"1"]),
    st.sampled_from([0, 1, 2, True]),
    st.sampled_from([0, 3, -1, False, None]),
    st.sampled_from([1, 2, 5, 7, True, False, 1.0]),
    st.sampled_from([b"", b"k", b"k" * MAX_KEY_BYTES, b"k" * (MAX_KEY_BYTES + 1), "k", None]),
    st.lists(st.sampled_from([b"v", b"", "v", None, 1]), max_size=2),
)


@settings(max_examples=500)
@given(_plainish | _shapes)
def test_plain_request_check_agrees_with_decode_body_on_near_misses(obj: object) -> None:
    raw = msgpack.packb(obj, use_bin_type=True)
    assert is_plain_request(raw) == _decoded_plain(raw)


@settings(max_examples=200)
@given(st.binary(max_size=40))
def test_plain_request_check_refuses_garbage_like_decode_body(raw: bytes) -> None:
    assert is_plain_request(raw) == _decoded_plain(raw)


def test_trailing_bytes_are_refused_by_both() -> None:
    raw = encode_body(ClientRequest(ClientId(7), SeqNo(1), SeqNo(0), Put(b"k", b"v")))
    assert is_plain_request(raw) and _decoded_plain(raw)
    assert not is_plain_request(raw + b"\x00") and not _decoded_plain(raw + b"\x00")


@given(bodies, _now_ms)
def test_stamp_encoded_is_stamp_byte_for_byte(body: Body, now: int) -> None:
    raw = encode_body(body)
    assert stamp_encoded(raw, now) == stamp(body, now)
    assert decode_record(stamp_encoded(raw, now)) == LogRecord(LogTime(now), body)


def test_a_non_canonical_body_is_spliced_and_still_decodes_to_the_same_record() -> None:
    # uint32 where msgpack would pick a fixint: other clients may encode so
    raw = b"\x95\x12\xce\x00\x00\x00\x07\x01\x00\x93\x01\xc4\x01k\xc4\x01v"
    assert is_plain_request(raw)
    body = ClientRequest(ClientId(7), SeqNo(1), SeqNo(0), Put(b"k", b"v"))
    assert decode_body(raw) == body
    assert decode_record(stamp_encoded(raw, 10**12)) == LogRecord(LogTime(10**12), body)


@given(results)
def test_encode_result_fast_cases_match_the_general_encoding(result: Result) -> None:
    assert encode_result(result) == msgpack.packb(_to_wire(result), use_bin_type=True)
