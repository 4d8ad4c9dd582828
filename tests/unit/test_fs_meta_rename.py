"""rename(2) and renameat2(2): atomic replacement rules, flags, the loop check, cookies."""

from __future__ import annotations

import errno

from fs.meta.commands import GetAttr, Link, Open, ReadDir, Rename
from fs.meta.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE
from fs.meta.results import AttrResult, EntriesResult
from fs.types import InodeId
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


def _names(h: FsHarness, d: int) -> list[bytes]:
    listing = h.ask(ReadDir(InodeId(d), 0, 100, ROOT))
    assert isinstance(listing, EntriesResult)
    return [e.name for e in listing.entries]


def test_rename_moves_the_entry_and_keeps_the_inode(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"a")
    d = s.mkdir(ROOT_DIR, b"d")
    s.ok(Rename(D, b"a", d.inode, b"b", 0, ROOT))
    assert code(fs.lookup(ROOT_DIR, b"a")) == errno.ENOENT
    moved = fs.lookup(d.inode, b"b")
    assert isinstance(moved, AttrResult) and moved.attr.inode == f.inode
    assert moved.attr.ctime_ns > f.ctime_ns  # the renamed inode's ctime changes
    assert fs.attr(d.inode).mtime_ns == moved.attr.ctime_ns


def test_rename_replaces_an_existing_file_atomically(fs: FsHarness) -> None:
    s = fs.session()
    a = s.mknod(ROOT_DIR, b"a")
    b = s.mknod(ROOT_DIR, b"b")
    s.ok(Rename(D, b"a", D, b"b", 0, ROOT))
    found = fs.lookup(ROOT_DIR, b"b")
    assert isinstance(found, AttrResult) and found.attr.inode == a.inode
    assert code(fs.lookup(ROOT_DIR, b"a")) == errno.ENOENT
    assert code(fs.ask(GetAttr(b.inode))) == (
        errno.ENOENT)


def test_a_directory_replaces_only_an_empty_directory(fs: FsHarness) -> None:
    s = fs.session()
    s.mkdir(ROOT_DIR, b"src")
    full = s.mkdir(ROOT_DIR, b"full")
    s.mknod(full.inode, b"x")
    s.mkdir(ROOT_DIR, b"empty")
    s.mknod(ROOT_DIR, b"file")
    assert s.fails(Rename(D, b"src", D, b"full", 0, ROOT)) == errno.ENOTEMPTY
    assert s.fails(Rename(D, b"src", D, b"file", 0, ROOT)) == errno.ENOTDIR
    assert s.fails(Rename(D, b"file", D, b"empty", 0, ROOT)) == errno.EISDIR
    s.ok(Rename(D, b"src", D, b"empty", 0, ROOT))
    assert fs.attr(ROOT_DIR).nlink == 2 + 2  # src (now "empty") and full


def test_moving_a_directory_into_its_own_subtree_is_einval(fs: FsHarness) -> None:
    s = fs.session()
    a = s.mkdir(ROOT_DIR, b"a")
    b = s.mkdir(a.inode, b"b")
    c = s.mkdir(b.inode, b"c")
    assert s.fails(Rename(D, b"a", c.inode, b"a", 0, ROOT)) == errno.EINVAL
    assert s.fails(Rename(D, b"a", a.inode, b"self", 0, ROOT)) == errno.EINVAL
    s.ok(Rename(b.inode, b"c", D, b"c", 0, ROOT))  # upwards is fine
    assert fs.lookup(c.inode, b"..") == AttrResult(fs.attr(ROOT_DIR))


def test_moving_a_directory_updates_parent_link_counts_and_dotdot(fs: FsHarness) -> None:
    s = fs.session()
    a = s.mkdir(ROOT_DIR, b"a")
    b = s.mkdir(ROOT_DIR, b"b")
    s.mkdir(a.inode, b"sub")
    s.ok(Rename(a.inode, b"sub", b.inode, b"sub", 0, ROOT))
    assert fs.attr(a.inode).nlink == 2 and fs.attr(b.inode).nlink == 3
    sub = fs.lookup(b.inode, b"sub")
    assert isinstance(sub, AttrResult)
    assert fs.lookup(sub.attr.inode, b"..") == AttrResult(fs.attr(b.inode))


def test_renaming_onto_another_name_of_the_same_file_does_nothing(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"a")
    s.ok(Link(f.inode, D, b"b", ROOT))
    before = fs.fs_state()
    s.ok(Rename(D, b"a", D, b"b", 0, ROOT))
    assert fs.fs_state() == before  # POSIX: both names stay, nothing changes
    assert fs.attr(f.inode).nlink == 2


def test_rename_noreplace_refuses_an_existing_target_with_eexist(fs: FsHarness) -> None:
    s = fs.session()
    s.mknod(ROOT_DIR, b"a")
    s.mknod(ROOT_DIR, b"b")
    assert s.fails(Rename(D, b"a", D, b"b", RENAME_NOREPLACE, ROOT)) == errno.EEXIST
    s.ok(Rename(D, b"a", D, b"c", RENAME_NOREPLACE, ROOT))


