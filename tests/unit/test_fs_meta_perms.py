"""Permission rules: rwx classes, sticky bit, setgid directories, chmod/chown,
truncate and times, access(2)."""

from __future__ import annotations

import errno
import stat

import pytest

from fs.meta.commands import Access, Mkdir, Mknod, SetAttr, Unlink
from fs.meta.perms import R_OK, W_OK, X_OK, permitted
from fs.meta.results import AttrResult, Done
from fs.types import MAX_FILE_SIZE, Attr, Cred, InodeId, SetAttrFields
from tests.unit.test_fs_meta_support import (
    ALICE,
    BOB,
    CAROL,
    ROOT,
    ROOT_DIR,
    FsHarness,
    Session,
    code,
    fs,
)

__all__ = ["fs"]
D = InodeId(ROOT_DIR)


@pytest.mark.parametrize(
    ("cred", "mode", "mask", "ok"),
    [
        (ALICE, 0o700, R_OK | W_OK | X_OK, True),  # owner class
        (ALICE, 0o077, R_OK, False),  # owner class even if group/other could
        (CAROL, 0o070, R_OK | X_OK, True),  # supplementary group
        (CAROL, 0o707, R_OK, False),  # group class applies, not other
        (BOB, 0o004, R_OK, True),  # other class
        (BOB, 0o770, R_OK, False),
        (Cred(0, 0), 0o000, R_OK | W_OK, True),  # root reads and writes anything
        (Cred(0, 0), 0o644, X_OK, False),  # root executes only with some x bit
        (Cred(0, 0), 0o010, X_OK, True),
    ],
)
def test_rwx_classes_owner_then_group_then_other(
    cred: Cred, mode: int, mask: int, ok: bool
) -> None:
    assert permitted(stat.S_IFREG | mode, ALICE.uid, ALICE.gid, cred, mask) is ok


def test_root_may_search_any_directory() -> None:
    assert permitted(stat.S_IFDIR | 0o000, 5, 5, Cred(0, 0), X_OK)


