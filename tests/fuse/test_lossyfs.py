"""lossyfs: the test file system keeps exactly what was fsynced across a crash.

Layers: the pure overlay against a byte-array model (no mount), then real
mounts with plain files, mmap, LMDB, and programs killed with SIGKILL.  Each
"lost" test is the proof that a test built on lossyfs can fail: data that was
never fsynced really is gone after `crash()`.
"""

from __future__ import annotations

import mmap
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.lossyfs import PAGE_SIZE, LossyMount, Overlay, is_mounted
from tests.lossyfs.control import REPO_ROOT
from tests.lossyfs.fixtures import MakeLossyMount

CHILD_TIMEOUT = 30.0  # seconds a helper program may take before the test fails


# -- the overlay model, no mount -------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"), st.integers(0, 3 * PAGE_SIZE), st.binary(min_size=1, max_size=5000)
        ),
        st.tuples(st.just("truncate"), st.integers(0, 4 * PAGE_SIZE), st.just(b"")),
        st.tuples(st.just("fsync"), st.just(0), st.just(b"")),
        st.tuples(st.just("crash"), st.just(0), st.just(b"")),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(initial=st.binary(max_size=2 * PAGE_SIZE + 7), ops=_ops)
def test_overlay_matches_a_byte_array_model(
    initial: bytes, ops: list[tuple[str, int, bytes]]
) -> None:
    disk = bytearray(initial)  # the backing file: what survives a crash
    model = bytearray(initial)  # what a reader must see
    overlay = Overlay(len(disk))

    def backing(offset: int, length: int) -> bytes:
        return bytes(disk[offset : offset + length])

    for op, arg, data in ops:
        if op == "write":
            overlay.write(arg, data, backing)
            model.extend(bytes(max(0, arg + len(data) - len(model))))
            model[arg : arg + len(data)] = data
        elif op == "truncate":
            overlay.truncate(arg)
            del model[arg:]
            model.extend(bytes(arg - len(model)))
        elif op == "fsync":
            plan = overlay.flush_plan()
            del disk[plan.truncate_to :]
            for offset, chunk in plan.writes:
                disk.extend(bytes(max(0, offset + len(chunk) - len(disk))))
                disk[offset : offset + len(chunk)] = chunk
            del disk[plan.final_size :]
            disk.extend(bytes(plan.final_size - len(disk)))
            assert disk == model
            overlay = Overlay(len(disk))
        else:
            overlay = Overlay(len(disk))
            model = bytearray(disk)
        assert overlay.size == len(model)
        assert overlay.read(0, len(model) + 10, backing) == bytes(model)
        straddle = overlay.read(PAGE_SIZE - 3, 9, backing)
        assert straddle == bytes(model[PAGE_SIZE - 3 : PAGE_SIZE + 6])


def test_overlay_hides_truncated_backing_bytes_when_extended_again() -> None:
    disk = b"x" * 100
    overlay = Overlay(len(disk))
    overlay.truncate(10)
    overlay.truncate(50)
    assert not overlay.flush_plan().writes
    assert overlay.read(0, 100, lambda o, n: disk[o : o + n]) == b"x" * 10 + bytes(40)
    assert overlay.flush_plan().truncate_to == 10
    assert Overlay(7).dirty is False


# -- helpers for the mounted tests ------------------------------------------------


def _write_fsync(path: Path, data: bytes, *, offset: int = 0, sync: str = "fsync") -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        if sync == "fsync":
            os.fsync(fd)
        elif sync == "fdatasync":
            os.fdatasync(fd)
    finally:
        os.close(fd)


