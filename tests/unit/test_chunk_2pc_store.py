"""The participant's half of the two-phase commit in the chunk stores: prepare,
commit, abort, checkpoint - the same contract in memory and on disk - and
what the disk store promises across crashes: a prepared mutation stays
prepared with its data, a committed one is redone from its staged copy (never
rolled back), staged files nobody needs are removed, a full disk fails the
prepare and changes nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coord.lease import FencingToken
from fs.chunk import disk
from fs.chunk.disk import DiskChunkStore
from fs.chunk.intent import Intent, IntentKey, IntentStatus
from fs.chunk.journal import INLINE_MAX
from fs.chunk.store import (
    ChunkStore,
    CorruptBlock,
    MemoryChunkStore,
    NoSpace,
    StoreIOError,
    position,
)
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion

B = BLOCK_SIZE
H = ChunkHandle(42)
V1 = ChunkVersion(1)


def T(n: int) -> FencingToken:
    return FencingToken(n)


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def write_intent(token: int, serial: int, offset: int, data: bytes,
                 handle: ChunkHandle = H) -> Intent:
    return Intent(handle, T(token), serial, V1, offset, len(data), False)


def key(token: int, serial: int) -> IntentKey:
    return T(token), serial


def prepare_and_commit(s: ChunkStore, token: int, serial: int, offset: int, data: bytes,
                       handle: ChunkHandle = H) -> None:
    s.prepare(handle, write_intent(token, serial, offset, data, handle), data)
    s.commit(handle, key(token, serial), T(token), V1)


def undecided(s: ChunkStore) -> list[IntentKey]:
    return [i.key for i in s.intents(H) if i.undecided]


@pytest.fixture(params=["memory", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChunkStore]:
    s: ChunkStore = MemoryChunkStore() if request.param == "memory" else DiskChunkStore(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_prepared_data_is_invisible_until_committed(store: ChunkStore) -> None:
    prepare_and_commit(store, 5, 1, 0, pattern(3 * B))
    store.prepare(H, write_intent(5, 2, B + 10, b"new"), b"new")
    assert store.read(H, 0, 3 * B) == pattern(3 * B)  # the prepared bytes are nowhere
    assert undecided(store) == [key(5, 2)]
    new = store.commit(H, key(5, 2), T(5), ChunkVersion(3))
    assert (new.version, new.token, new.serial) == (3, 5, 2)  # adopted the higher version
    want = bytearray(pattern(3 * B))
    want[B + 10:B + 13] = b"new"
    assert store.read(H, 0, 3 * B) == bytes(want) and store.verify(H) == []
    assert undecided(store) == []


def test_abort_changes_nothing_and_is_remembered_for_its_token(store: ChunkStore) -> None:
    prepare_and_commit(store, 5, 1, 0, b"kept")
    store.prepare(H, write_intent(5, 2, 0, b"gone"), b"gone")
    st = store.abort(H, key(5, 2), T(5), V1)
    assert (st.token, st.serial, st.length) == (5, 2, 4)  # decided: the serial moved on
    st = store.abort(H, key(5, 3), T(5), V1)  # never prepared here: decided all the same
    assert st.serial == 3
    assert store.read(H, 0, 10) == b"kept" and store.aborted(H) == [2, 3]
    with pytest.raises(StoreIOError):
        store.commit(H, key(5, 2), T(5), V1)  # an aborted mutation never commits
    prepare_and_commit(store, 8, 1, 0, b"next")  # a newer token forgets the markers
    store.checkpoint(H)
    assert store.aborted(H) == [] and store.intents(H) == []
    assert store.fences()[H] == 8


def test_a_replica_never_written_keeps_no_state_after_an_abort(store: ChunkStore) -> None:
    store.prepare(H, write_intent(5, 1, 0, b"first"), b"first")
    store.abort(H, key(5, 1), T(5), V1)
    assert store.state(H) is None  # nothing to read, nothing reported as data
    pos = position(store.state(H), store.intents(H))
    assert pos is not None and (pos.token, pos.serial, pos.length) == (5, 1, 0)
    prepare_and_commit(store, 5, 2, 0, b"second")
    st = store.state(H)
    assert st is not None and st.serial == 2 and store.aborted(H) == [1]


def test_a_corrupt_replica_votes_no(store: ChunkStore, tmp_path: Path) -> None:
    prepare_and_commit(store, 5, 1, 0, pattern(2 * B))
    if isinstance(store, MemoryChunkStore):
        store.corrupt(H, 5)
    else:
        with open(tmp_path / "chunks" / f"{H}.chunk", "r+b") as f:
            f.seek(5)
            f.write(b"\xff")
    with pytest.raises(CorruptBlock):  # a partial write would merge into block 0
        store.prepare(H, write_intent(5, 2, 100, b"x"), b"x")
    assert undecided(store) == []


def test_truncate_commits_through_an_intent(store: ChunkStore) -> None:
    prepare_and_commit(store, 5, 1, 0, pattern(3 * B))
    store.prepare(H, Intent(H, T(5), 2, V1, B + 7, 0, True), b"")
    assert store.read(H, 0, 3 * B) == pattern(3 * B)
    st = store.commit(H, key(5, 2), T(5), V1)
    assert st.length == B + 7 and store.read(H, 0, 3 * B) == pattern(B + 7)
    assert store.intents(H) == [] and store.verify(H) == []


def test_a_truncate_before_a_prepared_write_leaves_no_old_bytes_behind(
        store: ChunkStore) -> None:
    big = pattern(INLINE_MAX + 1, 4)
    prepare_and_commit(store, 5, 1, 0, pattern(6 * B))
    store.prepare(H, write_intent(5, 3, 4 * B, big), big)  # reserved, undecided
    store.prepare(H, Intent(H, T(5), 2, V1, B, 0, True), b"")
    store.commit(H, key(5, 2), T(5), V1)  # cut to one block: blocks 1-5 are gone
    store.commit(H, key(5, 3), T(5), V1)  # extends over blocks 1-3 again: zeros
    want = pattern(B) + bytes(3 * B) + big
    assert store.read(H, 0, 8 * B) == want and store.verify(H) == []


# ---- the disk store across crashes ------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: no handler of the store catches it."""


