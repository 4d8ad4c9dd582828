"""memfs: names, types, data, orphans, readdir cookies, xattrs, limits, statfs."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import trio

import fs.memfs as memfs_module
from fs import posix
from fs.api import FsApi
from fs.memfs import PAGE, MemFs
from fs.types import (
    MAX_FILE_SIZE,
    NAME_MAX,
    PATH_MAX,
    ROOT_CRED,
    ROOT_INODE,
    XATTR_SIZE_MAX,
    FileHandle,
    FsError,
    InodeId,
    SetAttrFields,
)
from tests.unit.memfs_support import ALICE, fsck, listing, new_core, raises_errno

RW = os.O_RDWR
R = ROOT_CRED


def test_root_is_a_directory_owned_by_root() -> None:
    core = new_core()
    attr = core.getattr(ROOT_INODE, R)
    assert stat.S_ISDIR(attr.mode) and attr.nlink == 2 and attr.uid == 0
    assert core.lookup(ROOT_INODE, b"..", R).inode == ROOT_INODE
    fsck(core)


def test_every_file_type_can_be_made() -> None:
    core = new_core()
    kinds = {
        b"reg": stat.S_IFREG, b"fifo": stat.S_IFIFO, b"sock": stat.S_IFSOCK,
        b"chr": stat.S_IFCHR, b"blk": stat.S_IFBLK,
    }
    for name, kind in kinds.items():
        core.mknod(ROOT_INODE, name, kind | 0o640, os.makedev(8, 1), R)
    core.mkdir(ROOT_INODE, b"dir", 0o750, R)
    core.symlink(ROOT_INODE, b"link", b"reg", R)
    for name, kind in kinds.items():
        attr = core.lookup(ROOT_INODE, name, R)
        assert stat.S_IFMT(attr.mode) == kind and stat.S_IMODE(attr.mode) == 0o640
    assert core.lookup(ROOT_INODE, b"chr", R).rdev == os.makedev(8, 1)
    assert core.lookup(ROOT_INODE, b"fifo", R).rdev == 0
    link = core.lookup(ROOT_INODE, b"link", R)
    assert stat.S_ISLNK(link.mode) and link.size == 3
    assert core.readlink(link.inode, R) == b"reg"
    assert core.getattr(ROOT_INODE, R).nlink == 3
    with raises_errno(errno.EINVAL):
        core.mknod(ROOT_INODE, b"d2", stat.S_IFDIR | 0o755, 0, R)
    with raises_errno(errno.EINVAL):
        core.readlink(core.lookup(ROOT_INODE, b"reg", R).inode, R)
    fsck(core)


def test_names_limits_and_dot_entries() -> None:
    core = new_core()
    core.mknod(ROOT_INODE, b"x" * NAME_MAX, stat.S_IFREG | 0o644, 0, R)
    with raises_errno(errno.ENAMETOOLONG):
        core.mknod(ROOT_INODE, b"x" * (NAME_MAX + 1), stat.S_IFREG | 0o644, 0, R)
    with raises_errno(errno.ENAMETOOLONG):
        core.lookup(ROOT_INODE, b"y" * (NAME_MAX + 1), R)
    for name in (b".", b".."):
        with raises_errno(errno.EEXIST):
            core.mkdir(ROOT_INODE, name, 0o755, R)
    with raises_errno(errno.EEXIST):
        core.mknod(ROOT_INODE, b"x" * NAME_MAX, stat.S_IFREG, 0, R)
    with raises_errno(errno.ENAMETOOLONG):
        core.symlink(ROOT_INODE, b"long", b"t" * (PATH_MAX + 1), R)
    core.symlink(ROOT_INODE, b"max", b"t" * PATH_MAX, R)
    with raises_errno(errno.ENOENT):
        core.symlink(ROOT_INODE, b"empty", b"", R)
    with raises_errno(errno.ENOENT):
        core.lookup(ROOT_INODE, b"missing", R)
    fsck(core)


def test_write_read_sparse_and_blocks() -> None:
    core = new_core()
    fh, attr = core.create(ROOT_INODE, b"f", 0o644, RW, R)
    assert core.write(fh, 3 * PAGE + 10, b"tail") == 4
    got = core.getattr(attr.inode, R)
    assert got.size == 3 * PAGE + 14
    assert got.blocks == PAGE // 512  # one page allocated, the rest is a hole
    assert core.read(fh, 0, 100) == bytes(100)
    assert core.read(fh, 3 * PAGE + 8, 100) == b"\0\0tail"
    assert core.read(fh, got.size, 10) == b""
    data = bytes(range(256)) * 1000
    core.write(fh, PAGE - 5, data)  # crosses page boundaries
    assert core.read(fh, PAGE - 5, len(data)) == data
    core.release(fh)
    fsck(core)


def test_truncate_drops_pages_and_zeroes_the_tail() -> None:
    core = new_core()
    fh, attr = core.create(ROOT_INODE, b"f", 0o644, RW, R)
    core.write(fh, 0, b"a" * (2 * PAGE + 100))
    core.setattr(attr.inode, SetAttrFields(size=PAGE + 3), R)
    assert core.getattr(attr.inode, R).blocks == 2 * (PAGE // 512)
    core.setattr(attr.inode, SetAttrFields(size=3 * PAGE), R)  # grow: a hole
    assert core.read(fh, PAGE, 10) == b"aaa" + bytes(7)
    assert core.read(fh, 3 * PAGE - 4, 10) == bytes(4)
    with raises_errno(errno.EFBIG):
        core.setattr(attr.inode, SetAttrFields(size=MAX_FILE_SIZE + 1), R)
    with raises_errno(errno.EINVAL):
        core.setattr(attr.inode, SetAttrFields(size=-1), R)
    with raises_errno(errno.EISDIR):
        core.setattr(ROOT_INODE, SetAttrFields(size=0), R)
    core.release(fh)
    fsck(core)


def test_efbig_enospc_and_handle_modes_change_nothing() -> None:
    core = new_core(capacity=4 * PAGE)
    fh, attr = core.create(ROOT_INODE, b"f", 0o644, RW, R)
    with raises_errno(errno.EFBIG):
        core.write(fh, MAX_FILE_SIZE - 2, b"abc")
    core.write(fh, 0, b"x" * (3 * PAGE))
    with raises_errno(errno.ENOSPC):
        core.write(fh, 3 * PAGE, b"y" * (2 * PAGE))
    assert core.getattr(attr.inode, R).size == 3 * PAGE
    free = core.statfs(R).blocks_free
    assert free == PAGE // memfs_module.STATFS_BLOCK
    ro = core.open(attr.inode, os.O_RDONLY, R)
    with raises_errno(errno.EBADF):
        core.write(ro, 0, b"z")
    wo = core.open(attr.inode, os.O_WRONLY, R)
    with raises_errno(errno.EBADF):
        core.read(wo, 0, 1)
    with raises_errno(errno.EBADF):
        core.read(FileHandle(999), 0, 1)
    for handle in (fh, ro, wo):
        core.release(handle)
    fsck(core)


def test_open_trunc_append_and_create_on_existing() -> None:
    core = new_core()
    fh, attr = core.create(ROOT_INODE, b"f", 0o644, RW, R)
    core.write(fh, 0, b"hello")
    appender = core.open(attr.inode, os.O_WRONLY | os.O_APPEND, R)
    core.write(appender, 0, b"!!")  # lands at the end, whatever the offset
    assert core.read(fh, 0, 10) == b"hello!!"
    again, same = core.create(ROOT_INODE, b"f", 0o600, RW | os.O_TRUNC, R)
    assert same.inode == attr.inode and core.getattr(attr.inode, R).size == 0
    assert stat.S_IMODE(core.getattr(attr.inode, R).mode) == 0o644  # mode kept
    with raises_errno(errno.EEXIST):
        core.create(ROOT_INODE, b"f", 0o644, RW | os.O_EXCL, R)
    core.mkdir(ROOT_INODE, b"d", 0o755, R)
    with raises_errno(errno.EISDIR):
        core.create(ROOT_INODE, b"d", 0o644, os.O_RDONLY, R)
    with raises_errno(errno.EISDIR):
        core.open(core.lookup(ROOT_INODE, b"d", R).inode, os.O_WRONLY, R)
    for handle in (fh, appender, again):
        core.release(handle)
    fsck(core)


def test_unlinked_open_file_lives_until_release() -> None:
    core = new_core()
    fh, attr = core.create(ROOT_INODE, b"f", 0o644, RW, R)
    core.write(fh, 0, b"data")
    before = core.inode_count()
    core.unlink(ROOT_INODE, b"f", R)
    assert core.getattr(attr.inode, R).nlink == 0
    core.write(fh, 4, b"more")
    assert core.read(fh, 0, 100) == b"datamore"
    with raises_errno(errno.ENOENT):
        core.lookup(ROOT_INODE, b"f", R)
    with raises_errno(errno.ENOENT):
        core.link(attr.inode, ROOT_INODE, b"back", R)
    fsck(core, open_orphans=1)
    core.release(fh)
    assert core.inode_count() == before - 1
    with raises_errno(errno.ENOENT):
        core.getattr(attr.inode, R)
    assert core.statfs(R).blocks_free == core.statfs(R).blocks  # its page was freed
    fsck(core)


def test_hard_links_share_data_and_count() -> None:
    core = new_core()
    fh, attr = core.create(ROOT_INODE, b"a", 0o644, RW, R)
    core.write(fh, 0, b"shared")
    core.release(fh)
    core.mkdir(ROOT_INODE, b"d", 0o755, R)
    d = core.lookup(ROOT_INODE, b"d", R).inode
    assert core.link(attr.inode, d, b"b", R).nlink == 2
    core.unlink(ROOT_INODE, b"a", R)
    b = core.lookup(d, b"b", R)
    assert b.inode == attr.inode and b.nlink == 1 and b.size == 6
    with raises_errno(errno.EPERM):
        core.link(d, ROOT_INODE, b"dirlink", R)
    with raises_errno(errno.EEXIST):
        core.link(attr.inode, d, b"b", R)
    fsck(core)


def test_link_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memfs_module, "LINK_MAX", 3)
    core = new_core()
    attr = core.mknod(ROOT_INODE, b"a", stat.S_IFREG | 0o644, 0, R)
    core.link(attr.inode, ROOT_INODE, b"b", R)
    core.link(attr.inode, ROOT_INODE, b"c", R)
    with raises_errno(errno.EMLINK):
        core.link(attr.inode, ROOT_INODE, b"d", R)
    fsck(core)


def test_directories_count_links_and_rmdir_rules() -> None:
    core = new_core()
    d = core.mkdir(ROOT_INODE, b"d", 0o755, R).inode
    core.mkdir(d, b"sub", 0o755, R)
    core.mknod(d, b"file", stat.S_IFREG | 0o644, 0, R)
    assert core.getattr(d, R).nlink == 3
    with raises_errno(errno.ENOTEMPTY):
        core.rmdir(ROOT_INODE, b"d", R)
    with raises_errno(errno.ENOTDIR):
        core.rmdir(d, b"file", R)
    with raises_errno(errno.EISDIR):
        core.unlink(d, b"sub", R)
    with raises_errno(errno.EINVAL):
        core.rmdir(d, b".", R)
    core.rmdir(d, b"sub", R)
    core.unlink(d, b"file", R)
    core.rmdir(ROOT_INODE, b"d", R)
    assert core.getattr(ROOT_INODE, R).nlink == 2
    with raises_errno(errno.ENOENT):
        core.getattr(d, R)
    fsck(core)


def test_readdir_cookies_survive_changes_during_a_listing() -> None:
    core = new_core()
    for i in range(50):
        core.mknod(ROOT_INODE, b"n%02d" % i, stat.S_IFREG | 0o644, 0, R)
    first = core.readdir(ROOT_INODE, 0, 20, R)
    assert [e.name for e in first] == [b"n%02d" % i for i in range(20)]
    # Remove entries before and after the cookie, add new ones; resume.
    for i in (3, 19, 20, 33):
        core.unlink(ROOT_INODE, b"n%02d" % i, R)
    core.mknod(ROOT_INODE, b"late", stat.S_IFREG | 0o644, 0, R)
    rest = listing_from(core, first[-1].cookie)
    expected = [b"n%02d" % i for i in range(21, 50) if i != 33] + [b"late"]
    assert rest == expected
    fsck(core)


def listing_from(core: memfs_module.MemFsCore, cookie: int) -> list[bytes]:
    names: list[bytes] = []
    for _ in range(10_000):
        entries = core.readdir(ROOT_INODE, cookie, 6, R)
        if not entries:
            return names
        names += [e.name for e in entries]
        cookie = entries[-1].cookie
    raise AssertionError("readdir never ended")


def test_readdir_of_a_big_directory_with_churn_lists_each_name_once() -> None:
    core = new_core()
    d = core.mkdir(ROOT_INODE, b"big", 0o755, R).inode
    core.populate(d, b"f", 5000)
    for i in range(0, 5000, 3):  # tombstones force compaction of the cookie list
        core.unlink(d, b"f%d" % i, R)
    names = listing(core, d, batch=64)
    assert len(names) == len(set(names)) == 5000 - len(range(0, 5000, 3))
    assert core.getattr(core.lookup(d, b"f1", R).inode, R).nlink == len(names)
    with raises_errno(errno.ENOTDIR):
        core.readdir(core.lookup(d, b"f1", R).inode, 0, 10, R)
    fsck(core)


def test_rename_over_a_name_keeps_its_cookie() -> None:
    core = new_core()
    for name in (b"a", b"b", b"c"):
        core.mknod(ROOT_INODE, name, stat.S_IFREG | 0o644, 0, R)
    cookies = {e.name: e.cookie for e in core.readdir(ROOT_INODE, 0, 10, R)}
    core.rename(ROOT_INODE, b"c", ROOT_INODE, b"a", 0, R)
    after = core.readdir(ROOT_INODE, 0, 10, R)
    assert [(e.name, e.cookie) for e in after] == [(b"a", cookies[b"a"]), (b"b", cookies[b"b"])]
    fsck(core)


def test_xattrs_flags_and_errors() -> None:
    core = new_core()
    f = core.mknod(ROOT_INODE, b"f", stat.S_IFREG | 0o644, 0, R).inode
    core.setxattr(f, b"user.a", b"1", 0, R)
    core.setxattr(f, b"user.b", b"", 0, R)
    assert core.getxattr(f, b"user.a", R) == b"1"
    assert sorted(core.listxattr(f, R)) == [b"user.a", b"user.b"]
    with raises_errno(errno.EEXIST):
        core.setxattr(f, b"user.a", b"2", posix.XATTR_CREATE, R)
    with raises_errno(errno.ENODATA):
        core.setxattr(f, b"user.c", b"2", posix.XATTR_REPLACE, R)
    core.setxattr(f, b"user.a", b"2", posix.XATTR_REPLACE, R)
    assert core.getxattr(f, b"user.a", R) == b"2"
    with raises_errno(errno.E2BIG):
        core.setxattr(f, b"user.big", bytes(XATTR_SIZE_MAX + 1), 0, R)
    with raises_errno(errno.ERANGE):
        core.setxattr(f, b"user." + b"n" * 300, b"", 0, R)
    with raises_errno(errno.ENOTSUP):
        core.setxattr(f, b"system.posix_acl_access", b"", 0, R)
    with raises_errno(errno.ENOTSUP):
        core.getxattr(f, b"nonamespace", R)
    with raises_errno(errno.EINVAL):
        core.setxattr(f, b"user.a", b"", 8, R)
    core.removexattr(f, b"user.a", R)
    with raises_errno(errno.ENODATA):
        core.getxattr(f, b"user.a", R)
    with raises_errno(errno.ENODATA):
        core.removexattr(f, b"user.a", R)
    link = core.symlink(ROOT_INODE, b"l", b"f", R).inode
    with raises_errno(errno.EPERM):
        core.setxattr(link, b"user.a", b"", 0, R)
    with raises_errno(errno.ENODATA):
        core.getxattr(link, b"user.a", R)
    fsck(core)


def test_trusted_and_security_xattrs_need_root() -> None:
    core = new_core()
    f = core.mknod(ROOT_INODE, b"f", stat.S_IFREG | 0o666, 0, R).inode
    core.setxattr(f, b"trusted.t", b"1", 0, R)
    core.setxattr(f, b"security.s", b"2", 0, R)
    core.setxattr(f, b"user.u", b"3", 0, ALICE)
    assert sorted(core.listxattr(f, ALICE)) == [b"security.s", b"user.u"]
    assert len(core.listxattr(f, R)) == 3
    with raises_errno(errno.EPERM):
        core.setxattr(f, b"trusted.t", b"x", 0, ALICE)
    with raises_errno(errno.ENODATA):
        core.getxattr(f, b"trusted.t", ALICE)
    with raises_errno(errno.EPERM):
        core.setxattr(f, b"security.s", b"x", 0, ALICE)
    assert core.getxattr(f, b"security.s", ALICE) == b"2"
    fsck(core)


def test_timestamps() -> None:
    core = new_core()
    root0 = core.getattr(ROOT_INODE, R)
    fh, attr = core.create(ROOT_INODE, b"f", 0o644, RW, R)
    root1 = core.getattr(ROOT_INODE, R)
    assert root1.mtime_ns > root0.mtime_ns and root1.ctime_ns > root0.ctime_ns
    assert attr.atime_ns == attr.mtime_ns == attr.ctime_ns
    core.write(fh, 0, b"x")
    written = core.getattr(attr.inode, R)
    assert written.mtime_ns > attr.mtime_ns and written.atime_ns == attr.atime_ns
    core.read(fh, 0, 1)
    assert core.getattr(attr.inode, R).atime_ns == attr.atime_ns  # noatime
    chmodded = core.setattr(attr.inode, SetAttrFields(mode=0o600), R)
    assert chmodded.mtime_ns == written.mtime_ns and chmodded.ctime_ns > written.ctime_ns
    stamped = core.setattr(attr.inode, SetAttrFields(atime_ns=5, mtime_ns=7), R)
    assert (stamped.atime_ns, stamped.mtime_ns) == (5, 7)
    core.release(fh)
    fsck(core)


def test_statfs_counts_inodes_and_blocks() -> None:
    core = new_core(capacity=1 << 30, max_inodes=10)
    before = core.statfs(R)
    assert before.files == 10 and before.files_free == 9  # the root
    fh, _ = core.create(ROOT_INODE, b"f", 0o644, RW, R)
    core.write(fh, 0, b"x")
    after = core.statfs(R)
    assert after.files_free == 8
    assert before.blocks_free - after.blocks_free == PAGE // after.block_size
    for i in range(8):
        core.mknod(ROOT_INODE, b"g%d" % i, stat.S_IFREG, 0, R)
    with raises_errno(errno.ENOSPC):
        core.mkdir(ROOT_INODE, b"full", 0o755, R)
    core.release(fh)
    fsck(core)


async def test_async_memfs_is_an_fsapi_and_hangs_on_demand(autojump_clock: trio.abc.Clock) -> None:
    memfs = MemFs()
    fs: FsApi = memfs  # the Protocol check is mypy's
    attr = await fs.mkdir(ROOT_INODE, b"d", 0o755, ROOT_CRED)
    memfs.set_hang(True)
    with trio.move_on_after(0.5) as scope:
        await fs.lookup(ROOT_INODE, b"d", ROOT_CRED)
    assert scope.cancelled_caught
    memfs.set_hang(False)
    assert (await fs.lookup(ROOT_INODE, b"d", ROOT_CRED)).inode == attr.inode
    await fs.forget([(InodeId(attr.inode), 1)])
    assert memfs.core.forgotten == [(attr.inode, 1)]
    with pytest.raises(FsError):
        await fs.getattr(InodeId(12345), ROOT_CRED)
