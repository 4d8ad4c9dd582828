"""Names: bootstrap, lookup, every file type, links, unlink, rmdir, name limits.

Each test names the POSIX rule it checks; every refusal is also checked to
leave the state unchanged (`Session.fails`), and every test ends in fsck.
"""

from __future__ import annotations

import errno
import stat

import pytest

from fs.meta.commands import (
    GetAttr,
    Link,
    Lookup,
    Mkdir,
    Mknod,
    ReadDir,
    ReadLink,
    Rmdir,
    Symlink,
    Unlink,
)
from fs.meta.results import AttrResult, DataResult, EntriesResult, FsErr
from fs.types import NAME_MAX, PATH_MAX, InodeId
from tests.unit.test_fs_meta_support import (
    ALICE,
    BOB,
    ROOT,
    ROOT_DIR,
    FsHarness,
    any_fs,
    code,
    fs,
)

__all__ = ["any_fs", "fs"]  # fixtures used by name
D = InodeId(ROOT_DIR)


def test_root_exists_from_the_first_entry_with_mode_0755_owned_by_root(any_fs: FsHarness) -> None:
    any_fs.apply(any_fs.log.noop())
    root = any_fs.attr(ROOT_DIR)
    assert root.mode == stat.S_IFDIR | 0o755 and (root.uid, root.gid) == (0, 0)
    assert root.nlink == 2 and root.size == 0


def test_created_entries_are_found_by_lookup_with_their_attributes(fs: FsHarness) -> None:
    s = fs.session()
    made = s.mkdir(ROOT_DIR, b"dir", 0o750)
    assert made.mode == stat.S_IFDIR | 0o750 and made.nlink == 2
    assert fs.lookup(ROOT_DIR, b"dir") == AttrResult(made)
    assert fs.attr(ROOT_DIR).nlink == 3  # the subdirectory's ".."
    assert fs.lookup(made.inode, b"..") == AttrResult(fs.attr(ROOT_DIR))
    assert fs.lookup(made.inode, b".") == AttrResult(made)


def test_times_come_from_the_log_and_creation_touches_the_parent(fs: FsHarness) -> None:
    s = fs.session()
    fs.advance(5_000)
    f = s.mknod(ROOT_DIR, b"f")
    assert f.mtime_ns == f.ctime_ns == f.atime_ns
    assert f.mtime_ns // 1_000_000 == fs.log.now  # ms of log time, index in the ns
    root = fs.attr(ROOT_DIR)
    assert root.mtime_ns == root.ctime_ns == f.ctime_ns
    fs.advance(1)
    g = s.mknod(ROOT_DIR, b"g")
    assert g.ctime_ns > f.ctime_ns


@pytest.mark.parametrize("kind", [stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, 0])
def test_mknod_makes_regular_files_fifos_and_sockets(fs: FsHarness, kind: int) -> None:
    s = fs.session()
    attr = s.attr_of(Mknod(D, b"n", kind | 0o640, 0, ROOT))
    assert stat.S_IFMT(attr.mode) == (kind or stat.S_IFREG) and attr.mode & 0o7777 == 0o640
    assert attr.rdev == 0


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK])
def test_device_nodes_keep_rdev_and_need_root(fs: FsHarness, kind: int) -> None:
    s = fs.session()
    s.ok(Mkdir(D, b"pub", 0o777, ROOT))
    pub = fs.lookup(ROOT_DIR, b"pub")
    assert isinstance(pub, AttrResult)
    assert s.fails(Mknod(pub.attr.inode, b"dev", kind | 0o600, 0x0801, ALICE)) == errno.EPERM
    dev = s.attr_of(Mknod(D, b"dev", kind | 0o600, 0x0801, ROOT))
    assert stat.S_IFMT(dev.mode) == kind and dev.rdev == 0x0801


def test_mknod_refuses_directories_with_eperm_and_unknown_types_with_einval(
    fs: FsHarness,
) -> None:
    s = fs.session()
    assert s.fails(Mknod(D, b"d", stat.S_IFDIR | 0o755, 0, ROOT)) == errno.EPERM
    assert s.fails(Mknod(D, b"x", 0o170000 | 0o644, 0, ROOT)) == errno.EINVAL


def test_existing_name_is_eexist_for_every_create(fs: FsHarness) -> None:
    s = fs.session()
    s.mknod(ROOT_DIR, b"x")
    assert s.fails(Mkdir(D, b"x", 0o755, ROOT)) == errno.EEXIST
    assert s.fails(Mknod(D, b"x", 0o644, 0, ROOT)) == errno.EEXIST
    assert s.fails(Symlink(D, b"x", b"t", ROOT)) == errno.EEXIST