@pytest.mark.parametrize("size", [2 * B, 3000])  # staged / inline in the record
def test_a_prepared_mutation_survives_a_restart_with_its_data(tmp_path: Path,
                                                               size: int) -> None:
    s = DiskChunkStore(tmp_path)
    prepare_and_commit(s, 5, 1, 0, pattern(B))
    s.prepare(H, write_intent(5, 2, 10, pattern(size, 3)), pattern(size, 3))
    s.close()
    s = DiskChunkStore(tmp_path)  # a restart
    try:
        assert undecided(s) == [key(5, 2)] and s.fences()[H] == 5
        assert s.read(H, 0, B) == pattern(B)  # still invisible
        s.commit(H, key(5, 2), T(5), V1)  # the data comes from what the prepare kept
        assert s.read(H, 0, 3 * B) == pattern(10) + pattern(size, 3) + \
            pattern(B)[10 + size:]
        assert s.verify(H) == []
    finally:
        s.close()


@pytest.mark.parametrize("size", [3 * B, 5000])  # staged / inline in the record
def test_a_commit_whose_data_never_reached_the_file_is_redone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    s = DiskChunkStore(tmp_path)
    prepare_and_commit(s, 5, 1, 0, pattern(4 * B))
    s.checkpoint(H)
    new = pattern(size, 9)
    at = B // 2 + 3 * B  # over the last block, and past the end when big
    s.prepare(H, write_intent(5, 2, at, new), new)

    def dies(fd: int, data: Any, offset: int) -> None:
        os.pwrite(fd, bytes(data)[:100], offset)  # a sliver lands, then the crash
        raise Crash()

    monkeypatch.setattr(disk, "_pwrite_all", dies)
    with pytest.raises(Crash):
        s.commit(H, key(5, 2), T(5), V1)
    s.close()
    monkeypatch.undo()
    s = DiskChunkStore(tmp_path)
    try:
        st = s.state(H)
        assert st is not None and st.serial == 2  # decided: never rolled back
        want = bytearray(pattern(4 * B))
        want[at:at + size] = new
        assert s.read(H, 0, st.length) == bytes(want)
        assert s.verify(H) == [] and s.intents(H) == []  # redone, synced, forgotten
        assert list((tmp_path / "staged").iterdir()) == []
    finally:
        s.close()


def test_a_redo_zeroes_the_gap_before_a_write_past_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = DiskChunkStore(tmp_path)
    prepare_and_commit(s, 5, 1, 0, pattern(B + 100))
    s.checkpoint(H)
    with open(tmp_path / "chunks" / f"{H}.chunk", "r+b") as f:  # garbage past the end
        f.seek(B + 100)
        f.write(b"\xee" * 900)
    s.prepare(H, write_intent(5, 2, B + 1000, b"tail"), b"tail")
    monkeypatch.setattr(disk, "_pwrite_all", lambda fd, data, offset: (_ for _ in ()).throw(
        Crash()))
    with pytest.raises(Crash):
        s.commit(H, key(5, 2), T(5), V1)
    s.close()
    monkeypatch.undo()
    s = DiskChunkStore(tmp_path)
    try:
        assert s.read(H, 0, 2 * B) == pattern(B + 100) + bytes(900) + b"tail"
        assert s.verify(H) == []
    finally:
        s.close()


