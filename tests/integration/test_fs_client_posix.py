"""One POSIX behaviour suite, run against memfs (the reference) and NetworkFs on a
real cluster (3 `ddfs meta` + 3 `ddfs chunk` on loopback): both must answer
alike.  Each test works in a fresh directory and ends with `fsck`, which
walks that directory through the FsApi and checks names against attributes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from fs.api import FsApi
from fs.memfs import MemFs
from fs.posix import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE
from fs.types import (
    CHUNK_SIZE,
    ROOT_CRED,
    ROOT_INODE,
    Cred,
    FileHandle,
    FsError,
    InodeId,
    SetAttrFields,
)
from tests.support.fs_cluster import FsCluster, fs_cluster

R = ROOT_CRED
ALICE = Cred(1000, 1000, (1000,), 11)
BOB = Cred(1001, 1001, (1001,), 12)
RW, RO, WO = os.O_RDWR, os.O_RDONLY, os.O_WRONLY
CREAT = os.O_CREAT | os.O_RDWR


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsCluster]:
    with fs_cluster(Path(tmp_path_factory.mktemp("posix"))) as c:
        yield c


@pytest.fixture(params=["memfs", "network"])
def backend(request: pytest.FixtureRequest) -> FsCluster | None:
    """None for memfs; the (module-wide) cluster for NetworkFs."""
    if request.param == "memfs":
        return None
    cluster: FsCluster = request.getfixturevalue("cluster")
    return cluster


@dataclass
class Env:
    fs: FsApi
    top: InodeId  # this test's directory (0o777, owned by root)


@pytest.fixture
async def env(backend: FsCluster | None, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    name = request.node.name.encode()[:200]
    if backend is None:
        fs = MemFs()
        top = await fs.mkdir(ROOT_INODE, name, 0o777, R)
        yield Env(fs, top.inode)
        await fsck(fs, top.inode)
        return
    async with backend.client() as rpc:
        await backend.wait_ready(rpc)
    async with backend.connect(op_timeout=10.0) as nfs:
        top = await nfs.mkdir(ROOT_INODE, name, 0o777, R)
        yield Env(nfs, top.inode)
        await fsck(nfs, top.inode)


async def fsck(fs: FsApi, top: InodeId) -> None:
    """Every name resolves to what readdir says; nlink of directories is 2 +
    subdirectories; '..' leads back; no name is listed twice."""
    stack = [top]
    for _ in range(10_000):
        if not stack:
            return
        directory = stack.pop()
        entries = await listing(fs, directory)
        names = [e[0] for e in entries]
        assert len(names) == len(set(names))
        subdirs = 0
        for name, inode in entries:
            attr = await fs.lookup(directory, name, R)
            assert attr.inode == inode
            if stat.S_ISDIR(attr.mode):
                subdirs += 1
                stack.append(attr.inode)
                assert (await fs.lookup(attr.inode, b"..", R)).inode == directory
        assert (await fs.getattr(directory, R)).nlink == 2 + subdirs
    raise AssertionError("tree too deep")


async def listing(fs: FsApi, directory: InodeId, batch: int = 3) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    cookie = 0
    for _ in range(100_000):
        entries = await fs.readdir(directory, cookie, batch, R)
        if not entries:
            return out
        out.extend((e.name, e.attr.inode) for e in entries)
        cookie = entries[-1].cookie
    raise AssertionError("readdir never ended")


async def fails(code: int, call: object) -> None:
    assert hasattr(call, "__await__")
    with pytest.raises(FsError) as info:
        await call
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got {info.value}"


async def new_file(env: Env, name: bytes, data: bytes = b"", mode: int = 0o644,
                   cred: Cred = R) -> InodeId:
    fh, attr = await env.fs.create(env.top, name, mode, CREAT | os.O_EXCL, cred)
    if data:
        assert await env.fs.write(fh, 0, data) == len(data)
    await env.fs.release(fh)
    return attr.inode


# --------------------------------------------------------------------------- data


async def test_write_read_sizes_eof_and_holes(env: Env) -> None:
    fs = env.fs
    fh, attr = await fs.create(env.top, b"f", 0o644, CREAT, R)
    assert attr.size == 0 and stat.S_ISREG(attr.mode)
    assert await fs.write(fh, 0, b"hello") == 5
    assert (await fs.getattr(attr.inode, R)).size == 5  # visible before any flush
    assert await fs.write(fh, 10, b"world") == 5
    assert await fs.read(fh, 0, 100) == b"hello" + bytes(5) + b"world"
    assert await fs.read(fh, 15, 10) == b""
    assert await fs.read(fh, 12, 100) == b"rld"
    await fs.flush(fh)
    await fs.release(fh)
    fh = await fs.open(attr.inode, RO, R)
    assert await fs.read(fh, 3, 4) == b"lo\0\0"
    await fs.release(fh)
    assert (await fs.getattr(attr.inode, R)).size == 15


async def test_truncate_shrinks_and_regrows_with_zeros(env: Env) -> None:
    fs = env.fs
    inode = await new_file(env, b"t", b"abcdefghij")
    fh = await fs.open(inode, RW, R)
    attr = await fs.setattr(inode, SetAttrFields(size=4), R)
    assert attr.size == 4
    assert await fs.read(fh, 0, 100) == b"abcd"
    attr = await fs.setattr(inode, SetAttrFields(size=8), R)
    assert await fs.read(fh, 0, 100) == b"abcd" + bytes(4)  # the old tail does not come back
    await fs.release(fh)
    # Truncate without any open file (truncate(2) on a path), past a chunk boundary.
    await fs.setattr(inode, SetAttrFields(size=CHUNK_SIZE + 3), R)
    await fs.setattr(inode, SetAttrFields(size=2), R)
    fh = await fs.open(inode, RO, R)
    assert await fs.read(fh, 0, 100) == b"ab"
    await fs.release(fh)


async def test_o_trunc_o_append_and_create_of_existing(env: Env) -> None:
    fs = env.fs
    inode = await new_file(env, b"a", b"0123456789")
    fh = await fs.open(inode, WO | os.O_APPEND, R)
    await fs.write(fh, 0, b"AB")  # lands at the end whatever the offset says
    await fs.release(fh)
    fh, attr = await fs.create(env.top, b"a", 0o600, CREAT, R)  # no O_EXCL: opens it
    assert attr.inode == inode and attr.size == 12
    assert await fs.read(fh, 0, 100) == b"0123456789AB"
    await fs.release(fh)
    await fails(errno.EEXIST, fs.create(env.top, b"a", 0o600, CREAT | os.O_EXCL, R))
    fh = await fs.open(inode, RW | os.O_TRUNC, R)
    assert (await fs.getattr(inode, R)).size == 0
    await fs.write(fh, 0, b"new")
    await fs.release(fh)
    fh = await fs.open(inode, RO, R)
    assert await fs.read(fh, 0, 100) == b"new"
    await fs.release(fh)


async def test_times_and_mode_set_after_unflushed_writes_stick(env: Env) -> None:
    fs = env.fs
    fh, attr = await fs.create(env.top, b"timed", 0o644, CREAT, ALICE)
    await fs.write(fh, 0, b"written, then the time set, then closed (tar, cp -p)")
    await fs.setattr(attr.inode, SetAttrFields(atime_ns=1_000_000_000,
                                               mtime_ns=2_000_000_000), ALICE)
    await fs.write(FileHandle(fh), 0, b"W")  # a later write moves mtime again ...
    await fs.setattr(attr.inode, SetAttrFields(mtime_ns=3_000_000_000, mode=0o2755), ALICE)
    await fs.flush(fh)
    await fs.release(fh)
    after = await fs.getattr(attr.inode, R)  # ... and the last setattr wins over the flush
    assert (after.atime_ns, after.mtime_ns, stat.S_IMODE(after.mode)) == (
        1_000_000_000, 3_000_000_000, 0o2755)
    fh = await fs.open(attr.inode, RO, R)
    assert (await fs.read(fh, 0, 7)) == b"Written"
    await fs.release(fh)


async def test_handles_check_their_access_mode(env: Env) -> None:
    fs = env.fs
    inode = await new_file(env, b"m", b"data")
    ro = await fs.open(inode, RO, R)
    wo = await fs.open(inode, WO, R)
    await fails(errno.EBADF, fs.write(ro, 0, b"x"))
    await fails(errno.EBADF, fs.read(wo, 0, 1))
    await fails(errno.EINVAL, fs.read(ro, -1, 1))
    await fs.release(ro)
    await fs.release(wo)
    await fails(errno.EBADF, fs.release(ro))
    await fails(errno.EBADF, fs.read(FileHandle(999_999), 0, 1))


async def test_two_handles_see_each_others_writes_after_flush(env: Env) -> None:
    fs = env.fs
    fh1, attr = await fs.create(env.top, b"shared", 0o644, CREAT, R)
    fh2 = await fs.open(attr.inode, RW, R)
    await fs.write(fh1, 0, b"one")
    await fs.write(fh2, 1, b"TWO")  # the later write wins where they overlap
    await fs.flush(fh1)
    assert await fs.read(fh2, 0, 10) == b"oTWO"
    await fs.release(fh1)
    await fs.release(fh2)


async def test_orphan_lives_until_its_last_release(env: Env) -> None:
    fs = env.fs
    fh, attr = await fs.create(env.top, b"o", 0o644, CREAT, R)
    await fs.write(fh, 0, b"still here")
    await fs.unlink(env.top, b"o", R)
    await fails(errno.ENOENT, fs.lookup(env.top, b"o", R))
    assert (await fs.getattr(attr.inode, R)).nlink == 0
    await fs.write(fh, 10, b"!")
    assert await fs.read(fh, 0, 100) == b"still here!"
    await fs.release(fh)
    await fails(errno.ENOENT, fs.getattr(attr.inode, R))


# --------------------------------------------------------------------------- namespace


async def test_directories_links_and_symlinks(env: Env) -> None:
    fs = env.fs
    d = await fs.mkdir(env.top, b"d", 0o755, R)
    assert d.nlink == 2 and (await fs.getattr(env.top, R)).nlink == 3
    f = await new_file(env, b"f", b"x")
    linked = await fs.link(f, d.inode, b"hard", R)
    assert linked.inode == f and linked.nlink == 2
    await fails(errno.EEXIST, fs.link(f, d.inode, b"hard", R))
    await fails(errno.EPERM, fs.link(d.inode, env.top, b"dirlink", R))
    s = await fs.symlink(env.top, b"s", b"d/hard", R)
    assert stat.S_ISLNK(s.mode) and s.size == 6
    assert await fs.readlink(s.inode, R) == b"d/hard"
    await fails(errno.EINVAL, fs.readlink(f, R))
    await fails(errno.ELOOP, fs.open(s.inode, RO, R))
    await fails(errno.ENOTEMPTY, fs.rmdir(env.top, b"d", R))
    await fails(errno.EISDIR, fs.unlink(env.top, b"d", R))
    await fails(errno.ENOTDIR, fs.rmdir(env.top, b"f", R))
    await fs.unlink(d.inode, b"hard", R)
    assert (await fs.getattr(f, R)).nlink == 1
    await fs.rmdir(env.top, b"d", R)
    await fails(errno.ENOENT, fs.lookup(env.top, b"d", R))
    await fs.mknod(env.top, b"fifo", stat.S_IFIFO | 0o600, 0, R)
    await fails(errno.EEXIST, fs.mkdir(env.top, b"fifo", 0o755, R))


async def test_rename_flags_and_loops(env: Env) -> None:
    fs = env.fs
    a = await new_file(env, b"a", b"A")
    b = await new_file(env, b"b", b"B")
    await fails(errno.EEXIST, fs.rename(env.top, b"a", env.top, b"b", RENAME_NOREPLACE, R))
    await fs.rename(env.top, b"a", env.top, b"b", RENAME_EXCHANGE, R)
    assert (await fs.lookup(env.top, b"a", R)).inode == b
    await fs.rename(env.top, b"a", env.top, b"b", 0, R)  # replaces b (which was a)
    assert (await fs.lookup(env.top, b"b", R)).inode == b
    await fails(errno.ENOENT, fs.getattr(a, R))
    d = await fs.mkdir(env.top, b"d", 0o755, R)
    sub = await fs.mkdir(d.inode, b"sub", 0o755, R)
    await fails(errno.EINVAL, fs.rename(env.top, b"d", sub.inode, b"loop", 0, R))
    await fs.rename(d.inode, b"sub", env.top, b"moved", 0, R)
    assert (await fs.lookup(sub.inode, b"..", R)).inode == env.top


async def test_readdir_resumes_at_cookies_while_entries_change(env: Env) -> None:
    fs = env.fs
    for i in range(10):
        await fs.mknod(env.top, b"n%d" % i, stat.S_IFREG | 0o644, 0, R)
    first = await fs.readdir(env.top, 0, 4, R)
    assert [e.name for e in first] == [b"n0", b"n1", b"n2", b"n3"]
    await fs.unlink(env.top, b"n1", R)  # before the cookie
    await fs.unlink(env.top, b"n6", R)  # after it: not listed
    await fs.mknod(env.top, b"new", stat.S_IFREG | 0o644, 0, R)  # comes last
    rest: list[bytes] = []
    cookie = first[-1].cookie
    for _ in range(20):
        page = await fs.readdir(env.top, cookie, 2, R)
        if not page:
            break
        rest.extend(e.name for e in page)
        cookie = page[-1].cookie
    assert rest == [b"n4", b"n5", b"n7", b"n8", b"n9", b"new"]


# --------------------------------------------------------------------------- permissions


async def test_permissions_for_other_users(env: Env) -> None:
    fs = env.fs
    private = await new_file(env, b"private", b"secret", mode=0o600)
    await fails(errno.EACCES, fs.open(private, RO, ALICE))
    mine = await new_file(env, b"mine", b"", mode=0o644, cred=ALICE)
    assert (await fs.getattr(mine, R)).uid == ALICE.uid
    await fails(errno.EACCES, fs.open(mine, WO, BOB))
    await fails(errno.EPERM, fs.setattr(mine, SetAttrFields(mode=0o666), BOB))
    await fs.setattr(mine, SetAttrFields(mode=0o666), ALICE)
    fh = await fs.open(mine, WO, BOB)
    await fs.write(fh, 0, b"bob was here")
    await fs.release(fh)
    await fails(errno.EPERM, fs.setattr(mine, SetAttrFields(uid=BOB.uid), ALICE))
    await fs.setattr(env.top, SetAttrFields(mode=0o1777), R)  # sticky
    await fails(errno.EPERM, fs.unlink(env.top, b"mine", BOB))
    await fs.unlink(env.top, b"mine", ALICE)
    closed = await fs.mkdir(env.top, b"closed", 0o755, R)
    await fails(errno.EACCES, fs.mkdir(closed.inode, b"x", 0o755, ALICE))


async def test_a_non_root_write_clears_setuid(env: Env) -> None:
    fs = env.fs
    inode = await new_file(env, b"suid", b"", mode=0o4777)
    assert stat.S_IMODE((await fs.getattr(inode, R)).mode) == 0o4777
    fh = await fs.open(inode, WO, ALICE)
    await fs.write(fh, 0, b"x")
    await fs.flush(fh)
    await fs.release(fh)
    assert stat.S_IMODE((await fs.getattr(inode, R)).mode) == 0o777


async def test_xattrs(env: Env) -> None:
    fs = env.fs
    inode = await new_file(env, b"x", b"")
    await fs.setxattr(inode, b"user.a", b"1", 0, R)
    await fails(errno.EEXIST, fs.setxattr(inode, b"user.a", b"2", XATTR_CREATE, R))
    await fails(errno.ENODATA, fs.setxattr(inode, b"user.b", b"2", XATTR_REPLACE, R))
    await fs.setxattr(inode, b"user.b", b"22", 0, R)
    assert await fs.getxattr(inode, b"user.b", R) == b"22"
    assert sorted(await fs.listxattr(inode, R)) == [b"user.a", b"user.b"]
    await fs.removexattr(inode, b"user.a", R)
    await fails(errno.ENODATA, fs.getxattr(inode, b"user.a", R))
    await fails(errno.ENOTSUP, fs.setxattr(inode, b"system.x", b"", 0, R))


async def test_access_and_missing_names(env: Env) -> None:
    fs = env.fs
    inode = await new_file(env, b"r", b"", mode=0o640)
    await fs.access(inode, os.R_OK | os.W_OK, R)
    await fails(errno.EACCES, fs.access(inode, os.R_OK, ALICE))
    await fails(errno.ENOENT, fs.lookup(env.top, b"nope", R))
    await fails(errno.ENAMETOOLONG, fs.lookup(env.top, b"n" * 256, R))
    assert (await fs.lookup(env.top, b".", R)).inode == env.top
    with trio.fail_after(10):
        st = await fs.statfs(R)
    assert st.blocks >= st.blocks_free >= 0
