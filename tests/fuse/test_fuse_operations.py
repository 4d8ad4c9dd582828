"""The FUSE operations layer in-process (no kernel): lookup counts and forget,
readdir batching and its bounded buffer, error translation, timeouts, creds."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import pyfuse3
import pytest
import trio

from fs.fuse.config import FuseConfig, MountConfig
from fs.fuse.creds import GroupCache, parse_groups
from fs.fuse.mount import mount_device
from fs.fuse.operations import Operations
from fs.memfs import MemFs
from fs.types import ROOT_INODE, Cred, DirEntry, FsError, InodeId


@dataclass
class Ctx:
    uid: int = 0
    gid: int = 0
    pid: int = 4242
    umask: int = 0o022


@dataclass
class Fields:
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


CTX = cast(pyfuse3.RequestContext, Ctx())
TOKEN = cast(pyfuse3.ReaddirToken, object())  # the stand-in readdir_reply ignores it
STATUS = "Name:\tx\nUid:\t0\t0\t0\t0\nGroups:\t50 7 50 \n"


class CountingMemFs(MemFs):
    """MemFs that records readdir limits."""

    def __init__(self) -> None:
        super().__init__()
        self.readdir_limits: list[int] = []

    async def readdir(
        self, inode: InodeId, cookie: int, limit: int, cred: Cred
    ) -> Sequence[DirEntry]:
        self.readdir_limits.append(limit)
        return await super().readdir(inode, cookie, limit, cred)


def make_ops(fs: Any = None, **config: Any) -> tuple[Operations, Any]:
    fs = fs if fs is not None else CountingMemFs()
    groups = GroupCache(reader=lambda pid: STATUS)
    return Operations(fs, FuseConfig(**config), groups), fs


async def test_entry_replies_count_and_forget_reaches_zero_exactly() -> None:
    ops, fs = make_ops()
    made = await ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    assert ops.lookup_count(made.st_ino) == 1
    await ops.lookup(ROOT_INODE, b"d", CTX)
    await ops.lookup(ROOT_INODE, b"d", CTX)
    assert ops.lookup_count(made.st_ino) == 3
    info, created = await ops.create(made.st_ino, b"f", 0o644, os.O_RDWR, CTX)
    linked = await ops.link(created.st_ino, ROOT_INODE, b"g", CTX)
    assert linked.st_ino == created.st_ino and ops.lookup_count(created.st_ino) == 2
    sym = await ops.symlink(ROOT_INODE, b"s", b"f", CTX)
    node = await ops.mknod(ROOT_INODE, b"p", stat.S_IFIFO | 0o644, 0, CTX)
    await ops.forget([(made.st_ino, 2), (created.st_ino, 1)])
    assert fs.core.forgotten == []
    await ops.forget([(made.st_ino, 1), (created.st_ino, 1), (sym.st_ino, 1), (node.st_ino, 1)])
    assert sorted(fs.core.forgotten) == sorted(
        [(made.st_ino, 1), (created.st_ino, 1), (sym.st_ino, 1), (node.st_ino, 1)]
    )
    assert ops.lookup_count(made.st_ino) == 0
    await ops.release(info.fh)


async def test_negative_lookups_are_cached_and_not_counted() -> None:
    ops, _ = make_ops(negative_timeout=2.5)
    entry = await ops.lookup(ROOT_INODE, b"missing", CTX)
    assert entry.st_ino == 0 and entry.entry_timeout == 2.5
    ops, _ = make_ops(negative_timeout=0)
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.lookup(ROOT_INODE, b"missing", CTX)
    assert info.value.errno == errno.ENOENT


async def test_errors_are_translated_once(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(MemFs):
        async def getattr(self, inode: InodeId, cred: Cred) -> Any:
            if inode == 7:
                raise FsError(errno.EDOM, "an errno nobody uses on purpose")
            raise ValueError("a bug")

    ops, _ = make_ops(Broken())
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.unlink(ROOT_INODE, b"nothing", CTX)
    assert info.value.errno == errno.ENOENT
    with caplog.at_level(logging.ERROR, logger="fs.fuse.operations"):
        for inode in (5, 7):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await ops.getattr(inode, CTX)
            assert info.value.errno == errno.EIO
    assert "a bug" in caplog.text and "unexpected errno" in caplog.text


async def test_a_hung_backend_answers_etimedout(autojump_clock: trio.abc.Clock) -> None:
    ops, fs = make_ops(op_timeout=3.0)
    fs.set_hang(True)
    start = trio.current_time()
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.lookup(ROOT_INODE, b"x", CTX)
    assert info.value.errno == errno.ETIMEDOUT
    assert trio.current_time() - start == pytest.approx(3.0)
    await ops.forget([(99, 1)])  # forget never raises, even with a hung backend
    fs.set_hang(False)
    assert (await ops.mkdir(ROOT_INODE, b"ok", 0o755, CTX)).st_ino > 0


class Kernel:
    """Stands in for readdir_reply: accepts `room` entries per request."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.left = room
        self.names: list[bytes] = []
        self.next_ids: list[int] = []

    def reply(self, token: object, name: bytes, attr: object, next_id: int) -> bool:
        if self.left == 0:
            return False
        self.left -= 1
        self.names.append(name)
        self.next_ids.append(next_id)
        return True

    def new_request(self) -> int:
        self.left = self.room
        return self.next_ids[-1] if self.next_ids else 0


