"""File data (truncate, holes, O_TRUNC, O_APPEND, writes through a descriptor
whose file mode forbids writing), extended attributes, and special files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.posix.support import ALICE, as_user, err, run_code_as


def test_truncate_to_a_larger_size_reads_as_zeros(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"abc")
    os.truncate(f, 100_000)
    assert f.read_bytes() == b"abc" + bytes(100_000 - 3)


def test_bytes_cut_by_a_truncate_do_not_come_back(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"0123456789")
    os.truncate(f, 2)
    os.truncate(f, 10)
    assert f.read_bytes() == b"01" + bytes(8)


def test_a_write_past_the_end_leaves_a_hole_of_zeros(d: Path) -> None:
    fd = os.open(d / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"end", 1_000_000)
        assert os.fstat(fd).st_size == 1_000_003
        assert os.pread(fd, 10, 500_000) == bytes(10)
    finally:
        os.close(fd)


def test_open_with_o_trunc_empties_the_file(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"old content")
    os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))
    assert f.stat().st_size == 0


def test_o_append_writes_at_the_end_whatever_the_offset(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"start")
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"+end")
    finally:
        os.close(fd)
    assert f.read_bytes() == b"start+end"


def test_truncate_without_write_permission_is_eacces(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"data")
    os.chmod(f, 0o644)
    assert as_user(ALICE, ["truncate", str(f), 1]) == ["EACCES"]
    assert f.read_bytes() == b"data"


def test_a_descriptor_opened_for_writing_writes_whatever_the_mode(d: Path) -> None:
    """A file created with mode 0 is written and truncated through the descriptor
    that created it (permission is checked at open only)."""
    os.chmod(d, 0o777)
    code = (f"fd = os.open({str(d / 'f')!r}, os.O_CREAT | os.O_RDWR, 0)\n"
            "os.write(fd, b'0123456789')\n"
            "os.ftruncate(fd, 4)\n"
            "print(os.pread(fd, 10, 0).decode(), end='')\n")
    assert run_code_as(ALICE, ALICE, [], code) == "0123"
    assert stat.S_IMODE((d / "f").stat().st_mode) == 0 and (d / "f").stat().st_size == 4


def test_xattrs_are_set_read_listed_and_removed(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"")
    os.setxattr(f, "user.a", b"\x00\xffbinary")
    os.setxattr(f, "user.empty", b"")
    assert os.getxattr(f, "user.a") == b"\x00\xffbinary" and os.getxattr(f, "user.empty") == b""
    assert sorted(os.listxattr(f)) == ["user.a", "user.empty"]
    os.removexattr(f, "user.a")
    assert os.listxattr(f) == ["user.empty"]
    assert err(os.getxattr, f, "user.a") == "ENODATA"


def test_xattr_create_of_an_existing_name_is_eexist(d: Path) -> None:
    (d / "f").write_bytes(b"")
    os.setxattr(d / "f", "user.a", b"1")
    assert err(os.setxattr, d / "f", "user.a", b"2", os.XATTR_CREATE) == "EEXIST"
    assert os.getxattr(d / "f", "user.a") == b"1"


def test_xattr_replace_of_a_missing_name_is_enodata(d: Path) -> None:
    (d / "f").write_bytes(b"")
    assert err(os.setxattr, d / "f", "user.a", b"2", os.XATTR_REPLACE) == "ENODATA"


def test_user_xattrs_on_a_symlink_are_eperm(d: Path) -> None:
    os.symlink("target", d / "link")
    assert err(os.setxattr, d / "link", "user.a", b"1", follow_symlinks=False) == "EPERM"


def test_trusted_xattrs_are_root_only(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"")
    os.chmod(f, 0o666)
    os.setxattr(f, "trusted.secret", b"root's")
    os.setxattr(f, "user.open", b"anyone's")
    assert as_user(ALICE, ["listxattr", str(f)], ["getxattr", str(f), "trusted.secret"]) == [
        ["user.open"], "ENODATA"]
    assert sorted(os.listxattr(f)) == ["trusted.secret", "user.open"]


def test_mknod_keeps_the_type_and_device_numbers(d: Path) -> None:
    os.mknod(d / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 7))
    os.mknod(d / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 3))
    os.mkfifo(d / "fifo", 0o600)
    chr_, blk, fifo = ((d / n).lstat() for n in ("chr", "blk", "fifo"))
    assert stat.S_ISCHR(chr_.st_mode) and chr_.st_rdev == os.makedev(1, 7)
    assert stat.S_ISBLK(blk.st_mode) and blk.st_rdev == os.makedev(7, 3)
    assert stat.S_ISFIFO(fifo.st_mode)


def test_mknod_of_a_device_needs_root(d: Path) -> None:
    os.chmod(d, 0o777)
    out = as_user(ALICE, ["mknod", str(d / "chr"), stat.S_IFCHR | 0o600, os.makedev(1, 7)],
                  ["mknod", str(d / "fifo"), stat.S_IFIFO | 0o600])
    assert out == ["EPERM", "ok"]
