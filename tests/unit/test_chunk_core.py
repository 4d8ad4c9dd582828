"""Pure cores of the chunk server: block arithmetic, staging, admission (fencing,
versions, serial order), heartbeat report choice."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native
from coord.lease import FencingToken
from fs.chunk import blocks
from fs.chunk import protocol as p
from fs.chunk.heartbeat import HeartbeatAnswer, Reporter
from fs.chunk.ordering import Admit, ChunkGate, Duplicate, Reject, ReplicaState, Wait
from fs.chunk.staging import DataKey, IncompleteData, StagingBuffer
from fs.types import BLOCK_SIZE, CHUNK_SIZE, ChunkHandle, ChunkVersion, ServerId

B = BLOCK_SIZE
H = ChunkHandle(7)


def _padded_crcs(content: bytes) -> array[int]:
    n = blocks.block_count(len(content))
    return native.checksum_blocks(content + bytes(n * B - len(content)), B)


class _Model:
    """A replica as plain bytes, written through plan_write like the stores do."""

    def __init__(self) -> None:
        self.content = b""
        self.crcs: array[int] = array("I")

    def write(self, offset: int, data: bytes) -> blocks.WritePlan:
        length = len(self.content)
        old = {}
        for b in blocks.partial_blocks(length, offset, len(data)):
            old[b] = blocks.padded_block(self.content[b * B:(b + 1) * B], b, length)
        plan = blocks.plan_write(length, self.crcs, offset, data, old)
        if not data:  # an empty write changes nothing, not even the length
            return plan
        grown = self.content.ljust(offset + len(data), b"\0")
        self.content = grown[:offset] + data + grown[offset + len(data):]
        self.crcs = plan.crcs
        return plan


def test_touched_and_counts() -> None:
    assert list(blocks.touched(0, 0)) == []
    assert list(blocks.touched(0, 1)) == [0]
    assert list(blocks.touched(B - 1, 2)) == [0, 1]
    assert list(blocks.touched(B, B)) == [1]
    assert blocks.block_count(0) == 0
    assert blocks.block_count(1) == 1
    assert blocks.block_count(B + 1) == 2
    with pytest.raises(ValueError):
        blocks.check_range(CHUNK_SIZE - 1, 2)
    with pytest.raises(ValueError):
        blocks.check_range(-1, 0)


def test_partial_blocks_only_where_old_data_is() -> None:
    # Aligned whole blocks: nothing to read.
    assert blocks.partial_blocks(10 * B, B, 2 * B) == []
    # Head and tail partial inside old data.
    assert blocks.partial_blocks(10 * B, B + 5, 2 * B) == [1, 3]
    # Tail past the old length: only the head.
    assert blocks.partial_blocks(B + 10, B + 5, 2 * B) == [1]
    # Writing past the end of a replica: nothing old to merge.
    assert blocks.partial_blocks(B, 3 * B + 1, 10) == []
    # One block, both ends partial: read it once.
    assert blocks.partial_blocks(B, 5, 10) == [0]


def test_plan_write_checksums_every_block_over_zero_padded_content() -> None:
    m = _Model()
    plan = m.write(100, b"a" * 300)
    assert plan.length == 400
    assert plan.image_offset == 0
    assert plan.image == bytes(100) + b"a" * 300  # clipped at the new length
    assert m.crcs == _padded_crcs(m.content)
    plan = m.write(3 * B + 7, b"b" * (B + 3))  # leaves a hole (blocks 1, 2)
    assert m.crcs == _padded_crcs(m.content)
    assert m.crcs[1] == m.crcs[2] == blocks.ZERO_BLOCK_CRC
    assert plan.image_offset == 3 * B
    # Blocks whose checksum changed carry their old one (zero blocks before).
    assert set(plan.old_crcs) == {3, 4}
    assert all(c == blocks.ZERO_BLOCK_CRC for c in plan.old_crcs.values())
    before = array("I", m.crcs)
    plan = m.write(3 * B + 10, b"c")  # read-modify-write of block 3 only
    assert list(plan.old_crcs) == [3] and plan.old_crcs[3] == before[3]
    assert m.crcs == _padded_crcs(m.content)
    assert len(plan.image) == B


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6 * B), st.binary(min_size=0, max_size=2 * B + 3)),
                min_size=1, max_size=6))
def test_plan_write_matches_a_byte_model(writes: list[tuple[int, bytes]]) -> None:
    m = _Model()
    for offset, data in writes:
        plan = m.write(offset, data)
        assert m.crcs == _padded_crcs(m.content)
        assert plan.length == len(m.content)
        end = plan.image_offset + len(plan.image)
        assert m.content[plan.image_offset:end] == bytes(plan.image)


def test_plan_truncate() -> None:
    m = _Model()
    m.write(0, bytes(range(256)) * 1024)  # 4 blocks
    cut = 2 * B + 10
    last = blocks.padded_block(m.content[2 * B:3 * B], 2, len(m.content))
    plan = blocks.plan_truncate(len(m.content), m.crcs, cut, last)
    assert plan.length == cut
    assert plan.crcs == _padded_crcs(m.content[:cut])
    same = blocks.plan_truncate(len(m.content), m.crcs, len(m.content) + 5, None)
    assert same.length == len(m.content) and same.crcs == m.crcs
    aligned = blocks.plan_truncate(len(m.content), m.crcs, 2 * B, None)
    assert aligned.crcs == m.crcs[:2]


def test_crc_bytes_round_trip() -> None:
    crcs = array("I", [0, 1, 0xFFFFFFFF, 12345])
    raw = blocks.crcs_to_bytes(crcs)
    assert raw[:8] == b"\0\0\0\0\x01\0\0\0"  # little-endian on disk
    assert blocks.crcs_from_bytes(raw) == crcs


# ---- staging ------------------------------------------------------------------


def test_staging_parts_assemble_and_take_consumes() -> None:
    s = StagingBuffer(max_bytes=100, ttl=10)
    k = DataKey(1, 5)
    assert s.put(k, 10, b"world", now=0)
    assert s.put(k, 0, b"hello12345", now=0)
    assert s.put(k, 10, b"world", now=0)  # a retried part replaces itself
    assert s.bytes_used == 15
    assert s.take(k, now=1) == b"hello12345world"
    assert s.bytes_used == 0 and k not in s
    assert s.take(k, now=1) is None


def test_staging_gap_is_refused_and_dropped() -> None:
    s = StagingBuffer(100, 10)
    k = DataKey(1, 1)
    s.put(k, 0, b"ab", 0)
    s.put(k, 3, b"cd", 0)
    with pytest.raises(IncompleteData):
        s.take(k, 0)
    assert k not in s and s.bytes_used == 0


def test_staging_bound_and_expiry() -> None:
    s = StagingBuffer(max_bytes=10, ttl=5)
    assert s.put(DataKey(1, 1), 0, b"x" * 8, now=0)
    assert not s.put(DataKey(2, 1), 0, b"y" * 3, now=1)  # would pass the bound
    assert s.bytes_used == 8
    assert s.put(DataKey(2, 1), 0, b"y" * 3, now=5)  # the first expired meanwhile
    assert DataKey(1, 1) not in s
    assert s.take(DataKey(2, 1), now=11) is None  # expired too
    assert s.bytes_used == 0 and len(s) == 0


def test_staging_keys_are_per_origin() -> None:
    s = StagingBuffer(100, 10)
    s.put(DataKey(1, 9), 0, b"one", 0)
    s.put(DataKey(2, 9), 0, b"two", 0)
    assert s.take(DataKey(2, 9), 0) == b"two"
    assert s.take(DataKey(1, 9), 0) == b"one"


# ---- admission -----------------------------------------------------------------


def _st(version: int = 3, token: int = 10, serial: int = 4) -> ReplicaState:
    return ReplicaState(H, ChunkVersion(version), 100, FencingToken(token), serial)


def V(n: int) -> ChunkVersion:
    return ChunkVersion(n)


def T(n: int) -> FencingToken:
    return FencingToken(n)


def test_primary_assigns_next_serial_and_restarts_per_token() -> None:
    g = ChunkGate({H: T(10)})
    assert g.primary(_st(), H, V(3), T(10)) == Admit(5, V(3), T(10), False)
    assert g.primary(_st(), H, V(4), T(11)) == Admit(1, V(4), T(11), True)
    assert g.highest(H) == 11
    assert g.primary(None, ChunkHandle(8), V(1), T(2)) == Admit(1, V(1), T(2), True)


def test_stale_token_rejected_after_a_newer_one() -> None:
    g = ChunkGate()
    assert isinstance(g.primary(None, H, V(1), T(8)), Admit)
    r = g.primary(None, H, V(1), T(7))
    assert isinstance(r, Reject) and r.code == p.STALE_TOKEN
    assert isinstance(g.primary(None, H, V(1), T(8)), Admit)  # equal tokens pass
    r = g.primary(None, H, V(1), T(0))
    assert isinstance(r, Reject) and r.code == p.STALE_TOKEN  # no lease at all


def test_fences_survive_via_the_snapshot() -> None:
    g = ChunkGate({H: T(9)})  # as loaded from the store after a restart
    r = g.secondary(None, H, V(1), T(8), 1)
    assert isinstance(r, Reject) and r.code == p.STALE_TOKEN


def test_versions_lower_refused_higher_adopted() -> None:
    g = ChunkGate({H: T(10)})
    r = g.primary(_st(version=3), H, V(2), T(10))
    assert isinstance(r, Reject) and r.code == p.STALE_VERSION
    assert p.replica_version_of(r.message) == 3
    assert g.highest(H) == 10  # a refused request never raises the guard
    a = g.primary(_st(version=3), H, V(5), T(12))
    assert isinstance(a, Admit) and a.version == 5
    r2 = g.primary(_st(version=3), H, V(2), T(99))
    assert isinstance(r2, Reject) and g.highest(H) == 12


def test_secondary_serial_order() -> None:
    g = ChunkGate({H: T(10)})
    s = _st(serial=4)
    assert g.secondary(s, H, V(3), T(10), 5) == Admit(5, V(3), T(10), False)
    assert g.secondary(s, H, V(3), T(10), 7) == Wait(5)
    assert g.secondary(s, H, V(3), T(10), 3) == Duplicate(3)
    assert g.secondary(s, H, V(3), T(11), 1) == Admit(1, V(3), T(11), True)
    assert g.secondary(s, H, V(3), T(12), 2) == Wait(1)
    r = g.secondary(s, H, V(3), T(10), 0)
    assert isinstance(r, Reject) and r.code == p.BAD_ARGS


def test_one_role_per_token() -> None:
    g = ChunkGate()
    assert isinstance(g.primary(None, H, V(1), T(5)), Admit)
    r = g.secondary(None, H, V(1), T(5), 1)  # another "primary" under our token
    assert isinstance(r, Reject) and r.code == p.NOT_PRIMARY
    assert isinstance(g.secondary(None, H, V(1), T(6), 1), Admit)  # a new lease: fine
    r = g.primary(None, H, V(1), T(6))  # a client writing to a secondary
    assert isinstance(r, Reject) and r.code == p.NOT_PRIMARY
    g.forget(H)
    assert isinstance(g.primary(None, H, V(1), T(6)), Admit)


def test_read_requires_exact_version() -> None:
    assert ChunkGate.read(_st(version=3), H, V(3)) is None
    r = ChunkGate.read(_st(version=3), H, V(4))
    assert r is not None and r.code == p.STALE_VERSION
    r = ChunkGate.read(_st(version=3), H, V(2))
    assert r is not None and r.code == p.STALE_VERSION
    r = ChunkGate.read(None, H, V(1))
    assert r is not None and r.code == p.NO_CHUNK


def test_set_version_keeps_serials() -> None:
    g = ChunkGate({H: T(10)})
    a = g.set_version(_st(serial=4), H, V(6), T(11))
    assert a == Admit(4, V(6), T(11), True)


def test_error_message_parsers() -> None:
    assert p.bad_block_of("chunk 5: checksum mismatch in block 17") == 17
    assert p.bad_block_of("nothing") is None
    assert p.replica_version_of("chunk 5: replica at version 3, asked 4") == 3


# ---- heartbeat reports -----------------------------------------------------------


def _states(**versions: int) -> dict[ChunkHandle, ReplicaState]:
    out = {}
    for name, v in versions.items():
        h = ChunkHandle(int(name[1:]))
        out[h] = ReplicaState(h, ChunkVersion(v), 0, FencingToken(1), 0)
    return out


def test_reporter_full_then_deltas_against_acknowledged() -> None:
    r = Reporter(ServerId(1), "a:1", full_every=3)
    first = r.build(10, 5, _states(h1=1, h2=1))
    assert first.full and first.chunks == [(1, 1), (2, 1)]
    r.acknowledged(first, HeartbeatAnswer([]))
    delta = r.build(10, 5, _states(h1=1, h2=2, h3=1))
    assert not delta.full and delta.chunks == [(2, 2), (3, 1)]
    # Not acknowledged (the heartbeat failed): the next one is full.
    r.failed()
    again = r.build(10, 5, _states(h1=1, h2=2, h3=1))
    assert again.full
    r.acknowledged(again, HeartbeatAnswer([]))
    empty = r.build(10, 5, _states(h1=1, h2=2, h3=1))
    assert not empty.full and empty.chunks == []
    r.acknowledged(empty, HeartbeatAnswer([]))
    second = r.build(10, 5, _states(h1=1))
    assert not second.full
    r.acknowledged(second, HeartbeatAnswer([]))
    assert r.build(10, 5, _states(h1=1)).full  # every 3rd: full, delta, delta, full
    r.acknowledged(r.build(10, 5, _states(h1=1)), HeartbeatAnswer([], send_full=True))
    assert r.build(10, 5, _states(h1=1)).full  # the leader asked
