"""memfs permissions: rwx classes, root, groups, sticky, set-gid, chmod/chown/utimes."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from fs import posix
from fs.types import ROOT_CRED, ROOT_INODE, Attr, Cred, InodeId, SetAttrFields
from tests.unit.memfs_support import ALICE, BOB, CAROL_IN_STAFF, fsck, new_core, raises_errno

R = ROOT_CRED


def attr(mode: int, uid: int = 1000, gid: int = 1000) -> Attr:
    return Attr(InodeId(5), mode, 1, uid, gid, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("mode", "cred", "mask", "allowed"),
    [
        (0o600, ALICE, posix.R_OK | posix.W_OK, True),  # owner class
        (0o077, ALICE, posix.R_OK, False),  # owner class applies even if others may
        (0o060, BOB, posix.R_OK, False),  # bob is not in group 1000
        (0o060, Cred(1001, 7, (1000,)), posix.W_OK, True),  # supplementary group
        (0o604, BOB, posix.R_OK, True),  # other class
        (0o000, R, posix.R_OK | posix.W_OK, True),  # root bypasses r/w
        (stat.S_IFREG | 0o600, R, posix.X_OK, False),  # ... but not x without any x bit
        (stat.S_IFREG | 0o001, R, posix.X_OK, True),
        (stat.S_IFDIR | 0o000, R, posix.X_OK, True),  # directories: root may search
    ],
)
def test_permission_classes(mode: int, cred: Cred, mask: int, allowed: bool) -> None:
    assert posix.may(attr(mode), cred, mask) is allowed


def test_namespace_changes_need_write_and_search_on_the_directory() -> None:
    core = new_core()
    d = core.mkdir(ROOT_INODE, b"d", 0o755, R).inode
    core.mknod(d, b"f", stat.S_IFREG | 0o666, 0, R)
    with raises_errno(errno.EACCES):
        core.mknod(d, b"g", stat.S_IFREG | 0o644, 0, ALICE)
    with raises_errno(errno.EACCES):
        core.unlink(d, b"f", ALICE)
    core.setattr(d, SetAttrFields(mode=0o711), R)
    with raises_errno(errno.EACCES):
        core.readdir(d, 0, 10, ALICE)
    assert core.lookup(d, b"f", ALICE).size == 0  # search (x) is enough to look up
    core.setattr(d, SetAttrFields(mode=0o700), R)
    with raises_errno(errno.EACCES):
        core.lookup(d, b"f", ALICE)
    with raises_errno(errno.EPERM):
        core.mknod(ROOT_INODE, b"dev", stat.S_IFCHR | 0o600, 0, ALICE)
    fsck(core)


def test_open_checks_the_access_mode() -> None:
    core = new_core()
    f = core.mknod(ROOT_INODE, b"f", stat.S_IFREG | 0o644, 0, R).inode
    core.release(core.open(f, os.O_RDONLY, ALICE))
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        with raises_errno(errno.EACCES):
            core.open(f, flags, ALICE)
    core.release(core.open(f, os.O_RDWR, R))
    assert core.open_handles() == 0
    fsck(core)


def test_supplementary_group_grants_create() -> None:
    core = new_core()
    staff = core.mkdir(ROOT_INODE, b"staff", 0o770, R).inode
    core.setattr(staff, SetAttrFields(gid=50), R)
    core.mknod(staff, b"mine", stat.S_IFREG | 0o644, 0, CAROL_IN_STAFF)
    with raises_errno(errno.EACCES):
        core.mknod(staff, b"other", stat.S_IFREG | 0o644, 0, ALICE)
    fsck(core)


def test_sticky_directory_protects_other_users_entries() -> None:
    core = new_core()
    tmp = core.mkdir(ROOT_INODE, b"tmp", 0o1777, R).inode
    core.mknod(tmp, b"alice", stat.S_IFREG | 0o666, 0, ALICE)
    core.mknod(tmp, b"bob", stat.S_IFREG | 0o666, 0, BOB)
    with raises_errno(errno.EPERM):
        core.unlink(tmp, b"alice", BOB)
    with raises_errno(errno.EPERM):
        core.rename(tmp, b"alice", tmp, b"x", 0, BOB)
    with raises_errno(errno.EPERM):
        core.rename(tmp, b"bob", tmp, b"alice", 0, BOB)  # replacing alice's file
    core.mkdir(tmp, b"adir", 0o777, ALICE)
    with raises_errno(errno.EPERM):
        core.rmdir(tmp, b"adir", BOB)
    core.rename(tmp, b"bob", tmp, b"bob2", 0, BOB)  # own file
    core.unlink(tmp, b"alice", ALICE)
    core.rmdir(tmp, b"adir", R)
    # The directory's owner may remove anything in it.
    owned = core.mkdir(ROOT_INODE, b"owned", 0o1777, R).inode
    core.setattr(owned, SetAttrFields(uid=ALICE.uid), R)
    core.mknod(owned, b"b", stat.S_IFREG | 0o644, 0, BOB)
    core.unlink(owned, b"b", ALICE)
    fsck(core)


def test_setgid_directory_inheritance() -> None:
    core = new_core()
    shared = core.mkdir(ROOT_INODE, b"shared", 0o2777, R).inode
    core.setattr(shared, SetAttrFields(gid=50), R)
    assert core.getattr(shared, R).mode & stat.S_ISGID
    f = core.mknod(shared, b"f", stat.S_IFREG | 0o2755, 0, ALICE)
    assert f.gid == 50 and not f.mode & stat.S_ISGID  # alice is not in group 50
    g = core.mknod(shared, b"g", stat.S_IFREG | 0o2755, 0, CAROL_IN_STAFF)
    assert g.gid == 50 and g.mode & stat.S_ISGID
    sub = core.mkdir(shared, b"sub", 0o755, ALICE)
    assert sub.gid == 50 and sub.mode & stat.S_ISGID
    open_dir = core.mkdir(ROOT_INODE, b"open", 0o777, R).inode
    plain = core.mknod(open_dir, b"plain", stat.S_IFREG | 0o644, 0, ALICE)
    assert plain.gid == ALICE.gid
    fsck(core)


def test_chmod_rules() -> None:
    core = new_core()
    f = core.mknod(ROOT_INODE, b"f", stat.S_IFREG | 0o644, 0, R).inode
    core.setattr(f, SetAttrFields(uid=ALICE.uid, gid=50), R)
    with raises_errno(errno.EPERM):
        core.setattr(f, SetAttrFields(mode=0o777), BOB)
    got = core.setattr(f, SetAttrFields(mode=0o2755), ALICE)  # alice is not in group 50
    assert stat.S_IMODE(got.mode) == 0o755 and stat.S_ISREG(got.mode)
    got = core.setattr(f, SetAttrFields(mode=0o2755), R)
    assert stat.S_IMODE(got.mode) == 0o2755
    fsck(core)


def test_chown_rules_and_setid_killing() -> None:
    core = new_core()
    f = core.mknod(ROOT_INODE, b"f", stat.S_IFREG | 0o644, 0, R).inode
    core.setattr(f, SetAttrFields(uid=CAROL_IN_STAFF.uid, gid=CAROL_IN_STAFF.gid), R)
    carol = CAROL_IN_STAFF
    with raises_errno(errno.EPERM):
        core.setattr(f, SetAttrFields(uid=ALICE.uid), carol)
    with raises_errno(errno.EPERM):
        core.setattr(f, SetAttrFields(gid=ALICE.gid), carol)  # not a member
    with raises_errno(errno.EPERM):
        core.setattr(f, SetAttrFields(gid=50), BOB)  # not the owner
    core.setattr(f, SetAttrFields(uid=carol.uid), carol)  # to oneself: allowed
    core.setattr(f, SetAttrFields(mode=0o6755), carol)
    got = core.setattr(f, SetAttrFields(gid=50), carol)
    assert got.gid == 50 and not got.mode & (stat.S_ISUID | stat.S_ISGID)
    core.setattr(f, SetAttrFields(mode=0o6755), R)
    got = core.setattr(f, SetAttrFields(uid=0), R)  # root's chown kills them too
    assert not got.mode & (stat.S_ISUID | stat.S_ISGID)
    core.setattr(f, SetAttrFields(mode=0o2745), R)  # set-gid without group x stays
    assert core.setattr(f, SetAttrFields(gid=0), R).mode & stat.S_ISGID
    fsck(core)


def test_write_and_truncate_by_non_root_kill_setid() -> None:
    core = new_core()
    fh, a = core.create(ROOT_INODE, b"f", 0o6777, os.O_RDWR, R)
    core.write(fh, 0, b"root writes")
    assert core.getattr(a.inode, R).mode & stat.S_ISUID  # root keeps them
    alice_fh = core.open(a.inode, os.O_WRONLY, ALICE)
    core.write(alice_fh, 0, b"x")
    assert not core.getattr(a.inode, R).mode & (stat.S_ISUID | stat.S_ISGID)
    core.setattr(a.inode, SetAttrFields(mode=0o6777), R)
    core.setattr(a.inode, SetAttrFields(size=1), ALICE)
    assert not core.getattr(a.inode, R).mode & (stat.S_ISUID | stat.S_ISGID)
    core.release(fh)
    core.release(alice_fh)
    fsck(core)


def test_utimes_and_truncate_permissions() -> None:
    core = new_core()
    f = core.mknod(ROOT_INODE, b"f", stat.S_IFREG | 0o644, 0, R).inode
    core.setattr(f, SetAttrFields(uid=ALICE.uid), R)
    core.setattr(f, SetAttrFields(atime_ns=1, mtime_ns=2), ALICE)
    with raises_errno(errno.EPERM):
        core.setattr(f, SetAttrFields(mtime_ns=3), BOB)
    with raises_errno(errno.EACCES):
        core.setattr(f, SetAttrFields(size=0), BOB)
    with raises_errno(errno.EACCES):  # "now" needs write permission
        core.setattr(f, SetAttrFields(mtime_ns=3, times_now=True), BOB)
    core.setattr(f, SetAttrFields(mode=0o646), ALICE)
    with raises_errno(errno.EPERM):  # explicit times need the owner, even for a writer
        core.setattr(f, SetAttrFields(mtime_ns=3), BOB)
    now = core.setattr(f, SetAttrFields(atime_ns=3, mtime_ns=3, times_now=True), BOB)
    assert now.mtime_ns == now.atime_ns != 3  # "now" is the file system's clock
    core.setattr(f, SetAttrFields(size=0), BOB)
    fsck(core)


def test_truncate_through_a_writable_handle_needs_no_permission() -> None:
    """ftruncate on a descriptor opened for writing (pjdfstest ftruncate/00)."""
    core = new_core()
    top = core.mkdir(ROOT_INODE, b"top", 0o777, R).inode
    fh, attr = core.create(top, b"f", 0, os.O_CREAT | os.O_RDWR, ALICE)  # mode 0
    ro = core.open(attr.inode, os.O_RDONLY, R)
    with raises_errno(errno.EACCES):
        core.setattr(attr.inode, SetAttrFields(size=5), ALICE)
    with raises_errno(errno.EACCES):  # a read-only handle is no excuse
        core.setattr(attr.inode, SetAttrFields(size=5), ALICE, ro)
    other = core.mknod(top, b"g", stat.S_IFREG, 0, ALICE).inode
    with raises_errno(errno.EACCES):  # nor a handle of another file
        core.setattr(other, SetAttrFields(size=5), ALICE, fh)
    assert core.setattr(attr.inode, SetAttrFields(size=5), ALICE, fh).size == 5
    core.release(fh)
    core.release(ro)
    fsck(core)


def test_anyone_may_only_clear_setid_bits() -> None:
    """The kernel clears set-id bits with the writer's credentials."""
    core = new_core()
    f = core.mknod(ROOT_INODE, b"f", stat.S_IFREG | 0o6777, 0, R).inode
    core.setattr(f, SetAttrFields(gid=BOB.gid, mode=0o6777), R)  # bob may keep set-gid
    with raises_errno(errno.EPERM):
        core.setattr(f, SetAttrFields(mode=0o6777), BOB)  # no change is not a kill
    with raises_errno(errno.EPERM):
        core.setattr(f, SetAttrFields(mode=0o0775), BOB)  # clears more than set-id
    assert stat.S_IMODE(core.setattr(f, SetAttrFields(mode=0o2777), BOB).mode) == 0o2777
    assert stat.S_IMODE(core.setattr(f, SetAttrFields(mode=0o0777), BOB).mode) == 0o0777
    with raises_errno(errno.EPERM):
        core.setattr(f, SetAttrFields(mode=0o4777), BOB)  # setting one is not a kill
    fsck(core)