def test_checkpoint_forgets_applied_intents_and_their_staged_files(tmp_path: Path) -> None:
    s = DiskChunkStore(tmp_path)
    big = INLINE_MAX + 1  # a small write keeps its data in its record instead
    try:
        for serial in (1, 2, 3):
            prepare_and_commit(s, 5, serial, (serial - 1) * big, pattern(big, serial))
        prepare_and_commit(s, 5, 4, 3 * big, b"small")
        applied = [i.key for i in s.intents(H) if i.status is IntentStatus.APPLIED]
        assert applied == [key(5, 1), key(5, 2), key(5, 3), key(5, 4)]
        assert len(list((tmp_path / "staged").iterdir())) == 3
        assert s.checkpoint(H) == 4 and s.checkpoint(H) == 0
        assert s.intents(H) == [] and list((tmp_path / "staged").iterdir()) == []
        assert s.read(H, 0, 4 * big) == b"".join(pattern(big, k) for k in (1, 2, 3)) + b"small"
    finally:
        s.close()


def test_recovery_removes_staged_files_nobody_needs(tmp_path: Path) -> None:
    s = DiskChunkStore(tmp_path)
    big = pattern(INLINE_MAX + 1)
    s.prepare(H, write_intent(5, 1, 0, big), big)
    s.stage(H, key(5, 2), big)  # staged, and a crash before its record
    s.prepare(ChunkHandle(43), write_intent(5, 1, 0, big, ChunkHandle(43)), big)
    s.abort(ChunkHandle(43), key(5, 1), T(5), V1)
    s.close()
    s = DiskChunkStore(tmp_path)
    try:
        names = sorted(p.name for p in (tmp_path / "staged").iterdir())
        assert names == [f"{H}.5.1.data"]  # only the undecided intent keeps its data
        assert undecided(s) == [key(5, 1)]
        assert (tmp_path / "chunks" / f"{H}.chunk").exists()  # its reservation too
    finally:
        s.close()


def test_staged_data_of_a_prepare_overtaken_by_its_abort_is_dropped(tmp_path: Path) -> None:
    s = DiskChunkStore(tmp_path)
    try:
        big = pattern(INLINE_MAX + 1)
        s.stage(H, key(5, 1), big)  # the data is staged, the record not yet written ...
        s.abort(H, key(5, 1), T(5), V1)  # ... when the primary gives up on the vote
        s.unstage(H, key(5, 1))  # the prepare then finds it decided and backs out
        assert list((tmp_path / "staged").iterdir()) == []
        s.stage(H, key(5, 2), big)
        s.prepare(H, write_intent(5, 2, 0, big), big)
        s.unstage(H, key(5, 2))  # a prepared intent keeps its data
        assert [p.name for p in (tmp_path / "staged").iterdir()] == [f"{H}.5.2.data"]
    finally:
        s.close()


def test_delete_drops_intents_and_staged_files(tmp_path: Path) -> None:
    s = DiskChunkStore(tmp_path)
    try:
        prepare_and_commit(s, 5, 1, 0, b"abc")
        s.prepare(H, write_intent(5, 2, 0, b"def"), b"def")
        assert s.delete(H)
        assert s.intents(H) == [] and s.state(H) is None
        assert list((tmp_path / "staged").iterdir()) == []
        assert s.fences()[H] == 5
    finally:
        s.close()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards whatever happens."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_the_prepare_and_leaves_nothing_behind(tiny_fs: Path) -> None:
    s = DiskChunkStore(tiny_fs / "data", index_reserve=1 << 20)
    try:
        prepare_and_commit(s, 5, 1, 0, pattern(B))
        s.checkpoint(H)
        filler = tiny_fs / "filler"
        with open(filler, "wb") as f:  # someone else fills the disk
            f.truncate(0)
            try:
                while True:
                    f.write(bytes(1 << 20))
                    f.flush()
            except OSError:
                pass
        with pytest.raises(NoSpace):
            s.prepare(H, write_intent(5, 2, B, pattern(3 << 20)), pattern(3 << 20))
        assert undecided(s) == [] and list((tiny_fs / "data" / "staged").iterdir()) == []
        assert s.read(H, 0, 2 * B) == pattern(B) and s.verify(H) == []
        filler.unlink()  # space freed: usable at once
        prepare_and_commit(s, 5, 2, B, pattern(3 << 20))
        assert s.read(H, B, 3 << 20) == pattern(3 << 20) and s.verify(H) == []
    finally:
        s.close()
