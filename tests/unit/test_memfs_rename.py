"""memfs rename: replace rules, flags, the loop check, and random operation
sequences that must keep the tree consistent (fsck after every step)."""

from __future__ import annotations

import errno
import os
import random
import stat

from fs.memfs import MemFsCore
from fs.posix import RENAME_EXCHANGE, RENAME_NOREPLACE
from fs.types import ROOT_CRED, ROOT_INODE, FsError, InodeId, SetAttrFields
from tests.unit.memfs_support import ALICE, fsck, listing, new_core, raises_errno, snapshot

R = ROOT_CRED


def tree() -> tuple[MemFsCore, InodeId, InodeId]:
    core = new_core()
    a = core.mkdir(ROOT_INODE, b"a", 0o755, R).inode
    b = core.mkdir(ROOT_INODE, b"b", 0o755, R).inode
    return core, a, b


def test_rename_a_file_across_directories() -> None:
    core, a, b = tree()
    f = core.mknod(a, b"f", stat.S_IFREG | 0o644, 0, R)
    core.rename(a, b"f", b, b"g", 0, R)
    assert core.lookup(b, b"g", R).inode == f.inode
    assert listing(core, a) == []
    assert core.getattr(f.inode, R).ctime_ns > f.ctime_ns
    fsck(core)


def test_rename_a_directory_moves_its_dotdot_and_link_counts() -> None:
    core, a, b = tree()
    d = core.mkdir(a, b"d", 0o755, R).inode
    core.rename(a, b"d", b, b"d", 0, R)
    assert core.lookup(d, b"..", R).inode == b
    assert core.getattr(a, R).nlink == 2 and core.getattr(b, R).nlink == 3
    fsck(core)


def test_replace_rules() -> None:
    core, a, b = tree()
    core.mknod(a, b"f", stat.S_IFREG | 0o644, 0, R)
    core.mknod(a, b"g", stat.S_IFREG | 0o644, 0, R)
    core.mkdir(b, b"empty", 0o755, R)
    full = core.mkdir(b, b"full", 0o755, R).inode
    core.mknod(full, b"x", stat.S_IFREG, 0, R)
    with raises_errno(errno.EISDIR):
        core.rename(a, b"f", b, b"empty", 0, R)
    with raises_errno(errno.ENOTDIR):
        core.rename(ROOT_INODE, b"b", a, b"f", 0, R)
    with raises_errno(errno.ENOTEMPTY):
        core.rename(b, b"empty", b, b"full", 0, R)
    with raises_errno(errno.ENOENT):
        core.rename(a, b"nope", b, b"x", 0, R)
    with raises_errno(errno.EINVAL):
        core.rename(a, b".", b, b"x", 0, R)
    core.rename(a, b"f", a, b"g", 0, R)  # file over file
    core.rename(b, b"full", b, b"empty", 0, R)  # directory over an empty one
    assert core.getattr(b, R).nlink == 3
    fsck(core)


def test_noreplace_and_exchange() -> None:
    core, a, b = tree()
    f = core.mknod(a, b"f", stat.S_IFREG | 0o644, 0, R).inode
    d = core.mkdir(b, b"d", 0o755, R).inode
    with raises_errno(errno.EEXIST):
        core.rename(a, b"f", b, b"d", RENAME_NOREPLACE, R)
    with raises_errno(errno.ENOENT):
        core.rename(a, b"f", b, b"missing", RENAME_EXCHANGE, R)
    with raises_errno(errno.EINVAL):
        core.rename(a, b"f", b, b"d", RENAME_EXCHANGE | RENAME_NOREPLACE, R)
    core.rename(a, b"f", b, b"new", RENAME_NOREPLACE, R)
    core.rename(b, b"new", a, b"f", 0, R)
    core.rename(a, b"f", b, b"d", RENAME_EXCHANGE, R)  # a file and a directory swap
    assert core.lookup(a, b"f", R).inode == d and core.lookup(b, b"d", R).inode == f
    assert core.lookup(d, b"..", R).inode == a
    assert core.getattr(a, R).nlink == 3 and core.getattr(b, R).nlink == 2
    fsck(core)


