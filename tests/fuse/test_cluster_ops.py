"""The acceptance suite on the cluster backend, part 1: every kind of file-system
call through a real mount of a real cluster (3 metadata members, 3 chunk
servers), as root and as unprivileged users with supplementary groups.

Every test works in its own folder of the one shared mount (`cluster_dir`)
and ends with `ddfs fsck` finding nothing (the fixture's teardown).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tests.fuse.cluster_support import run_code_as
from tests.fuse.ddfs_mount import run_as

ALICE, BOB, STAFF = 1000, 1001, 2001
MiB = 1024 * 1024


def _errno(call: object, *args: object) -> int:
    try:
        call(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    return 0


def test_create_write_read_overwrite_append(cluster_dir: Path) -> None:
    f = cluster_dir / "data"
    data = bytearray(os.urandom(3 * MiB + 17))
    f.write_bytes(data)
    assert f.read_bytes() == data and f.stat().st_size == len(data)
    fd = os.open(f, os.O_RDWR)
    try:
        os.pwrite(fd, b"X" * 1000, MiB - 500)  # across a 1 MiB write boundary
        data[MiB - 500:MiB + 500] = b"X" * 1000
        os.fsync(fd)
        assert os.pread(fd, 2000, MiB - 1000) == data[MiB - 1000:MiB + 1000]
    finally:
        os.close(fd)
    with open(f, "ab") as appender:
        appender.write(b"tail")
    assert f.read_bytes() == data + b"tail"


def test_rename_replace_and_hard_links(cluster_dir: Path) -> None:
    (cluster_dir / "a").write_bytes(b"A")
    (cluster_dir / "b").write_bytes(b"B")
    ino = (cluster_dir / "a").stat().st_ino
    os.rename(cluster_dir / "a", cluster_dir / "b")  # replaces b
    assert (cluster_dir / "b").read_bytes() == b"A" and (cluster_dir / "b").stat().st_ino == ino
    assert not (cluster_dir / "a").exists()
    (cluster_dir / "sub").mkdir()
    os.link(cluster_dir / "b", cluster_dir / "sub" / "link")
    assert (cluster_dir / "b").stat().st_nlink == 2
    os.rename(cluster_dir / "sub", cluster_dir / "moved")
    assert (cluster_dir / "moved" / "link").read_bytes() == b"A"
    os.unlink(cluster_dir / "b")
    assert (cluster_dir / "moved" / "link").stat().st_nlink == 1
    assert sorted(os.listdir(cluster_dir)) == ["moved"]


def test_symlinks(cluster_dir: Path) -> None:
    (cluster_dir / "target").write_text("through the link")
    os.symlink("target", cluster_dir / "rel")
    os.symlink("/nonexistent/x", cluster_dir / "dangling")
    assert os.readlink(cluster_dir / "rel") == "target"
    assert (cluster_dir / "rel").read_text() == "through the link"
    assert stat.S_ISLNK((cluster_dir / "dangling").lstat().st_mode)
    assert not (cluster_dir / "dangling").exists()
    os.symlink("loop", cluster_dir / "loop")
    assert _errno(os.stat, cluster_dir / "loop") == errno.ELOOP


def test_mknod_fifo_and_devices(cluster_dir: Path) -> None:
    os.mkfifo(cluster_dir / "fifo", 0o640)  # under the umask (022) of the test
    os.mknod(cluster_dir / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 7))
    os.mknod(cluster_dir / "blk", stat.S_IFBLK | 0o640, os.makedev(7, 3))
    fifo, chr_, blk = (os.lstat(cluster_dir / n) for n in ("fifo", "chr", "blk"))
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o640
    assert stat.S_ISCHR(chr_.st_mode) and chr_.st_rdev == os.makedev(1, 7)
    assert stat.S_ISBLK(blk.st_mode) and blk.st_rdev == os.makedev(7, 3)
    # The kernel runs a FIFO on a FUSE mount itself: data passes, nothing is stored.
    reader = os.open(cluster_dir / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        writer = os.open(cluster_dir / "fifo", os.O_WRONLY)
        os.write(writer, b"through the pipe")
        os.close(writer)
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)


def test_chmod_chown_and_setid_bits(cluster_dir: Path) -> None:
    f = cluster_dir / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o4755)
    assert stat.S_IMODE(f.stat().st_mode) == 0o4755
    os.chown(f, ALICE, STAFF)
    st = f.stat()
    assert (st.st_uid, st.st_gid) == (ALICE, STAFF)
    assert stat.S_IMODE(st.st_mode) == 0o755  # chown clears set-uid
    os.chmod(f, 0o6777)
    assert run_as(BOB, BOB, [], [["write", str(f), "by bob"]]) == ["ok"]
    assert stat.S_IMODE(f.stat().st_mode) == 0o777  # a non-owner's write clears both


def test_truncate_and_ftruncate_through_a_handle(cluster_dir: Path) -> None:
    f = cluster_dir / "f"
    f.write_bytes(b"0123456789")
    os.truncate(f, 4)
    assert f.read_bytes() == b"0123"
    os.truncate(f, 3 * MiB)
    assert f.read_bytes() == b"0123" + bytes(3 * MiB - 4)  # grown: zeros
    os.chmod(cluster_dir, 0o777)
    # A file created with mode 0 is writable through the descriptor that made it.
    code = (f"fd = os.open({str(cluster_dir / 'g')!r}, os.O_CREAT | os.O_RDWR, 0)\n"
            "os.ftruncate(fd, 100)\nprint('ok', end='')")
    assert run_code_as(ALICE, ALICE, [], code) == "ok"
    assert (cluster_dir / "g").stat().st_size == 100
    assert run_code_as(ALICE, ALICE, [], f"os.truncate({str(cluster_dir / 'g')!r}, 5)") == "EACCES"


def test_xattrs(cluster_dir: Path) -> None:
    f = cluster_dir / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.a", b"\x00binary\xff")
    os.setxattr(f, "user.b", b"")
    assert os.getxattr(f, "user.a") == b"\x00binary\xff"
    assert sorted(os.listxattr(f)) == ["user.a", "user.b"]
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.a", b"again", os.XATTR_CREATE)
    assert info.value.errno == errno.EEXIST
    os.removexattr(f, "user.a")
    assert _errno(os.getxattr, f, "user.a") == errno.ENODATA
    assert os.listxattr(f) == ["user.b"]


def test_unlink_while_open(cluster_dir: Path) -> None:
    f = cluster_dir / "orphan"
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, os.urandom(MiB))
        os.unlink(f)
        assert not f.exists() and os.fstat(fd).st_nlink == 0
        os.pwrite(fd, b"still writable", 10)
        os.fsync(fd)
        assert os.pread(fd, 14, 10) == b"still writable"
    finally:
        os.close(fd)  # the last close reclaims it: fsck must find no orphan
    assert os.listdir(cluster_dir) == []


def test_permissions_as_users_with_supplementary_groups(cluster_dir: Path) -> None:
    os.chmod(cluster_dir, 0o755)
    team = cluster_dir / "team"
    team.mkdir()
    os.chown(team, 0, STAFF)
    os.chmod(team, 0o2770)  # set-gid: entries take the group STAFF
    (cluster_dir / "private").write_text("secret")
    os.chmod(cluster_dir / "private", 0o600)
    ops: list[list[object]] = [
        ["touch", str(team / "by-member")], ["listdir", str(team)],
        ["read", str(cluster_dir / "private")], ["touch", str(cluster_dir / "top")],
    ]
    assert run_as(ALICE, ALICE, [STAFF], ops) == ["ok", ["by-member"], "EACCES", "EACCES"]
    assert run_as(BOB, BOB, [], ops) == ["EACCES", "EACCES", "EACCES", "EACCES"]
    st = (team / "by-member").stat()
    assert (st.st_uid, st.st_gid) == (ALICE, STAFF)
    os.chmod(team, 0o3777)  # sticky: only the entry's owner (or the folder's) removes it
    assert run_as(BOB, BOB, [], [["unlink", str(team / "by-member")]]) == ["EPERM"]
    assert run_as(ALICE, ALICE, [], [["unlink", str(team / "by-member")]]) == ["ok"]
