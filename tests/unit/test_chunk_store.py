"""Chunk stores: the in-memory twin and the disk store obey the same contract;
the disk store also survives restarts and crashes, detects corruption on
disk, and handles a full disk."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import native
from coord.lease import FencingToken
from fs.chunk import blocks, disk
from fs.chunk.disk import DiskChunkStore
from fs.chunk.store import (
    ChunkStore,
    CorruptBlock,
    MemoryChunkStore,
    Mutation,
    NoReplica,
    NoSpace,
    StoreError,
    check_handle,
)
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion, ServerId

B = BLOCK_SIZE
H = ChunkHandle(42)


def M(serial: int, version: int = 1, token: int = 5) -> Mutation:
    return Mutation(ChunkVersion(version), FencingToken(token), serial)


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


@pytest.fixture(params=["memory", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChunkStore]:
    s: ChunkStore = MemoryChunkStore() if request.param == "memory" else DiskChunkStore(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _expected_crcs(content: bytes) -> list[int]:
    n = blocks.block_count(len(content))
    return list(native.checksum_blocks(content + bytes(n * B - len(content)), B))


def test_write_read_with_partial_blocks_and_holes(store: ChunkStore) -> None:
    model = bytearray()

    def write(offset: int, data: bytes, serial: int) -> None:
        store.write(H, M(serial), offset, data, True)
        if len(model) < offset + len(data):
            model.extend(bytes(offset + len(data) - len(model)))
        model[offset:offset + len(data)] = data

    write(10, pattern(100), 1)
    write(3 * B + 5, pattern(2 * B, 2), 2)  # leaves blocks 1-2 as a hole
    write(B - 3, pattern(7, 3), 3)  # straddles blocks 0/1
    write(4 * B + 1, b"Z", 4)  # one byte inside block 4
    st = store.state(H)
    assert st is not None and st.length == len(model) and st.serial == 4
    assert store.read(H, 0, len(model)) == bytes(model)
    assert store.read(H, 2 * B, 10) == bytes(10)  # the hole reads zeros
    assert store.read(H, len(model) - 5, 100) == bytes(model[-5:])  # short read at the end
    assert store.read(H, len(model) + 1, 10) == b""
    assert store.verify(H) == []


def test_disk_checksums_are_per_block_of_padded_content(tmp_path: Path) -> None:
    s = DiskChunkStore(tmp_path)
    try:
        content = pattern(2 * B + 100)
        s.write(H, M(1), 0, content, True)
        s.write(H, M(2), B + 10, b"xyz", True)
        content = content[:B + 10] + b"xyz" + content[B + 13:]
        rec = s._get(H)
        assert rec is not None
        assert list(rec.crcs) == _expected_crcs(content)
    finally:
        s.close()


def test_state_records_version_token_serial(store: ChunkStore) -> None:
    store.write(H, M(1, version=2, token=9), 0, b"abc", True)
    st = store.state(H)
    assert st is not None
    assert (st.version, st.token, st.serial, st.length) == (2, 9, 1, 3)
    assert store.fences()[H] == 9
    store.set_version(H, M(1, version=4, token=11))
    st = store.state(H)
    assert st is not None and (st.version, st.length) == (4, 3)
    assert store.fences()[H] == 11


def test_truncate_then_grow_reads_zeros(store: ChunkStore) -> None:
    store.write(H, M(1), 0, pattern(3 * B), True)
    store.truncate(H, M(2), B + 17, True)
    assert store.read(H, 0, 4 * B) == pattern(3 * B)[:B + 17]
    store.write(H, M(3), 2 * B, b"tail", True)
    got = store.read(H, 0, 4 * B)
    assert got == pattern(3 * B)[:B + 17] + bytes(2 * B - B - 17) + b"tail"
    assert store.verify(H) == []
    store.truncate(H, M(4), 10 * B, True)  # never grows
    st = store.state(H)
    assert st is not None and st.length == 2 * B + 4


def test_delete_keeps_fence(store: ChunkStore) -> None:
    store.write(H, M(1, token=12), 0, b"x", True)
    assert store.delete(H)
    assert not store.delete(H)
    assert store.state(H) is None
    assert store.fences()[H] == 12
    with pytest.raises(NoReplica):
        store.read(H, 0, 1)


def test_memory_corruption_detected() -> None:
    s = MemoryChunkStore()
    s.write(H, M(1), 0, pattern(3 * B), True)
    s.corrupt(H, B + 5)
    with pytest.raises(CorruptBlock) as e:
        s.read(H, 0, 3 * B)
    assert e.value.block == 1
    assert s.read(H, 2 * B, B) == pattern(3 * B)[2 * B:]
    assert s.verify(H) == [1]


# ---- disk only --------------------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def test_flipped_byte_on_disk_fails_reads_of_that_block_only(tmp_path: Path) -> None:
    s = DiskChunkStore(tmp_path)
    try:
        s.write(H, M(1), 0, pattern(4 * B), True)
        _flip(tmp_path / "chunks" / "42.chunk", 2 * B + 99)
        with pytest.raises(CorruptBlock) as e:
            s.read(H, B, 2 * B)
        assert e.value.block == 2 and "block 2" in str(e.value)
        assert s.read(H, 0, 2 * B) == pattern(4 * B)[:2 * B]
        assert s.read(H, 3 * B, B) == pattern(4 * B)[3 * B:]
        # A partial write into the bad block must not launder it.
        with pytest.raises(CorruptBlock):
            s.write(H, M(2), 2 * B + 1, b"patch", True)
        _flip(tmp_path / "chunks" / "42.chunk", 5)
        assert s.verify(H) == [0, 2]
    finally:
        s.close()


def test_restart_keeps_versions_tokens_checksums_and_fences(tmp_path: Path) -> None:
    s = DiskChunkStore(tmp_path, ServerId(3))
    s.write(H, M(1, version=2, token=9), 0, pattern(B + 1), True)
    s.write(ChunkHandle(43), M(1, token=20), 0, b"gone", True)
    s.delete(ChunkHandle(43))
    s.close()
    s = DiskChunkStore(tmp_path, ServerId(3))
    try:
        st = s.state(H)
        assert st is not None and (st.version, st.token, st.serial, st.length) == (2, 9, 1, B + 1)
        assert s.fences() == {H: 9, ChunkHandle(43): 20}
        assert s.read(H, 0, 2 * B) == pattern(B + 1)
        _flip(tmp_path / "chunks" / "42.chunk", B)  # the checksums came back too
        with pytest.raises(CorruptBlock):
            s.read(H, B, 1)
    finally:
        s.close()
    with pytest.raises(StoreError, match="belongs to chunk server 3"):
        DiskChunkStore(tmp_path, ServerId(4))


def test_recovery_removes_orphans_and_garbage_tails(tmp_path: Path) -> None:
    s = DiskChunkStore(tmp_path)
    s.write(H, M(1), 0, b"abc", True)
    s.close()
    with (tmp_path / "chunks" / "42.chunk").open("ab") as f:
        f.write(b"garbage from an unacknowledged write")
    (tmp_path / "chunks" / "77.chunk").write_bytes(b"orphan")
    (tmp_path / "chunks" / "README").write_bytes(b"not ours")
    s = DiskChunkStore(tmp_path)
    try:
        assert (tmp_path / "chunks" / "42.chunk").stat().st_size == 3
        assert not (tmp_path / "chunks" / "77.chunk").exists()
        assert (tmp_path / "chunks" / "README").exists()
        assert s.read(H, 0, 100) == b"abc"
    finally:
        s.close()


class Crash(BaseException):
    """Stands for the process dying: no handler of the store catches it."""


def _crash_during_data_write(monkeypatch: pytest.MonkeyPatch,
                             keep: Callable[[bytes], bytes]) -> None:
    """Make the next data write put only keep(image) on disk, then 'crash'."""
    # disk.py imports diskfmt.pwrite_all under this private name so that crash
    # tests can replace the module global; mypy sees no explicit export.
    real = disk._pwrite_all  # type: ignore[attr-defined]

    def partial(fd: int, data: Any, offset: int) -> None:
        real(fd, keep(bytes(data)), offset)
        raise Crash()

    monkeypatch.setattr(disk, "_pwrite_all", partial)


def test_crash_between_index_and_data_rolls_back_unlanded_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = pattern(4 * B)
    s = DiskChunkStore(tmp_path)
    s.write(H, M(1), 0, old, True)
    # The new write covers blocks 1-3 and extends to block 5; only block 1 lands.
    _crash_during_data_write(monkeypatch, lambda image: image[:B])
    with pytest.raises(Crash):
        s.write(H, M(2), B, pattern(5 * B, 9), True)
    s.close()
    monkeypatch.undo()
    s = DiskChunkStore(tmp_path)
    try:
        st = s.state(H)
        assert st is not None and st.length == 6 * B  # a block landed: length kept
        got = s.read(H, 0, 6 * B)  # every block verifies
        assert got[:B] == old[:B]
        assert got[B:2 * B] == pattern(5 * B, 9)[:B]  # landed
        assert got[2 * B:4 * B] == old[2 * B:]  # did not land: old content back
        assert got[4 * B:] == bytes(2 * B)
        assert s.verify(H) == []
    finally:
        s.close()


def test_crash_before_any_data_restores_the_old_length(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = DiskChunkStore(tmp_path)
    s.write(H, M(1), 0, b"short", True)
    _crash_during_data_write(monkeypatch, lambda image: b"")
    with pytest.raises(Crash):
        s.write(H, M(2), 3, pattern(3 * B), True)
    s.close()
    monkeypatch.undo()
    s = DiskChunkStore(tmp_path)
    try:
        st = s.state(H)
        assert st is not None and st.length == 5
        assert s.read(H, 0, 100) == b"short"
    finally:
        s.close()


def test_torn_block_after_crash_is_detected_not_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = DiskChunkStore(tmp_path)
    s.write(H, M(1), 0, pattern(2 * B), True)
    _crash_during_data_write(monkeypatch, lambda image: image[:B // 2])  # half a block
    with pytest.raises(Crash):
        s.write(H, M(2), 0, pattern(2 * B, 5), True)
    s.close()
    monkeypatch.undo()
    s = DiskChunkStore(tmp_path)
    try:
        with pytest.raises(CorruptBlock) as e:
            s.read(H, 0, 10)
        assert e.value.block == 0
        assert s.read(H, B, B) == pattern(2 * B)[B:]  # block 1 did not land: old
    finally:
        s.close()


def test_unsynced_writes_are_recovered_block_by_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = DiskChunkStore(tmp_path)
    s.write(H, M(1), 0, pattern(2 * B), True)
    s.write(H, M(2), 0, pattern(B, 3), False)  # lands, not synced: pending kept
    _crash_during_data_write(monkeypatch, lambda image: b"")
    with pytest.raises(Crash):
        s.write(H, M(3), B, pattern(B, 4), False)
    s.close()
    monkeypatch.undo()
    s = DiskChunkStore(tmp_path)
    try:
        assert s.read(H, 0, 2 * B) == pattern(B, 3) + pattern(2 * B)[B:]
        assert s.verify(H) == []
    finally:
        s.close()


@pytest.mark.parametrize("bad", [-1, 1 << 63, True, "1", 1.0])
def test_handles_are_validated_integers(bad: Any) -> None:
    with pytest.raises(ValueError):
        check_handle(bad)


def test_file_names_come_only_from_integers(tmp_path: Path) -> None:
    s = DiskChunkStore(tmp_path / "d")
    try:
        with pytest.raises(ValueError):
            s.write(ChunkHandle(-1), M(1), 0, b"x", True)
        s.write(ChunkHandle(2**63 - 1), M(1), 0, b"x", True)
        assert [p.name for p in (tmp_path / "d" / "chunks").iterdir()] == [f"{2**63 - 1}.chunk"]
    finally:
        s.close()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs, unmounted afterwards whatever happens."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_enospc_changes_nothing_and_freed_space_is_reused(tiny_fs: Path) -> None:
    s = DiskChunkStore(tiny_fs / "data", index_reserve=1 << 20)
    try:
        written: dict[ChunkHandle, bytes] = {}
        with pytest.raises(NoSpace):
            for i in range(100):
                data = pattern(300_000, i)
                s.write(ChunkHandle(i), M(1), 0, data, True)
                written[ChunkHandle(i)] = data
        failed = ChunkHandle(len(written))
        assert s.state(failed) is None  # no replica half-created
        assert not (tiny_fs / "data" / "chunks" / f"{failed}.chunk").exists()
        last = ChunkHandle(len(written) - 1)
        with pytest.raises(NoSpace):  # growing an existing replica: unchanged
            s.write(last, M(2), 300_000, pattern(2_000_000), True)
        st = s.state(last)
        assert st is not None and st.length == 300_000 and st.serial == 1
        assert s.read(last, 0, 400_000) == written[last] and s.verify(last) == []
        # Overwriting allocated blocks still works on a full disk.
        s.write(last, M(2), 10, b"still fine", True)
        assert s.delete(ChunkHandle(0)) and s.delete(ChunkHandle(1))
        s.write(failed, M(1), 0, pattern(300_000, 99), True)
        assert s.read(failed, 0, 300_000) == pattern(300_000, 99)
        assert all(s.verify(h) == [] for h in s.states())
    finally:
        s.close()


def test_space_reports_the_file_system(tmp_path: Path) -> None:
    s = DiskChunkStore(tmp_path)
    try:
        s.write(H, M(1), 0, b"x" * 1000, True)
        sp = s.space()
        vfs = os.statvfs(tmp_path)
        assert sp.capacity == vfs.f_blocks * vfs.f_frsize
        assert 0 < sp.free <= sp.capacity and sp.used == 1000
    finally:
        s.close()