def test_a_directory_cannot_move_into_its_own_subtree() -> None:
    core, a, _ = tree()
    inner = core.mkdir(core.mkdir(a, b"x", 0o755, R).inode, b"y", 0o755, R).inode
    with raises_errno(errno.EINVAL):
        core.rename(ROOT_INODE, b"a", inner, b"a", 0, R)
    with raises_errno(errno.EINVAL):
        core.rename(ROOT_INODE, b"a", a, b"self", 0, R)
    core.mknod(inner, b"f", stat.S_IFREG, 0, R)
    with raises_errno(errno.EINVAL):  # exchange moves "a" below itself as well
        core.rename(inner, b"f", ROOT_INODE, b"a", RENAME_EXCHANGE, R)
    fsck(core)


def test_renaming_one_hard_link_over_another_does_nothing() -> None:
    core, a, _ = tree()
    f = core.mknod(a, b"f", stat.S_IFREG | 0o644, 0, R).inode
    core.link(f, a, b"g", R)
    core.rename(a, b"f", a, b"g", 0, R)
    assert sorted(listing(core, a)) == [b"f", b"g"] and core.getattr(f, R).nlink == 2
    fsck(core)


def test_a_replaced_open_file_becomes_an_orphan() -> None:
    core, a, _ = tree()
    fh, victim = core.create(a, b"victim", 0o644, os.O_RDWR, R)
    core.write(fh, 0, b"still here")
    core.mknod(a, b"new", stat.S_IFREG | 0o644, 0, R)
    core.rename(a, b"new", a, b"victim", 0, R)
    assert core.getattr(victim.inode, R).nlink == 0
    assert core.read(fh, 0, 100) == b"still here"
    fsck(core, open_orphans=1)
    core.release(fh)
    fsck(core)


def test_moving_a_directory_needs_write_on_it() -> None:
    core, a, b = tree()
    for d in (a, b):
        core.setattr(d, SetAttrFields(mode=0o777), R)
    core.mkdir(a, b"locked", 0o555, ALICE)
    with raises_errno(errno.EACCES):
        core.rename(a, b"locked", b, b"locked", 0, ALICE)
    core.rename(a, b"locked", a, b"renamed", 0, ALICE)  # same parent: ".." unchanged
    fsck(core)


def _random_step(core: MemFsCore, rng: random.Random, dirs: list[InodeId]) -> None:
    parent = rng.choice(dirs)
    name = b"n%d" % rng.randrange(6)
    op = rng.choice(["mknod", "mkdir", "unlink", "rmdir", "rename", "link", "symlink"])
    if op == "mknod":
        core.mknod(parent, name, stat.S_IFREG | 0o644, 0, R)
    elif op == "mkdir":
        dirs.append(core.mkdir(parent, name, 0o755, R).inode)
    elif op == "unlink":
        core.unlink(parent, name, R)
    elif op == "rmdir":
        core.rmdir(parent, name, R)
    elif op == "symlink":
        core.symlink(parent, name, b"target", R)
    elif op == "link":
        target = core.lookup(parent, name, R).inode
        core.link(target, rng.choice(dirs), b"l%d" % rng.randrange(4), R)
    else:
        flags = rng.choice([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])
        core.rename(parent, name, rng.choice(dirs), b"n%d" % rng.randrange(6), flags, R)


def test_random_operations_keep_the_tree_consistent() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        core = new_core()
        dirs = [ROOT_INODE]
        for _ in range(150):
            before = snapshot(core)
            try:
                _random_step(core, rng, dirs)
            except FsError:
                assert snapshot(core) == before, "a refused call changed the tree"
            dirs = [d for d in dirs if core.inode_count() and _alive(core, d)]
            fsck(core)


def _alive(core: MemFsCore, inode: InodeId) -> bool:
    try:
        core.getattr(inode, R)
    except FsError:
        return False
    return True