@pytest.mark.parametrize(
    ("name", "code"),
    [
        (b"a/b", errno.EINVAL),
        (b"a\0b", errno.EINVAL),
        (b".", errno.EINVAL),
        (b"..", errno.EINVAL),
        (b"", errno.ENOENT),
        (b"n" * (NAME_MAX + 1), errno.ENAMETOOLONG),
    ],
)
def test_bad_names_are_refused(fs: FsHarness, name: bytes, code: int) -> None:
    s = fs.session()
    assert s.fails(Mkdir(D, name, 0o755, ROOT)) == code
    assert s.fails(Mknod(D, name, 0o644, 0, ROOT)) == code


def test_a_name_of_name_max_bytes_is_fine(fs: FsHarness) -> None:
    s = fs.session()
    s.mknod(ROOT_DIR, b"n" * NAME_MAX)
    assert isinstance(fs.lookup(ROOT_DIR, b"n" * NAME_MAX), AttrResult)
    assert fs.lookup(ROOT_DIR, b"n" * (NAME_MAX + 1)) == FsErr(
        errno.ENAMETOOLONG, f"name of {NAME_MAX + 1} bytes")


def test_lookup_errors_enoent_enotdir_and_eacces_without_search_permission(
    fs: FsHarness,
) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f")
    d = s.mkdir(ROOT_DIR, b"private", 0o700)
    s.mknod(d.inode, b"inside")
    assert code(fs.lookup(ROOT_DIR, b"nope")) == errno.ENOENT
    assert code(fs.lookup(f.inode, b"x")) == errno.ENOTDIR
    assert code(fs.lookup(d.inode, b"inside", ALICE)) == errno.EACCES
    assert isinstance(fs.lookup(d.inode, b"inside", ROOT), AttrResult)
    assert fs.ask(GetAttr(InodeId(999))) == FsErr(errno.ENOENT, "no inode 999")


def test_creating_needs_write_and_search_permission_on_the_parent(fs: FsHarness) -> None:
    s = fs.session()
    ro = s.mkdir(ROOT_DIR, b"ro", 0o755)
    noexec = s.mkdir(ROOT_DIR, b"nx", 0o666)
    assert s.fails(Mknod(ro.inode, b"f", 0o644, 0, ALICE)) == errno.EACCES
    assert s.fails(Mkdir(noexec.inode, b"d", 0o755, ALICE)) == errno.EACCES
    s.mknod(ro.inode, b"f", cred=ROOT)  # root may