async def list_all(ops: Operations, fh: int, kernel: Kernel, token: pyfuse3.ReaddirToken) -> None:
    for _ in range(100_000):
        before = len(kernel.names)
        await ops.readdir(fh, kernel.new_request(), token)
        if len(kernel.names) == before:
            return
    raise AssertionError("readdir never ended")


async def test_readdir_streams_in_batches_and_counts_what_the_kernel_took(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ops, fs = make_ops(readdir_batch=50)
    d = await ops.mkdir(ROOT_INODE, b"big", 0o755, CTX)
    fs.core.populate(InodeId(d.st_ino), b"n", 1000)
    kernel = Kernel(room=30)
    monkeypatch.setattr(pyfuse3, "readdir_reply", kernel.reply)
    fh = await ops.opendir(d.st_ino, CTX)
    await list_all(ops, fh, kernel, TOKEN)
    assert sorted(kernel.names) == sorted(b"n%d" % i for i in range(1000))
    assert max(fs.readdir_limits) == 50  # never more than one batch in memory
    assert len(fs.readdir_limits) <= 1000 // 50 * 2 + 2  # held batches are reused
    file_ino = (await ops.lookup(d.st_ino, b"n0", CTX)).st_ino
    assert ops.lookup_count(file_ino) == 1000 + 1  # one per accepted entry + the lookup
    await ops.releasedir(fh)


async def test_a_mutation_drops_the_held_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    ops, fs = make_ops(readdir_batch=50)
    for i in range(40):
        await ops.mknod(ROOT_INODE, b"f%d" % i, stat.S_IFREG | 0o644, 0, CTX)
    kernel = Kernel(room=10)
    monkeypatch.setattr(pyfuse3, "readdir_reply", kernel.reply)
    fh = await ops.opendir(ROOT_INODE, CTX)
    await ops.readdir(fh, kernel.new_request(), TOKEN)
    await ops.unlink(ROOT_INODE, b"f15", CTX)  # not yet listed: must not be listed
    await list_all(ops, fh, kernel, TOKEN)
    assert b"f15" not in kernel.names and len(kernel.names) == 39
    assert len(fs.readdir_limits) >= 2


async def test_setattr_passes_only_the_changed_fields() -> None:
    ops, fs = make_ops()
    info, entry = await ops.create(ROOT_INODE, b"f", 0o644, os.O_RDWR, CTX)
    await ops.write(info.fh, 0, b"0123456789")
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o600
    attr.st_size = 4
    attr.st_mtime_ns = 42
    fields = cast(pyfuse3.SetattrFields, Fields(update_mode=True, update_size=True,
                                                update_mtime=True))
    out = await ops.setattr(entry.st_ino, attr, fields, None, CTX)
    assert stat.S_IMODE(out.st_mode) == 0o600 and out.st_size == 4 and out.st_mtime_ns == 42
    assert out.st_uid == 0 and out.st_atime_ns == entry.st_atime_ns  # untouched
    assert await ops.read(info.fh, 0, 100) == b"0123"
    await ops.release(info.fh)
    assert fs.core.open_handles() == 0


async def test_supplementary_groups_reach_the_backend() -> None:
    ops, _ = make_ops()
    d = await ops.mkdir(ROOT_INODE, b"staff", 0o770, CTX)
    await ops.setattr(d.st_ino, _gid_attr(50), cast(pyfuse3.SetattrFields,
                                                     Fields(update_gid=True)), None, CTX)
    member = cast(pyfuse3.RequestContext, Ctx(uid=1000, gid=1000))  # STATUS lists group 50
    assert (await ops.mkdir(d.st_ino, b"mine", 0o755, member)).st_uid == 1000


def _gid_attr(gid: int) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    attr.st_gid = gid
    return attr


def test_group_cache_parses_caches_and_bounds() -> None:
    assert parse_groups(STATUS) == (7, 50)
    assert parse_groups("Groups:\t\n") == ()
    now = [0.0]
    cache = GroupCache(ttl=1.0, size=2, clock=lambda: now[0], reader=lambda pid: STATUS)
    assert cache.cred(1000, 1000, 5) == Cred(1000, 1000, (7, 50), 5)
    cache.groups(5, 1000, 1000)
    assert cache.reads == 1
    now[0] = 1.5
    cache.groups(5, 1000, 1000)
    assert cache.reads == 2  # expired
    cache.groups(6, 1000, 1000)
    cache.groups(7, 1000, 1000)
    cache.groups(5, 1000, 1000)
    assert cache.reads == 5  # pid 5 was evicted (size 2)
    assert cache.groups(0, 1000, 1000) == ()
    gone = GroupCache(reader=lambda pid: None)
    assert gone.groups(123, 1, 1) == ()


def test_config_validation_and_options(tmp_path: Any) -> None:
    with pytest.raises(ValueError):
        FuseConfig(op_timeout=0).validate()
    with pytest.raises(ValueError):
        FuseConfig(attr_timeout=float("nan")).validate()
    with pytest.raises(ValueError):
        MountConfig("/mnt", options=("max_read=4096",)).validate()
    with pytest.raises(ValueError):
        MountConfig("/mnt", options=("fsname=other",)).validate()
    options = MountConfig("/mnt", options=("ro",)).fuse_options()
    assert {"fsname=ddfs", "subtype=ddfs", "allow_other", "default_permissions", "ro"} <= options
    info = tmp_path / "mountinfo"
    info.write_text(
        "36 25 0:40 / /mnt/with\\040space rw - fuse.ddfs ddfs rw\n"
        "37 25 0:41 / /mnt/other rw - fuse.other x rw\n"
    )
    assert mount_device("/mnt/with space", str(info)) == "0:40"
    assert mount_device("/mnt/other", str(info)) is None


async def test_open_and_setid_writes_drop_the_kernels_cached_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dropped: list[tuple[int, bool]] = []
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda i, a=False: dropped.append((i, a)))
    ops, _ = make_ops()
    info, plain = await ops.create(ROOT_INODE, b"plain", 0o644, os.O_RDWR, CTX)
    await ops.write(info.fh, 0, b"x")
    assert dropped == []  # no set-id bits: the kernel's own update is right
    reader = (await ops.open(plain.st_ino, os.O_RDONLY, CTX)).fh
    assert dropped == [(plain.st_ino, True)]  # close-to-open
    dropped.clear()
    setid_info, setid = await ops.create(ROOT_INODE, b"setid", 0o4755, os.O_RDWR, CTX)
    await ops.write(setid_info.fh, 0, b"y")
    assert dropped == [(setid.st_ino, True)]  # the mode may have changed under the kernel
    await ops.write(setid_info.fh, 1, b"z")
    assert dropped == [(setid.st_ino, True)]  # once, until attributes show the bits again
    for handle in (info.fh, reader, setid_info.fh):
        await ops.release(handle)
