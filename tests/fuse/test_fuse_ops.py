"""Every operation through a real mount (memfs backend), as root."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.ddfs_mount import DdfsMount

LIBC = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100


@pytest.fixture(scope="module")
def mount() -> Iterator[DdfsMount]:
    with DdfsMount() as m:
        yield m


@pytest.fixture
def d(mount: DdfsMount, request: pytest.FixtureRequest) -> Path:
    path: Path = mount.mountpoint / request.node.name
    path.mkdir()
    return path


def errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    return 0


def renameat2(old: Path, new: Path, flags: int) -> None:
    rc = LIBC.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags)
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_mount_is_listed_with_its_options(mount: DdfsMount) -> None:
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        line = next(x for x in info if f" {mount.mountpoint} " in x)
    assert "fuse.ddfs" in line and "allow_other" in line and "default_permissions" in line
    assert os.statvfs(mount.mountpoint).f_namemax == 255


def test_create_write_read_append_truncate(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"hello")
    assert f.read_bytes() == b"hello"
    with open(f, "ab") as out:
        out.write(b" world")
    assert f.read_bytes() == b"hello world"
    os.truncate(f, 5)
    assert f.read_bytes() == b"hello"
    with open(f, "r+b") as rw:
        rw.truncate(2)  # ftruncate
        rw.seek(0)
        assert rw.read() == b"he"
    with open(f, "wb") as out:  # O_TRUNC
        out.write(b"new")
    assert f.read_bytes() == b"new" and f.stat().st_size == 3


def test_large_and_sparse_files(d: Path) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    (d / "big").write_bytes(big)
    assert (d / "big").read_bytes() == big
    fd = os.open(d / "sparse", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"end", 1 << 30)
        os.fsync(fd)
        st = os.fstat(fd)
        assert st.st_size == (1 << 30) + 3
        assert st.st_blocks * 512 < 1 << 20  # the hole takes no space
        assert os.pread(fd, 8, 1 << 20) == bytes(8)
        assert errno_of(os.pwrite, fd, b"x", 1 << 44) == errno.EFBIG
    finally:
        os.close(fd)


def test_unlinked_open_file_stays_usable(d: Path, mount: DdfsMount) -> None:
    free_before = os.statvfs(mount.mountpoint).f_ffree
    fd = os.open(d / "orphan", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"before")
        os.unlink(d / "orphan")
        assert not (d / "orphan").exists()
        os.write(fd, b" after")
        assert os.pread(fd, 100, 0) == b"before after"
        assert os.fstat(fd).st_nlink == 0
        assert os.statvfs(mount.mountpoint).f_ffree == free_before - 1
    finally:
        os.close(fd)
    # release frees the orphan (the kernel sends it asynchronously after close)
    deadline = time.monotonic() + 10
    while os.statvfs(mount.mountpoint).f_ffree != free_before:
        assert time.monotonic() < deadline, "the orphan was never freed"
        time.sleep(0.01)


def test_links_symlinks_and_special_files(d: Path) -> None:
    (d / "a").write_bytes(b"x")
    os.link(d / "a", d / "b")
    assert (d / "a").stat().st_nlink == 2 and (d / "a").stat().st_ino == (d / "b").stat().st_ino
    os.symlink("a", d / "s")
    assert os.readlink(d / "s") == "a" and (d / "s").read_bytes() == b"x"
    assert stat.S_ISLNK(os.lstat(d / "s").st_mode)
    os.mkfifo(d / "fifo", 0o640)
    assert stat.S_ISFIFO(os.stat(d / "fifo").st_mode)
    os.mknod(d / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(d / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    assert os.stat(d / "chr").st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.stat(d / "blk").st_mode)
    # The mount is nodev (libfuse's default): device nodes exist but do not open.
    assert errno_of(open, d / "chr", "rb") == errno.EACCES
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(d / "sock"))
        assert stat.S_ISSOCK(os.stat(d / "sock").st_mode)
    finally:
        sock.close()
    assert errno_of(os.link, d, d / "dirlink") == errno.EPERM


def test_rename_and_its_flags(d: Path) -> None:
    (d / "a").write_bytes(b"A")
    (d / "b").write_bytes(b"B")
    (d / "sub").mkdir()
    os.rename(d / "a", d / "sub" / "a")
    assert (d / "sub" / "a").read_bytes() == b"A"
    assert errno_of(renameat2, d / "sub" / "a", d / "b", RENAME_NOREPLACE) == errno.EEXIST
    renameat2(d / "sub" / "a", d / "b", RENAME_EXCHANGE)
    assert (d / "b").read_bytes() == b"A" and (d / "sub" / "a").read_bytes() == b"B"
    assert errno_of(os.rename, d, d / "sub" / "inside") == errno.EINVAL
    (d / "e").mkdir()
    (d / "e" / "x").write_bytes(b"")
    assert errno_of(os.rename, d / "sub", d / "e") == errno.ENOTEMPTY
    os.rename(d / "b", d / "sub" / "a")  # replace
    assert (d / "sub" / "a").read_bytes() == b"A" and not (d / "b").exists()


def test_attributes(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"")
    os.chmod(f, 0o4751)
    assert stat.S_IMODE(f.stat().st_mode) == 0o4751
    os.chown(f, 1234, 5678)
    st = f.stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert not st.st_mode & stat.S_ISUID  # chown kills set-uid
    os.utime(f, ns=(1_000_000_123, 2_000_000_456))
    st = f.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    os.utime(f)  # UTIME_NOW
    assert f.stat().st_mtime_ns > 2_000_000_456
    (d / "sub").mkdir()
    assert d.stat().st_nlink == 3


def test_extended_attributes(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"")
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "user.b", b"x" * 1000)
    assert os.getxattr(f, "user.a") == b"1"
    assert sorted(os.listxattr(f)) == ["user.a", "user.b"]
    assert errno_of(os.setxattr, f, "user.a", b"2", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, f, "user.c", b"2", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(f, "user.a", b"2", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.a") == b"2"
    buf = ctypes.create_string_buffer(10)
    rc = LIBC.getxattr(bytes(f), b"user.b", buf, ctypes.c_size_t(10))
    assert rc == -1 and ctypes.get_errno() == errno.ERANGE
    os.removexattr(f, "user.a")
    assert errno_of(os.getxattr, f, "user.a") == errno.ENODATA
    os.setxattr(d, "user.dir", b"on a directory")
    assert os.getxattr(d, "user.dir") == b"on a directory"


def test_limits_and_errors(d: Path) -> None:
    assert errno_of((d / ("x" * 256)).write_bytes, b"") == errno.ENAMETOOLONG
    (d / ("x" * 255)).write_bytes(b"")
    assert errno_of(os.symlink, "t" * 5000, d / "long") == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, d / ("x" * 255)) == errno.EEXIST
    assert errno_of(os.rmdir, d) == errno.ENOTEMPTY
    assert errno_of(os.open, d / "missing", os.O_RDONLY) == errno.ENOENT
    assert errno_of(os.setxattr, d / ("x" * 255), "system.posix_acl_access", b"") in (
        errno.ENOTSUP, errno.EOPNOTSUPP,
    )


def test_readdir_while_removing_lists_every_name_once(d: Path) -> None:
    names = {f"f{i:04d}" for i in range(600)}
    for name in names:
        (d / name).write_bytes(b"")
    seen = []
    with os.scandir(d) as entries:
        for count, entry in enumerate(entries):
            seen.append(entry.name)
            if count % 10 == 0:
                os.unlink(d / entry.name)  # already listed: removing it must not skip others
    assert sorted(seen) == sorted(names)
    assert len(os.listdir(d)) == 600 - 60


def test_fsync_fdatasync_and_statfs(d: Path, mount: DdfsMount) -> None:
    fd = os.open(d / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"x" * 100_000)
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    sv = os.statvfs(mount.mountpoint)
    assert sv.f_blocks > sv.f_bfree > 0 and sv.f_files > sv.f_ffree > 0


def test_the_kernel_forgets_exactly_what_it_was_given(d: Path) -> None:
    """After readdirplus entries, lookups, creates and links, dropping the
    kernel's dentry and inode caches makes it forget them all; a count that
    went below zero is logged as an error, which fails the module's log check."""
    for i in range(200):
        (d / f"f{i}").write_bytes(b"x")
    os.link(d / "f0", d / "hard")
    os.symlink("f1", d / "sym")
    assert len(os.listdir(d)) == 202
    for i in range(0, 200, 7):
        os.stat(d / f"f{i}")
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as knob:
        knob.write("2\n")  # dentries and inodes only: the page cache stays
    assert sorted(os.listdir(d))[:3] == ["f0", "f1", "f10"]
    assert (d / "hard").read_bytes() == b"x" and os.readlink(d / "sym") == "f1"
