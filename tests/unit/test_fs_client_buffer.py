"""fs/client/buffer.py and layout.py: coalescing against a byte model, chunk
splitting, push parts, replica order."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fs.client.buffer import Extent, WriteBuffer, chunk_pieces
from fs.client.layout import host_of, order_replicas, parts, push_chain, spans
from fs.types import CHUNK_SIZE, ServerId

C = CHUNK_SIZE


def _model_apply(model: dict[int, int], offset: int, data: bytes) -> None:
    for k, byte in enumerate(data):
        model[offset + k] = byte


def _extents_as_bytes(extents: list[Extent]) -> dict[int, int]:
    out: dict[int, int] = {}
    for extent in extents:
        _model_apply(out, extent.start, extent.data)
    return out


def _check_shape(extents: list[Extent]) -> None:
    """Sorted, disjoint, not touching unless a chunk boundary lies between, in one chunk each."""
    for extent in extents:
        assert extent.data, "empty extent"
        assert extent.start // C == (extent.end - 1) // C, "extent crosses a chunk boundary"
    for a, b in itertools.pairwise(extents):
        assert a.end <= b.start, "extents overlap or are out of order"
        if a.end == b.start:
            assert b.start % C == 0, "touching extents inside one chunk were not merged"


# Offsets near a chunk boundary, so that splitting is exercised with small data.
_offsets = st.one_of(st.integers(0, 300), st.integers(C - 300, C + 300))
_writes = st.lists(st.tuples(_offsets, st.binary(min_size=1, max_size=200)), max_size=25)


@settings(max_examples=300, deadline=None)
@given(_writes)
def test_buffer_holds_exactly_the_last_write_of_every_byte(writes: list[tuple[int, bytes]]) -> None:
    buf = WriteBuffer()
    model: dict[int, int] = {}
    for offset, data in writes:
        buf.add(offset, data)
        _model_apply(model, offset, data)
        assert buf.size == len(model)
    assert buf.end == (max(model) + 1 if model else 0)
    extents = buf.take()
    _check_shape(extents)
    assert _extents_as_bytes(extents) == model
    assert buf.size == 0 and len(buf) == 0 and buf.take() == []


def test_sequential_writes_coalesce_into_one_extent_per_chunk() -> None:
    buf = WriteBuffer()
    block = bytes(range(256)) * 512  # 128 KiB
    offset = C - 3 * len(block)
    for _ in range(6):  # crosses into the next chunk halfway
        buf.add(offset, block)
        offset += len(block)
    assert len(buf) == 2
    first, second = buf.take()
    assert (first.start, first.end, first.index, first.chunk_offset) == (
        C - 3 * len(block), C, 0, C - 3 * len(block))
    assert (second.start, second.index, second.chunk_offset) == (C, 1, 0)
    assert first.data + second.data == block * 6


def test_overwrite_inside_and_bridging_two_extents() -> None:
    buf = WriteBuffer()
    buf.add(0, b"aaaa")
    buf.add(10, b"bbbb")
    assert len(buf) == 2
    buf.add(2, b"XXXXXXXXXX")  # overlaps the first, bridges the gap, overlaps the second
    (only,) = buf.take()
    assert (only.start, only.data) == (0, b"aaXXXXXXXXXXbb")


def test_a_write_spanning_three_chunks_is_split_at_both_boundaries() -> None:
    assert chunk_pieces(C - 5, C + 10) == [(C - 5, 5), (C, C), (2 * C, 5)]
    buf = WriteBuffer()
    buf.add(C - 5, b"z" * (C + 10))
    assert [(e.index, e.chunk_offset, len(e.data)) for e in buf.take()] == [
        (0, C - 5, 5), (1, 0, C), (2, 0, 5)]


def test_negative_offset_is_refused() -> None:
    with pytest.raises(ValueError):
        WriteBuffer().add(-1, b"x")


@given(st.integers(0, 5 * C), st.integers(0, 3 * C))
def test_spans_tile_the_range_inside_chunks(offset: int, length: int) -> None:
    out = spans(offset, length)
    pos = offset
    for span in out:
        assert span.file_offset == pos == span.index * C + span.offset
        assert span.length > 0 and span.offset + span.length <= C
        pos += span.length
    assert pos == offset + length


@given(st.integers(0, 10_000), st.integers(1, 3000))
def test_parts_tile_the_data(length: int, part: int) -> None:
    out = parts(length, part)
    assert out[0][0] == 0 and all(0 <= n <= part for _, n in out)
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(out))
    assert out[-1][0] + out[-1][1] == length


def test_parts_of_nothing_is_one_empty_part_and_zero_part_size_is_refused() -> None:
    assert parts(0, 10) == [(0, 0)]
    with pytest.raises(ValueError):
        parts(10, 0)


REPLICAS = ((ServerId(1), "10.0.0.1:7101"), (ServerId(2), "10.0.0.2:7101"),
            (ServerId(3), "10.0.0.3:7101"))


def test_replica_on_this_host_comes_first_else_placement_order() -> None:
    assert [s for s, _ in order_replicas(REPLICAS, {"10.0.0.2"})] == [2, 1, 3]
    assert [s for s, _ in order_replicas(REPLICAS, set())] == [1, 2, 3]
    assert push_chain(REPLICAS, {"10.0.0.3"}) == [
        "10.0.0.3:7101", "10.0.0.1:7101", "10.0.0.2:7101"]


def test_suspects_go_last_but_are_never_dropped() -> None:
    order = order_replicas(REPLICAS, {"10.0.0.1"}, suspects={"10.0.0.1:7101", "10.0.0.2:7101"})
    assert [s for s, _ in order] == [3, 1, 2]
    assert len(order_replicas(REPLICAS[:1], (), suspects={REPLICAS[0][1]})) == 1


def test_host_of_handles_ipv6_brackets() -> None:
    assert host_of("[::1]:7000") == "::1"
    assert host_of("node-3:7000") == "node-3"