@contextmanager
def _child(code: str, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """A helper program that reports progress on stdout; always reaped."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _where(pid: int | None, name: str) -> str:
    """Where a process is stuck, from /proc: its state, wait channel and kernel stack."""
    if pid is None:
        return f"{name}: not running"
    parts = []
    for item in ("status", "wchan", "stack"):
        try:
            text = Path(f"/proc/{pid}/{item}").read_text(errors="replace")
        except OSError as exc:
            text = f"({exc.strerror})"
        if item == "status":
            text = next((ln for ln in text.splitlines() if ln.startswith("State:")), text)
        parts.append(f"{item}: {text.strip()}")
    return f"{name} {pid}: " + "; ".join(parts)


def _read_line(
    proc: subprocess.Popen[str], deadline: float, mount: LossyMount | None = None
) -> str:
    assert proc.stdout is not None
    left = deadline - time.monotonic()
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
    if not ready:
        # It happened once in a CI run (a loaded machine) and never again in many
        # tries: say where the helper and the file system were stuck.
        seen = [_where(proc.pid, "helper")]
        if mount is not None:
            seen += [_where(mount.pid, "lossyfs"), "lossyfs log tail:\n" + mount.log_text()[-3000:]]
        pytest.fail("helper program went silent\n" + "\n".join(seen))
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"helper program exited with {proc.wait()}")
    return line.strip()


# -- plain files -------------------------------------------------------------------


def test_write_without_fsync_is_lost_but_visible_until_the_crash(lossy_mount: LossyMount) -> None:
    path = lossy_mount.mountpoint / "f"
    _write_fsync(path, b"durable")
    _write_fsync(path, b"LOST", offset=2, sync="none")
    assert path.read_bytes() == b"duLOSTe"  # the program above sees a normal file
    assert (lossy_mount.backing / "f").read_bytes() == b"durable"
    lossy_mount.crash()
    assert path.read_bytes() == b"durable"


@pytest.mark.parametrize("sync", ["fsync", "fdatasync", "O_DSYNC"])
def test_synced_write_survives(lossy_mount: LossyMount, sync: str) -> None:
    path = lossy_mount.mountpoint / "f"
    if sync == "O_DSYNC":
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DSYNC, 0o644)
        os.write(fd, b"kept")
        os.close(fd)
    else:
        _write_fsync(path, b"kept", sync=sync)
    lossy_mount.crash()
    assert path.read_bytes() == b"kept"


def test_truncate_is_lost_until_fsynced(lossy_mount: LossyMount) -> None:
    path = lossy_mount.mountpoint / "f"
    original = bytes(range(256)) * 40  # 10240 bytes, three pages
    _write_fsync(path, original)
    os.truncate(path, 100)
    assert path.stat().st_size == 100
    lossy_mount.crash()
    assert path.read_bytes() == original
    # Shrink then grow past the old size: the old bytes must read as zeros.
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 100)
        os.pwrite(fd, b"end", 12000)
        os.fsync(fd)
    finally:
        os.close(fd)
    expected = original[:100] + bytes(12000 - 100) + b"end"
    assert path.read_bytes() == expected
    lossy_mount.crash()
    assert path.read_bytes() == expected


def test_open_with_o_trunc_is_lost_until_fsynced(lossy_mount: LossyMount) -> None:
    path = lossy_mount.mountpoint / "f"
    _write_fsync(path, b"old contents")
    with open(path, "wb") as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new"
    lossy_mount.crash()
    assert path.read_bytes() == b"old contents"


def test_partial_overwrites_keep_exactly_the_fsynced_bytes(lossy_mount: LossyMount) -> None:
    rng = random.Random(20240611)
    path = lossy_mount.mountpoint / "f"
    durable = bytearray()
    current = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for step in range(60):
            offset = rng.randrange(0, 5 * PAGE_SIZE)
            data = rng.randbytes(rng.randrange(1, 3 * PAGE_SIZE))
            os.pwrite(fd, data, offset)
            current.extend(bytes(max(0, offset + len(data) - len(current))))
            current[offset : offset + len(data)] = data
            if step % 7 == 3 and step < 55:
                os.fsync(fd)
                durable = bytearray(current)
        assert os.pread(fd, len(current) + 1, 0) == bytes(current)
    finally:
        os.close(fd)
    assert durable != current  # the last writes were never fsynced
    lossy_mount.crash()
    assert path.read_bytes() == bytes(durable)


def test_namespace_changes_are_durable_at_once_but_contents_are_not(
    lossy_mount: LossyMount,
) -> None:
    mnt = lossy_mount.mountpoint
    (mnt / "dir").mkdir()
    (mnt / "dir" / "tmp").write_bytes(b"never fsynced")
    os.rename(mnt / "dir" / "tmp", mnt / "dir" / "final")  # the classic missing-fsync bug
    _write_fsync(mnt / "gone", b"x")
    os.unlink(mnt / "gone")
    lossy_mount.crash()
    assert sorted(os.listdir(mnt)) == ["dir"]
    assert (mnt / "dir" / "final").read_bytes() == b""


def test_unsynced_data_of_a_removed_file_does_not_leak_into_a_new_one(
    lossy_mount: LossyMount,
) -> None:
    path = lossy_mount.mountpoint / "f"
    path.write_bytes(b"old and unsynced")
    os.unlink(path)
    path.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    lossy_mount.crash()
    assert path.read_bytes() == b""


def test_unsynced_data_survives_the_kernel_forgetting_the_inode(lossy_mount: LossyMount) -> None:
    path = lossy_mount.mountpoint / "f"
    path.write_bytes(b"still here")
    # Evict dentries and inodes: the kernel sends FORGET, then looks up again.
    Path("/proc/sys/vm/drop_caches").write_text("2")
    assert path.read_bytes() == b"still here"
    lossy_mount.crash()
    assert path.read_bytes() == b""


def test_shared_mmap_writes_survive_only_when_msynced(lossy_mount: LossyMount) -> None:
    path = lossy_mount.mountpoint / "m"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 2 * PAGE_SIZE)
        os.fsync(fd)
        with mmap.mmap(fd, 2 * PAGE_SIZE) as mapped:
            mapped[0:5] = b"synce"
            mapped.flush()  # msync(MS_SYNC): the kernel sends FSYNC
            mapped[PAGE_SIZE : PAGE_SIZE + 4] = b"lost"
    finally:
        os.close(fd)  # close writes the dirty page back, but does not fsync
    assert path.read_bytes()[PAGE_SIZE : PAGE_SIZE + 4] == b"lost"
    lossy_mount.crash()
    data = path.read_bytes()
    assert data[:5] == b"synce"
    assert data[PAGE_SIZE : PAGE_SIZE + 4] == bytes(4)


def test_fallocate_is_refused_but_posix_fallocate_still_works(lossy_mount: LossyMount) -> None:
    fd = os.open(lossy_mount.mountpoint / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, 3 * PAGE_SIZE)  # glibc writes zeros after EOPNOTSUPP
        assert os.fstat(fd).st_size == 3 * PAGE_SIZE
    finally:
        os.close(fd)
    done = subprocess.run(
        ["fallocate", "-l", "4096", str(lossy_mount.mountpoint / "g")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "not supported" in done.stderr


def test_clean_stop_flushes_everything(lossy_mount: LossyMount) -> None:
    (lossy_mount.mountpoint / "f").write_bytes(b"flushed by umount")
    lossy_mount.stop()
    assert not is_mounted(lossy_mount.mountpoint)
    assert (lossy_mount.backing / "f").read_bytes() == b"flushed by umount"


# -- LMDB on lossyfs ----------------------------------------------------------------

MAP_SIZE = 1 << 24


def _lmdb_items(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), map_size=MAP_SIZE)
    try:
        with env.begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()


@pytest.mark.parametrize(
    "flags",
    [{}, {"writemap": True}, {"lock": False}],
    ids=["default", "writemap", "nolock"],
)
def test_lmdb_sync_commit_survives_and_nosync_commit_is_lost(
    lossy_mount: LossyMount, flags: dict[str, bool]
) -> None:
    path = lossy_mount.mountpoint / "db"
    env = lmdb.open(str(path), map_size=MAP_SIZE, sync=True, **flags)
    with env.begin(write=True) as txn:
        txn.put(b"acked", b"1")
    env.close()
    env = lmdb.open(str(path), map_size=MAP_SIZE, sync=False, **flags)
    with env.begin(write=True) as txn:
        txn.put(b"unsynced", b"2")
    assert _items_in(env) == {b"acked": b"1", b"unsynced": b"2"}
    env.close()
    lossy_mount.crash()
    assert _lmdb_items(path) == {b"acked": b"1"}
    # The environment is consistent after the crash: it takes new commits.
    env = lmdb.open(str(path), map_size=MAP_SIZE, sync=True, **flags)
    with env.begin(write=True) as txn:
        txn.put(b"after", b"3")
    env.close()
    lossy_mount.crash()
    assert _lmdb_items(path) == {b"acked": b"1", b"after": b"3"}


def _items_in(env: lmdb.Environment) -> dict[bytes, bytes]:
    with env.begin() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor()}


def test_lmdb_without_metasync_keeps_the_previous_commit(lossy_mount: LossyMount) -> None:
    path = lossy_mount.mountpoint / "db"
    env = lmdb.open(str(path), map_size=MAP_SIZE, sync=True, metasync=False)
    for key in (b"a", b"b"):
        with env.begin(write=True) as txn:
            txn.put(key, key)
    env.close()
    lossy_mount.crash()
    # Data pages were synced, the last meta page was not: one commit rolls back.
    assert _lmdb_items(path) == {b"a": b"a"}


_LMDB_SYNC_WRITER = """
    import lmdb
    env = lmdb.open("db", map_size=1 << 24, sync=True)
    for i in range(100000):
        with env.begin(write=True) as txn:
            txn.put(b"k%06d" % i, b"v" * (i % 700))
        print("acked", i, flush=True)  # the commit returned: it was fsynced
"""


def test_killed_lmdb_writer_keeps_every_acknowledged_commit(lossy_mount: LossyMount) -> None:
    last_ack = -1
    with _child(_LMDB_SYNC_WRITER, lossy_mount.mountpoint) as proc:
        deadline = time.monotonic() + CHILD_TIMEOUT
        for _ in range(40):
            last_ack = int(_read_line(proc, deadline, lossy_mount).split()[1])
        # The writer keeps committing while we read: the kill lands anywhere.
        proc.send_signal(signal.SIGKILL)
    lossy_mount.crash()
    keys = sorted(_lmdb_items(lossy_mount.mountpoint / "db"))
    assert last_ack == 39
    assert len(keys) >= last_ack + 1  # every acknowledged commit survived
    # Transactions are atomic and ordered: what survived is a prefix.
    assert keys == [b"k%06d" % i for i in range(len(keys))]


_LMDB_STALLING_WRITER = """
    import lmdb, time
    env = lmdb.open("db", map_size=1 << 24, sync=False)
    for i in range(12):
        with env.begin(write=True) as txn:
            txn.put(b"k%06d" % i, b"v" * 100)
        if i < 10:
            env.sync(True)
            print("acked", i, flush=True)
    print("stalled", 11, flush=True)
    time.sleep(60)  # killed long before this ends
"""


def test_killed_lmdb_writer_loses_its_unsynced_commits(lossy_mount: LossyMount) -> None:
    with _child(_LMDB_STALLING_WRITER, lossy_mount.mountpoint) as proc:
        deadline = time.monotonic() + CHILD_TIMEOUT
        lines = [_read_line(proc, deadline, lossy_mount) for _ in range(11)]
        assert lines[-2:] == ["acked 9", "stalled 11"]
        # Another process sees the two unsynced commits before the crash.
        assert len(_lmdb_items(lossy_mount.mountpoint / "db")) == 12
        proc.send_signal(signal.SIGKILL)
    lossy_mount.crash()
    assert sorted(_lmdb_items(lossy_mount.mountpoint / "db")) == [b"k%06d" % i for i in range(10)]


_LOG_WRITER = """
    import os, time
    fd = os.open("log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for i in range(200):
        os.write(fd, b"record %05d\\n" % i)
        if i % 10 == 9 and i < 150:
            os.fsync(fd)
            print("acked", i, flush=True)
    print("stalled", 199, flush=True)
    time.sleep(60)  # killed long before this ends
"""


def test_killed_appender_keeps_fsynced_records_only(lossy_mount: LossyMount) -> None:
    with _child(_LOG_WRITER, lossy_mount.mountpoint) as proc:
        deadline = time.monotonic() + CHILD_TIMEOUT
        lines = [_read_line(proc, deadline, lossy_mount) for _ in range(16)]
        assert lines[-2:] == ["acked 149", "stalled 199"]
        assert (lossy_mount.mountpoint / "log").read_bytes().count(b"\n") == 200
        proc.send_signal(signal.SIGKILL)
    lossy_mount.crash()
    records = (lossy_mount.mountpoint / "log").read_bytes().splitlines()
    assert records == [b"record %05d" % i for i in range(150)]


# -- the fixture and the process lifecycle ------------------------------------------


def test_a_dead_mount_at_the_mountpoint_is_cleaned_up(
    lossy_mount_factory: MakeLossyMount, tmp_path: Path
) -> None:
    first = lossy_mount_factory("m")
    _write_fsync(first.mountpoint / "f", b"kept")
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)  # leaves a dead mount behind (ENOTCONN)
    assert is_mounted(first.mountpoint)
    second = LossyMount(first.backing, first.mountpoint, tmp_path / "second.log")
    try:
        second.start()
        assert (second.mountpoint / "f").read_bytes() == b"kept"
    finally:
        second.close()
    first.close()
    assert not is_mounted(first.mountpoint)


_ORPHANING_PARENT = """
    import sys, time
    from pathlib import Path
    from tests.lossyfs import LossyMount
    root = Path(sys.argv[1])
    mount = LossyMount(root / "backing", root / "mnt", root / "log")
    mount.start()
    print(mount.pid, flush=True)
    time.sleep(60)
"""


def test_file_system_unmounts_itself_when_its_parent_dies(tmp_path: Path) -> None:
    code = textwrap.dedent(_ORPHANING_PARENT)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    fs_pid = None
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT
        fs_pid = int(_read_line(proc, deadline))
        assert is_mounted(tmp_path / "mnt")
        proc.kill()
        proc.wait()
        for _ in range(100):  # bounded: 10 s
            if not is_mounted(tmp_path / "mnt"):
                break
            time.sleep(0.1)
        assert not is_mounted(tmp_path / "mnt")
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        if fs_pid is not None:
            _reap_foreign(fs_pid)
        if is_mounted(tmp_path / "mnt"):
            subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / "mnt")], check=False)


def _reap_foreign(pid: int) -> None:
    """Wait (bounded) for a process we did not start to exit; kill it if it does not."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return  # exited; its new parent reaps it
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