def test_access_reports_eacces_and_checks_the_mask(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f", 0o640, ROOT)
    assert fs.ask(Access(f.inode, R_OK, ROOT)) == Done()
    assert code(fs.ask(Access(f.inode, R_OK, BOB))) == errno.EACCES
    assert fs.ask(Access(f.inode, 0, BOB)) == Done()  # F_OK: it exists
    assert code(fs.ask(Access(f.inode, 8, ROOT))) == errno.EINVAL
    assert code(fs.ask(Access(InodeId(77), 0, ROOT))) == errno.ENOENT


def test_sticky_directory_only_owner_of_file_or_directory_or_root_unlinks(
    fs: FsHarness,
) -> None:
    s = fs.session()
    tmp = s.mkdir(ROOT_DIR, b"tmp", 0o1777)
    s.mknod(tmp.inode, b"a", 0o666, ALICE)
    s.mknod(tmp.inode, b"b", 0o666, ALICE)
    assert s.fails(Unlink(tmp.inode, b"a", BOB)) == errno.EPERM
    s.ok(Unlink(tmp.inode, b"a", ALICE))  # the file's owner
    s.ok(Unlink(tmp.inode, b"b", ROOT))  # root (who also owns the directory)


def test_sticky_directory_owner_may_unlink_others_files(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    box = s.mkdir(pub.inode, b"box", 0o1777, ALICE)
    s.mknod(box.inode, b"bobs", 0o644, BOB)
    s.ok(Unlink(box.inode, b"bobs", ALICE))


def _setgid_dir(s: Session) -> Attr:
    """A directory 02777 of group 4242 (mkdir drops S_ISGID from its mode, like Linux)."""
    d = s.attr_of(Mkdir(D, b"shared", 0o2777, ROOT))
    assert not d.mode & stat.S_ISGID
    return s.attr_of(SetAttr(d.inode, SetAttrFields(mode=0o2777, gid=4242), ROOT))


def test_setgid_directory_new_entries_inherit_group_and_subdirs_the_bit(
    fs: FsHarness,
) -> None:
    s = fs.session()
    shared = _setgid_dir(s)
    f = s.mknod(shared.inode, b"f", 0o644, ALICE)
    sub = s.mkdir(shared.inode, b"sub", 0o755, ALICE)
    assert f.gid == 4242 and not f.mode & stat.S_ISGID
    assert sub.gid == 4242 and sub.mode & stat.S_ISGID


def test_setgid_directory_drops_sgid_of_new_file_for_non_members(fs: FsHarness) -> None:
    s = fs.session()
    shared = _setgid_dir(s)
    f = s.attr_of(Mknod(shared.inode, b"f", stat.S_IFREG | 0o2755, 0, ALICE))
    assert not f.mode & stat.S_ISGID
    member = Cred(1000, 1000, (4242,))
    g = s.attr_of(Mknod(shared.inode, b"g", stat.S_IFREG | 0o2755, 0, member))
    assert g.mode & stat.S_ISGID


def test_chmod_only_by_owner_or_root(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.mknod(pub.inode, b"f", 0o644, ALICE)
    assert s.fails(SetAttr(f.inode, SetAttrFields(mode=0o600), BOB)) == errno.EPERM
    changed = s.attr_of(SetAttr(f.inode, SetAttrFields(mode=0o4600), ALICE))
    assert changed.mode == stat.S_IFREG | 0o4600 and changed.ctime_ns > f.ctime_ns
    assert s.attr_of(SetAttr(f.inode, SetAttrFields(mode=0o666), ROOT)).mode & 0o777 == 0o666


def test_anyone_may_make_a_chmod_that_only_clears_setid_bits(fs: FsHarness) -> None:
    """The kernel sends that chmod with a non-owner writer's credentials
    (pjdfstest chmod/12); anything more than clearing set-id bits stays EPERM."""
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.mknod(pub.inode, b"f", 0o6777, ALICE)
    assert s.fails(SetAttr(f.inode, SetAttrFields(mode=0o6777), BOB)) == errno.EPERM  # no-op
    assert s.fails(SetAttr(f.inode, SetAttrFields(mode=0o0775), BOB)) == errno.EPERM
    assert s.fails(SetAttr(f.inode, SetAttrFields(mode=0o7777), BOB)) == errno.EPERM  # adds
    # set-uid cleared; set-gid too, as for any chmod by a caller outside the group
    assert s.attr_of(SetAttr(f.inode, SetAttrFields(mode=0o2777), BOB)).mode & 0o7777 == 0o777
    g = s.mknod(pub.inode, b"g", 0o6777, ALICE)
    assert s.attr_of(SetAttr(g.inode, SetAttrFields(mode=0o2777), CAROL)).mode & 0o7777 == 0o2777


def test_chmod_by_non_member_clears_setgid(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.mknod(pub.inode, b"f", 0o644, ALICE)
    s.ok(SetAttr(f.inode, SetAttrFields(gid=4242), ROOT))
    cleared = s.attr_of(SetAttr(f.inode, SetAttrFields(mode=0o2755), ALICE))
    assert not cleared.mode & stat.S_ISGID
    kept = s.attr_of(SetAttr(f.inode, SetAttrFields(mode=0o2755), Cred(1000, 1000, (4242,))))
    assert kept.mode & stat.S_ISGID


def test_only_root_chowns(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.mknod(pub.inode, b"f", 0o644, ALICE)
    assert s.fails(SetAttr(f.inode, SetAttrFields(uid=BOB.uid), ALICE)) == errno.EPERM
    assert s.fails(SetAttr(f.inode, SetAttrFields(uid=ALICE.uid), BOB)) == errno.EPERM
    s.ok(SetAttr(f.inode, SetAttrFields(uid=ALICE.uid), ALICE))  # "to itself" is allowed
    assert s.attr_of(SetAttr(f.inode, SetAttrFields(uid=BOB.uid), ROOT)).uid == BOB.uid


def test_owner_may_chgrp_only_to_a_group_it_belongs_to(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    member = Cred(1000, 1000, (77,))
    f = s.mknod(pub.inode, b"f", 0o644, member)
    assert s.fails(SetAttr(f.inode, SetAttrFields(gid=78), member)) == errno.EPERM
    assert s.attr_of(SetAttr(f.inode, SetAttrFields(gid=77), member)).gid == 77
    assert s.fails(SetAttr(f.inode, SetAttrFields(gid=77), Cred(1001, 77))) == errno.EPERM


def test_chown_clears_setuid_and_group_exec_setgid_on_regular_files(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f", 0o6755)
    after = s.attr_of(SetAttr(f.inode, SetAttrFields(uid=5), ROOT))
    assert after.mode & 0o7777 == 0o0755
    g = s.mknod(ROOT_DIR, b"g", 0o6745)  # S_ISGID without group-exec: kept (mandatory locking)
    assert s.attr_of(SetAttr(g.inode, SetAttrFields(gid=5), ROOT)).mode & 0o7777 == 0o2745
    d = s.mkdir(ROOT_DIR, b"d", 0o755)
    s.ok(SetAttr(d.inode, SetAttrFields(mode=0o2755), ROOT))
    assert s.attr_of(SetAttr(d.inode, SetAttrFields(uid=5), ROOT)).mode & stat.S_ISGID


def test_truncate_needs_write_permission_and_a_regular_file(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f", 0o644)
    d = s.mkdir(ROOT_DIR, b"d")
    fifo = s.attr_of(Mknod(D, b"p", stat.S_IFIFO | 0o666, 0, ROOT))
    assert s.fails(SetAttr(f.inode, SetAttrFields(size=0), ALICE)) == errno.EACCES
    assert s.fails(SetAttr(d.inode, SetAttrFields(size=0), ROOT)) == errno.EISDIR
    assert s.fails(SetAttr(fifo.inode, SetAttrFields(size=0), ROOT)) == errno.EINVAL
    big = SetAttrFields(size=MAX_FILE_SIZE + 1)
    assert s.fails(SetAttr(f.inode, big, ROOT)) == errno.EFBIG
    grown = s.attr_of(SetAttr(f.inode, SetAttrFields(size=MAX_FILE_SIZE), ROOT))
    assert grown.size == MAX_FILE_SIZE and grown.mtime_ns == grown.ctime_ns > f.mtime_ns


def test_truncate_by_non_root_clears_setuid_and_setgid(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.mknod(pub.inode, b"f", 0o6777, ALICE)
    assert s.attr_of(SetAttr(f.inode, SetAttrFields(size=10), BOB)).mode & 0o7777 == 0o777
    g = s.mknod(pub.inode, b"g", 0o6777, ALICE)
    assert s.attr_of(SetAttr(g.inode, SetAttrFields(size=10), ROOT)).mode & 0o7777 == 0o6777


def test_explicit_times_need_the_owner_now_needs_write_permission(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.mknod(pub.inode, b"f", 0o666, ALICE)
    r = s.mknod(pub.inode, b"r", 0o644, ALICE)
    stamp = SetAttrFields(atime_ns=123, mtime_ns=456)
    assert s.fails(SetAttr(f.inode, stamp, BOB)) == errno.EPERM
    mine = s.attr_of(SetAttr(f.inode, stamp, ALICE))
    assert (mine.atime_ns, mine.mtime_ns) == (123, 456) and mine.ctime_ns > f.ctime_ns
    now = s.attr_of(SetAttr(f.inode, stamp, BOB, times_now=True))  # BOB may write
    assert now.atime_ns == now.mtime_ns == now.ctime_ns
    assert s.fails(SetAttr(r.inode, stamp, BOB, times_now=True)) == errno.EACCES


def test_setattr_of_a_missing_inode_is_enoent(fs: FsHarness) -> None:
    s = fs.session()
    assert s.fails(SetAttr(InodeId(1234), SetAttrFields(mode=0o600), ROOT)) == errno.ENOENT


def test_mode_change_keeps_the_file_type(fs: FsHarness) -> None:
    s = fs.session()
    d = s.mkdir(ROOT_DIR, b"d")
    changed = s.ok(SetAttr(d.inode, SetAttrFields(mode=stat.S_IFREG | 0o700), ROOT))
    assert isinstance(changed, AttrResult) and changed.attr.mode == stat.S_IFDIR | 0o700