def test_rename_exchange_swaps_two_entries_even_file_and_directory(fs: FsHarness) -> None:
    s = fs.session()
    d1 = s.mkdir(ROOT_DIR, b"d1")
    f = s.mknod(ROOT_DIR, b"f")
    sub = s.mkdir(d1.inode, b"sub")
    s.ok(Rename(D, b"f", d1.inode, b"sub", RENAME_EXCHANGE, ROOT))
    now_f = fs.lookup(d1.inode, b"sub")
    now_sub = fs.lookup(ROOT_DIR, b"f")
    assert isinstance(now_f, AttrResult) and now_f.attr.inode == f.inode
    assert isinstance(now_sub, AttrResult) and now_sub.attr.inode == sub.inode
    assert fs.attr(d1.inode).nlink == 2 and fs.attr(ROOT_DIR).nlink == 4
    assert fs.lookup(sub.inode, b"..") == AttrResult(fs.attr(ROOT_DIR))


def test_rename_exchange_needs_both_and_flags_are_checked(fs: FsHarness) -> None:
    s = fs.session()
    s.mknod(ROOT_DIR, b"a")
    assert s.fails(Rename(D, b"a", D, b"missing", RENAME_EXCHANGE, ROOT)) == errno.ENOENT
    both = RENAME_EXCHANGE | RENAME_NOREPLACE
    assert s.fails(Rename(D, b"a", D, b"b", both, ROOT)) == errno.EINVAL
    assert s.fails(Rename(D, b"a", D, b"b", 8, ROOT)) == errno.EINVAL


def test_rename_exchange_refuses_a_loop(fs: FsHarness) -> None:
    s = fs.session()
    a = s.mkdir(ROOT_DIR, b"a")
    b = s.mkdir(a.inode, b"b")
    s.mkdir(b.inode, b"c")
    assert s.fails(Rename(D, b"a", b.inode, b"c", RENAME_EXCHANGE, ROOT)) == errno.EINVAL


def test_rename_source_missing_is_enoent_and_bad_names_einval(fs: FsHarness) -> None:
    s = fs.session()
    s.mknod(ROOT_DIR, b"a")
    assert s.fails(Rename(D, b"nope", D, b"x", 0, ROOT)) == errno.ENOENT
    assert s.fails(Rename(D, b"a", D, b"x/y", 0, ROOT)) == errno.EINVAL
    assert s.fails(Rename(D, b"a", D, b"..", 0, ROOT)) == errno.EINVAL


def test_rename_needs_write_permission_on_both_parents(fs: FsHarness) -> None:
    s = fs.session()
    mine = s.mkdir(ROOT_DIR, b"mine", 0o777)
    theirs = s.mkdir(ROOT_DIR, b"theirs", 0o755)
    s.mknod(mine.inode, b"f", 0o644, ALICE)
    assert s.fails(Rename(mine.inode, b"f", theirs.inode, b"f", 0, ALICE)) == errno.EACCES
    s.ok(Rename(mine.inode, b"f", mine.inode, b"g", 0, ALICE))


def test_moving_a_directory_to_another_parent_needs_write_permission_on_it(
    fs: FsHarness,
) -> None:
    """Its ".." entry changes (Linux checks MAY_WRITE on the moved directory)."""
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    other = s.mkdir(ROOT_DIR, b"other", 0o777)
    s.mkdir(pub.inode, b"ro", 0o555, ALICE)
    assert s.fails(Rename(pub.inode, b"ro", other.inode, b"ro", 0, ALICE)) == errno.EACCES
    s.ok(Rename(pub.inode, b"ro", pub.inode, b"ro2", 0, ALICE))  # same parent: no ".." change


def test_sticky_directory_rename_only_by_owner_of_entry_or_directory(fs: FsHarness) -> None:
    s = fs.session()
    tmp = s.mkdir(ROOT_DIR, b"tmp", 0o1777)
    s.mknod(tmp.inode, b"alices", 0o644, ALICE)
    s.mknod(tmp.inode, b"bobs", 0o644, BOB)
    assert s.fails(Rename(tmp.inode, b"alices", tmp.inode, b"x", 0, BOB)) == errno.EPERM
    assert s.fails(Rename(tmp.inode, b"bobs", tmp.inode, b"alices", 0, BOB)) == errno.EPERM
    s.ok(Rename(tmp.inode, b"bobs", tmp.inode, b"bobs2", 0, BOB))
    s.ok(Rename(tmp.inode, b"alices", tmp.inode, b"x", 0, ROOT))


def test_rename_within_a_directory_keeps_the_readdir_cookie(fs: FsHarness) -> None:
    s = fs.session()
    for n in (b"a", b"b", b"c"):
        s.mknod(ROOT_DIR, n)
    first = fs.ask(ReadDir(D, 0, 1, ROOT))
    assert isinstance(first, EntriesResult) and first.entries[0].name == b"a"
    s.ok(Rename(D, b"b", D, b"zz", 0, ROOT))
    rest = fs.ask(ReadDir(D, first.entries[0].cookie, 10, ROOT))
    assert isinstance(rest, EntriesResult)
    assert [e.name for e in rest.entries] == [b"zz", b"c"]  # same place, new name


def test_replacing_an_open_file_makes_it_an_orphan(fs: FsHarness) -> None:
    s = fs.session()
    old = s.create(ROOT_DIR, b"old")
    s.mknod(ROOT_DIR, b"new")
    s.ok(Rename(D, b"new", D, b"old", 0, ROOT))
    assert fs.attr(old.inode).nlink == 0
    s.release(old.inode)
    assert code(fs.ask(GetAttr(old.inode))) == (
        errno.ENOENT)
    assert s.fails(Open(old.inode, 0, ROOT)) == errno.ENOENT
    assert _names(fs, ROOT_DIR) == [b"old"]
