"""Extended attributes: flags, ENODATA, limits (ERANGE, E2BIG), namespaces and permissions."""

from __future__ import annotations

import errno
import stat

import pytest

from fs.meta.attrs import XATTR_CREATE, XATTR_REPLACE
from fs.meta.commands import GetXattr, ListXattr, Mknod, RemoveXattr, SetXattr, Unlink
from fs.meta.results import DataResult, NamesResult
from fs.types import XATTR_NAME_MAX, XATTR_SIZE_MAX, InodeId
from tests.unit.test_fs_meta_support import (
    ALICE,
    BOB,
    ROOT,
    ROOT_DIR,
    FsHarness,
    code,
    fs,
)

__all__ = ["fs"]
D = InodeId(ROOT_DIR)


def test_set_get_list_remove(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f")
    s.ok(SetXattr(f.inode, b"user.b", b"2", 0, ROOT))
    s.ok(SetXattr(f.inode, b"user.a", b"1", 0, ROOT))
    assert fs.ask(GetXattr(f.inode, b"user.a", ROOT)) == DataResult(b"1")
    assert fs.ask(ListXattr(f.inode, ROOT)) == NamesResult((b"user.a", b"user.b"))
    s.ok(SetXattr(f.inode, b"user.a", b"", 0, ROOT))  # empty values are values
    assert fs.ask(GetXattr(f.inode, b"user.a", ROOT)) == DataResult(b"")
    s.ok(RemoveXattr(f.inode, b"user.a", ROOT))
    assert code(fs.ask(GetXattr(f.inode, b"user.a", ROOT))) == errno.ENODATA
    assert s.fails(RemoveXattr(f.inode, b"user.a", ROOT)) == errno.ENODATA
    assert fs.attr(f.inode).ctime_ns > f.ctime_ns


def test_xattr_create_fails_eexist_and_replace_fails_enodata(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f")
    assert s.fails(SetXattr(f.inode, b"user.k", b"v", XATTR_REPLACE, ROOT)) == errno.ENODATA
    s.ok(SetXattr(f.inode, b"user.k", b"v", XATTR_CREATE, ROOT))
    assert s.fails(SetXattr(f.inode, b"user.k", b"w", XATTR_CREATE, ROOT)) == errno.EEXIST
    s.ok(SetXattr(f.inode, b"user.k", b"w", XATTR_REPLACE, ROOT))
    both = XATTR_CREATE | XATTR_REPLACE
    assert s.fails(SetXattr(f.inode, b"user.k", b"x", both, ROOT)) == errno.EINVAL
    assert fs.ask(GetXattr(f.inode, b"user.k", ROOT)) == DataResult(b"w")


def test_xattr_name_and_value_limits_erange_and_e2big(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f")
    longest = b"user." + b"n" * (XATTR_NAME_MAX - 5)
    s.ok(SetXattr(f.inode, longest, b"v" * XATTR_SIZE_MAX, 0, ROOT))
    assert s.fails(SetXattr(f.inode, longest + b"n", b"v", 0, ROOT)) == errno.ERANGE
    assert s.fails(SetXattr(f.inode, b"", b"v", 0, ROOT)) == errno.ERANGE
    too_big = b"v" * (XATTR_SIZE_MAX + 1)
    assert s.fails(SetXattr(f.inode, b"user.big", too_big, 0, ROOT)) == errno.E2BIG


@pytest.mark.parametrize("name", [b"system.posix_acl_access", b"other.k", b"noprefix"])
def test_unsupported_namespaces_are_enotsup(fs: FsHarness, name: bytes) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f")
    assert s.fails(SetXattr(f.inode, name, b"v", 0, ROOT)) == errno.ENOTSUP
    assert code(fs.ask(GetXattr(f.inode, name, ROOT))) == errno.ENOTSUP


def test_user_xattrs_follow_file_permissions(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.mknod(pub.inode, b"f", 0o644, ALICE)
    s.ok(SetXattr(f.inode, b"user.k", b"v", 0, ALICE))
    assert s.fails(SetXattr(f.inode, b"user.k", b"w", 0, BOB)) == errno.EACCES
    assert fs.ask(GetXattr(f.inode, b"user.k", BOB)) == DataResult(b"v")  # r for others
    secret = s.mknod(pub.inode, b"secret", 0o600, ALICE)
    assert code(fs.ask(GetXattr(secret.inode, b"user.k", BOB))) == errno.EACCES


def test_user_xattrs_only_on_regular_files_and_directories(fs: FsHarness) -> None:
    s = fs.session()
    fifo = s.attr_of(Mknod(D, b"p", stat.S_IFIFO | 0o666, 0, ROOT))
    assert s.fails(SetXattr(fifo.inode, b"user.k", b"v", 0, ROOT)) == errno.EPERM
    assert code(fs.ask(GetXattr(fifo.inode, b"user.k", ROOT))) == errno.ENODATA
    d = s.mkdir(ROOT_DIR, b"d")
    s.ok(SetXattr(d.inode, b"user.k", b"v", 0, ROOT))


def test_user_xattrs_of_a_sticky_directory_only_by_its_owner(fs: FsHarness) -> None:
    s = fs.session()
    tmp = s.mkdir(ROOT_DIR, b"tmp", 0o1777)
    assert s.fails(SetXattr(tmp.inode, b"user.k", b"v", 0, ALICE)) == errno.EPERM
    s.ok(SetXattr(tmp.inode, b"user.k", b"v", 0, ROOT))


def test_trusted_xattrs_are_root_only_and_hidden_from_others(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.mknod(pub.inode, b"f", 0o666, ALICE)
    assert s.fails(SetXattr(f.inode, b"trusted.k", b"v", 0, ALICE)) == errno.EPERM
    s.ok(SetXattr(f.inode, b"trusted.k", b"v", 0, ROOT))
    s.ok(SetXattr(f.inode, b"user.k", b"v", 0, ALICE))
    assert code(fs.ask(GetXattr(f.inode, b"trusted.k", ALICE))) == errno.ENODATA
    assert fs.ask(ListXattr(f.inode, ALICE)) == NamesResult((b"user.k",))
    assert fs.ask(ListXattr(f.inode, ROOT)) == NamesResult((b"trusted.k", b"user.k"))


def test_security_xattrs_readable_by_all_writable_by_root(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f", 0o644)
    assert s.fails(SetXattr(f.inode, b"security.k", b"v", 0, ALICE)) == errno.EPERM
    s.ok(SetXattr(f.inode, b"security.k", b"v", 0, ROOT))
    assert fs.ask(GetXattr(f.inode, b"security.k", ALICE)) == DataResult(b"v")


def test_xattrs_go_with_the_inode(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f")
    s.ok(SetXattr(f.inode, b"user.k", b"v", 0, ROOT))
    s.ok(Unlink(D, b"f", ROOT))
    g = s.mknod(ROOT_DIR, b"g")
    assert fs.ask(ListXattr(g.inode, ROOT)) == NamesResult(())
    assert code(fs.ask(ListXattr(f.inode, ROOT))) == errno.ENOENT
    assert fs.fsck() == []  # which checks that no xattr row outlives its inode
