"""The sans-IO frame codec: round trips, arbitrary chunking, every malformed class."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coord.wire import (
    BadVersion,
    FrameTooLarge,
    MalformedFrame,
    ProtocolError,
)
from coord.wire.frame import (
    HEADER_SIZE,
    NO_BUDGET,
    VERSION,
    Frame,
    FrameDecoder,
    FrameKind,
    budget_from_us,
    budget_to_us,
    encode_frame,
)


def _frame(kind: FrameKind = FrameKind.REQUEST, rid: int = 1, body: bytes = b"abc",
           budget_us: int = NO_BUDGET) -> bytes:
    return encode_frame(kind, rid, sender=9, lamport=42, budget_us=budget_us, body=body)


def _decode_all(decoder: FrameDecoder) -> list[Frame]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def test_header_carries_every_field() -> None:
    raw = _frame(FrameKind.NOTIFY, rid=77, body=b"payload", budget_us=1_500_000)
    assert raw[0] == VERSION
    assert struct.unpack_from(">I", raw, 1)[0] == len(raw) - 5
    decoder = FrameDecoder()
    decoder.feed(raw)
    frame = decoder.next_frame()
    assert frame is not None
    assert (frame.kind, frame.request_id, frame.sender, frame.lamport, frame.budget_us) == (
        FrameKind.NOTIFY, 77, 9, 42, 1_500_000
    )
    assert bytes(frame.body) == b"payload"
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


@settings(max_examples=60, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=40),
)
def test_round_trip_under_any_chunking(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(_frame(rid=i + 1, body=b) for i, b in enumerate(bodies))
    decoder = FrameDecoder()
    got: list[Frame] = []
    pos = 0
    for cut in cuts:
        decoder.feed(stream[pos : pos + cut])
        pos += cut
        got += _decode_all(decoder)
    decoder.feed(stream[pos:])
    got += _decode_all(decoder)
    assert [bytes(f.body) for f in got] == bodies
    assert [f.request_id for f in got] == list(range(1, len(bodies) + 1))
    decoder.eof()  # ended on a frame boundary: no complaint


def test_large_body_arrives_in_pieces() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    raw = _frame(body=body)
    decoder = FrameDecoder()
    decoder.feed(raw[:1000])
    assert decoder.next_frame() is None
    assert decoder.buffered == 1000
    for start in range(1000, len(raw), 65536):
        decoder.feed(raw[start : start + 65536])
    frame = decoder.next_frame()
    assert frame is not None and bytes(frame.body) == body


def test_wrong_version_is_refused() -> None:
    raw = bytearray(_frame())
    raw[0] = VERSION + 1
    decoder = FrameDecoder()
    decoder.feed(bytes(raw))
    with pytest.raises(BadVersion, match="version"):
        decoder.next_frame()


def test_oversized_frame_is_refused_from_its_prefix_alone() -> None:
    decoder = FrameDecoder(max_frame_size=4096)
    decoder.feed(struct.pack(">BI", VERSION, 1 << 30))  # only 5 bytes: a hostile length
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_frame_at_the_limit_passes_and_one_byte_more_does_not() -> None:
    limit = 4096
    ok = _frame(body=b"x" * (limit - HEADER_SIZE))
    decoder = FrameDecoder(max_frame_size=limit)
    decoder.feed(ok)
    assert decoder.next_frame() is not None
    decoder = FrameDecoder(max_frame_size=limit)
    decoder.feed(_frame(body=b"x" * (limit - HEADER_SIZE + 1)))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_length_shorter_than_header_is_malformed() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">BI", VERSION, 3) + b"abc")
    with pytest.raises(MalformedFrame, match="shorter"):
        decoder.next_frame()


def test_unknown_kind_and_flags_are_malformed() -> None:
    raw = bytearray(_frame())
    raw[5] = 200
    decoder = FrameDecoder()
    decoder.feed(bytes(raw))
    with pytest.raises(MalformedFrame, match="kind"):
        decoder.next_frame()
    raw = bytearray(_frame())
    raw[6] = 1
    decoder = FrameDecoder()
    decoder.feed(bytes(raw))
    with pytest.raises(MalformedFrame, match="flags"):
        decoder.next_frame()


def test_truncated_frame_is_reported_at_eof() -> None:
    raw = _frame(body=b"0123456789")
    decoder = FrameDecoder()
    decoder.feed(raw[:-3])
    assert decoder.next_frame() is None
    with pytest.raises(MalformedFrame, match="truncated"):
        decoder.eof()


def test_decoder_stays_failed_after_an_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\xff" * 10)
    with pytest.raises(ProtocolError):
        decoder.next_frame()
    decoder.feed(_frame())  # a valid frame afterwards cannot re-align the stream
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_budget_encoding() -> None:
    assert budget_to_us(None) == NO_BUDGET
    assert budget_from_us(NO_BUDGET) is None
    assert budget_to_us(-1.0) == 0
    assert budget_from_us(budget_to_us(2.5)) == 2.5
    assert budget_to_us(1e30) < NO_BUDGET  # huge budgets never turn into "no budget"


def test_header_fields_out_of_range_are_a_value_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_frame(FrameKind.REQUEST, -1, sender=0, lamport=0, budget_us=0)