def test_new_inodes_belong_to_the_caller(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.mknod(pub.inode, b"f", 0o600, ALICE)
    assert (f.uid, f.gid) == (ALICE.uid, ALICE.gid)


def test_symlink_target_is_stored_and_readlink_returns_it(fs: FsHarness) -> None:
    s = fs.session()
    link = s.attr_of(Symlink(D, b"l", b"some/where", ROOT))
    assert stat.S_ISLNK(link.mode) and link.mode & 0o777 == 0o777 and link.size == 10
    assert fs.ask(ReadLink(link.inode)) == DataResult(b"some/where")
    f = s.mknod(ROOT_DIR, b"f")
    assert code(fs.ask(ReadLink(f.inode))) == errno.EINVAL


def test_symlink_target_limits_enametoolong_past_path_max_and_enoent_when_empty(
    fs: FsHarness,
) -> None:
    s = fs.session()
    s.ok(Symlink(D, b"max", b"t" * PATH_MAX, ROOT))
    assert s.fails(Symlink(D, b"long", b"t" * (PATH_MAX + 1), ROOT)) == errno.ENAMETOOLONG
    assert s.fails(Symlink(D, b"empty", b"", ROOT)) == errno.ENOENT


def test_hard_links_count_names_and_share_the_inode(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f")
    d = s.mkdir(ROOT_DIR, b"d")
    linked = s.attr_of(Link(f.inode, d.inode, b"g", ROOT))
    assert linked.inode == f.inode and linked.nlink == 2 and linked.ctime_ns > f.ctime_ns
    assert fs.lookup(d.inode, b"g") == AttrResult(linked)
    s.ok(Unlink(D, b"f", ROOT))
    assert fs.attr(f.inode).nlink == 1


def test_link_refuses_directories_eperm_and_existing_names_eexist(fs: FsHarness) -> None:
    s = fs.session()
    d = s.mkdir(ROOT_DIR, b"d")
    f = s.mknod(ROOT_DIR, b"f")
    assert s.fails(Link(d.inode, D, b"d2", ROOT)) == errno.EPERM
    assert s.fails(Link(f.inode, D, b"d", ROOT)) == errno.EEXIST
    assert s.fails(Link(f.inode, f.inode, b"x", ROOT)) == errno.ENOTDIR


def test_link_past_max_links_is_emlink() -> None:
    from fs.meta.context import FsConfig
    from fs.meta.machine import memory_meta_store

    h = FsHarness(memory_meta_store(), FsConfig(max_links=3))
    s = h.session()
    f = s.mknod(ROOT_DIR, b"f")
    s.ok(Link(f.inode, D, b"g", ROOT))
    s.ok(Link(f.inode, D, b"h", ROOT))
    assert s.fails(Link(f.inode, D, b"i", ROOT)) == errno.EMLINK
    assert h.fsck() == []


def test_unlink_removes_the_name_and_the_file_with_its_last_name(fs: FsHarness) -> None:
    s = fs.session()
    f = s.mknod(ROOT_DIR, b"f")
    s.ok(Unlink(D, b"f", ROOT))
    assert code(fs.lookup(ROOT_DIR, b"f")) == errno.ENOENT
    assert code(fs.ask(GetAttr(f.inode))) == errno.ENOENT
    assert s.fails(Unlink(D, b"f", ROOT)) == errno.ENOENT


def test_unlink_of_a_directory_is_eisdir_and_rmdir_of_a_file_enotdir(fs: FsHarness) -> None:
    s = fs.session()
    s.mkdir(ROOT_DIR, b"d")
    s.mknod(ROOT_DIR, b"f")
    assert s.fails(Unlink(D, b"d", ROOT)) == errno.EISDIR
    assert s.fails(Rmdir(D, b"f", ROOT)) == errno.ENOTDIR


def test_rmdir_needs_an_empty_directory_enotempty(fs: FsHarness) -> None:
    s = fs.session()
    d = s.mkdir(ROOT_DIR, b"d")
    s.mknod(d.inode, b"f")
    assert s.fails(Rmdir(D, b"d", ROOT)) == errno.ENOTEMPTY
    s.ok(Unlink(d.inode, b"f", ROOT))
    s.ok(Rmdir(D, b"d", ROOT))
    assert fs.attr(ROOT_DIR).nlink == 2
    assert s.fails(Rmdir(D, b".", ROOT)) == errno.EINVAL


def test_removing_needs_write_and_search_permission_on_the_parent(fs: FsHarness) -> None:
    s = fs.session()
    d = s.mkdir(ROOT_DIR, b"d", 0o755)
    s.mknod(d.inode, b"f", 0o666)
    s.mkdir(d.inode, b"sub", 0o777)
    assert s.fails(Unlink(d.inode, b"f", ALICE)) == errno.EACCES
    assert s.fails(Rmdir(d.inode, b"sub", BOB)) == errno.EACCES


def test_readdir_lists_in_creation_order_with_attributes(fs: FsHarness) -> None:
    s = fs.session()
    names = [b"c", b"a", b"b"]
    made = [s.mknod(ROOT_DIR, n) for n in names]
    listing = fs.ask(ReadDir(D, 0, 10, ROOT))
    assert isinstance(listing, EntriesResult) and not listing.more
    assert [e.name for e in listing.entries] == names
    assert [e.attr for e in listing.entries] == [fs.attr(m.inode) for m in made]
    cookies = [e.cookie for e in listing.entries]
    assert cookies == sorted(cookies) and cookies[0] >= 3  # 1 and 2 are for "." and ".."


def test_readdir_needs_read_permission_and_a_directory(fs: FsHarness) -> None:
    s = fs.session()
    d = s.mkdir(ROOT_DIR, b"d", 0o311)
    f = s.mknod(ROOT_DIR, b"f")
    assert code(fs.ask(ReadDir(d.inode, 0, 10, ALICE))) == errno.EACCES
    assert code(fs.ask(ReadDir(f.inode, 0, 10, ROOT))) == errno.ENOTDIR


def test_lookup_query_is_not_a_log_entry(fs: FsHarness) -> None:
    s = fs.session()
    s.mknod(ROOT_DIR, b"f")
    before = fs.machine.applied_index
    for _ in range(3):
        fs.ask(Lookup(D, b"f", ROOT))
    assert fs.machine.applied_index == before


def test_a_bootstrap_whose_transaction_aborted_is_done_again() -> None:
    """on_entry looks for the root once per transaction: an aborted transaction's
    bootstrap is not taken for done."""
    from coord.kv.store import MemoryKVStore
    from coord.raft.types import Entry, EntryKind, LogIndex, Term
    from fs.meta.machine import memory_meta_store, meta_machine
    from fs.meta.state import META

    store: MemoryKVStore = memory_meta_store()
    machine = meta_machine(store)
    noop = Entry(Term(1), LogIndex(1), EntryKind.NOOP)

    def fail(_: object) -> None:
        raise RuntimeError("abort before the commit")

    with pytest.raises(RuntimeError):
        machine.apply([noop], announce=fail)
    with store.reader() as r:
        assert r.table(META).get(b"next_inode") is None
    machine.apply([noop])
    with store.reader() as r:
        assert r.table(META).get(b"next_inode") is not None
