"""Open files and orphans: create/open access rules, unlink of open files, reclaim
at the last release, at session expiry and at session end."""

from __future__ import annotations

import errno
import os
import stat

from fs.meta.commands import (
    AllocChunk,
    ChunkLocations,
    Create,
    Garbage,
    GetAttr,
    Link,
    Open,
    Release,
    ServerState,
    Unlink,
)
from fs.meta.results import AttrResult, ChunksResult, HandlesResult
from fs.meta.state import FsReader
from fs.types import InodeId, ServerId
from tests.unit.test_fs_meta_support import (
    ALICE,
    BOB,
    ROOT,
    ROOT_DIR,
    TTL,
    FsHarness,
    code,
    fs,
)

__all__ = ["fs"]
D = InodeId(ROOT_DIR)


def _orphans(h: FsHarness) -> list[InodeId]:
    with h.store.reader() as view:
        return FsReader(view).orphans(100)


def _with_chunk(h: FsHarness, ino: InodeId) -> None:
    """Give an open file one chunk (registers a server first)."""
    h.leader(ServerState(ServerId(1), "127.0.0.1:1", 1 << 40, 1 << 40, True))
    s = h.session()
    s.open(ino)
    s.ok(AllocChunk(ino, 0, (ServerId(1),)))
    s.release(ino)


def test_create_makes_and_opens_a_regular_file(fs: FsHarness) -> None:
    s = fs.session()
    f = s.attr_of(Create(D, b"f", 0o640, os.O_WRONLY | os.O_CREAT, ROOT))
    assert stat.S_ISREG(f.mode) and f.mode & 0o7777 == 0o640
    s.release(f.inode)
    assert s.fails(Release(f.inode)) == errno.EBADF  # one open, one release


def test_create_with_a_read_only_mode_still_opens_for_the_creator(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.attr_of(Create(pub.inode, b"ro", 0o444, os.O_RDWR | os.O_CREAT, ALICE))
    assert f.mode & 0o777 == 0o444


def test_create_without_excl_opens_an_existing_file_with_excl_eexist(fs: FsHarness) -> None:
    s = fs.session()
    f = s.create(ROOT_DIR, b"f")
    again = s.attr_of(Create(D, b"f", 0o600, os.O_RDWR | os.O_CREAT, ROOT))
    assert again.inode == f.inode and again.mode & 0o777 == 0o644
    excl = os.O_RDWR | os.O_CREAT | os.O_EXCL
    assert s.fails(Create(D, b"f", 0o600, excl, ROOT)) == errno.EEXIST
    s.mkdir(ROOT_DIR, b"d")
    assert s.fails(Create(D, b"d", 0o600, os.O_RDONLY | os.O_CREAT, ROOT)) == errno.EISDIR


def test_open_checks_access_for_the_flags(fs: FsHarness) -> None:
    s = fs.session()
    pub = s.mkdir(ROOT_DIR, b"pub", 0o777)
    f = s.mknod(pub.inode, b"f", 0o644, ALICE)
    s.open(f.inode, os.O_RDONLY, BOB)
    assert s.fails(Open(f.inode, os.O_WRONLY, BOB)) == errno.EACCES
    assert s.fails(Open(f.inode, os.O_RDONLY | os.O_TRUNC, BOB)) == errno.EACCES
    s.open(f.inode, os.O_RDWR, ALICE)
    d = s.mkdir(ROOT_DIR, b"d")
    s.open(d.inode, os.O_RDONLY, ROOT)
    assert s.fails(Open(d.inode, os.O_WRONLY, ROOT)) == errno.EISDIR


def test_unlinked_open_file_stays_readable_until_the_last_release(fs: FsHarness) -> None:
    s = fs.session()
    f = s.create(ROOT_DIR, b"f")
    s.open(f.inode)  # two opens in one session
    _with_chunk(fs, f.inode)
    s.ok(Unlink(D, b"f", ROOT))
    assert code(fs.lookup(ROOT_DIR, b"f")) == errno.ENOENT
    orphan = fs.ask(GetAttr(f.inode))
    assert isinstance(orphan, AttrResult) and orphan.attr.nlink == 0
    assert _orphans(fs) == [f.inode]
    chunks = fs.ask(ChunkLocations(f.inode, 0, 10))
    assert isinstance(chunks, ChunksResult) and len(chunks.locations) == 1
    s.release(f.inode)
    assert isinstance(fs.ask(GetAttr(f.inode)), AttrResult)  # one open left
    s.release(f.inode)
    assert code(fs.ask(GetAttr(f.inode))) == errno.ENOENT
    assert _orphans(fs) == []
    handle = chunks.locations[0].handle  # its chunk is garbage for its server now
    assert fs.ask(Garbage(ServerId(1), (handle,))) == HandlesResult((handle,))


def test_an_orphan_cannot_be_opened_again_or_linked(fs: FsHarness) -> None:
    s = fs.session()
    f = s.create(ROOT_DIR, b"f")
    s.ok(Unlink(D, b"f", ROOT))
    other = fs.session()
    assert other.fails(Open(f.inode, os.O_RDONLY, ROOT)) == errno.ENOENT
    assert other.fails(Link(f.inode, D, b"back", ROOT)) == errno.ENOENT


def test_orphan_is_kept_while_any_session_has_it_open(fs: FsHarness) -> None:
    a, b = fs.session(), fs.session()
    f = a.create(ROOT_DIR, b"f")
    b.open(f.inode)
    a.ok(Unlink(D, b"f", ROOT))
    a.release(f.inode)
    assert isinstance(fs.ask(GetAttr(f.inode)), AttrResult)
    b.release(f.inode)
    assert code(fs.ask(GetAttr(f.inode))) == errno.ENOENT


def test_session_expiry_releases_its_opens_and_reclaims_orphans(fs: FsHarness) -> None:
    holder, other = fs.session(), fs.session()
    f = holder.create(ROOT_DIR, b"f")
    g = holder.create(ROOT_DIR, b"g")  # not unlinked: must survive the expiry
    _with_chunk(fs, f.inode)
    other.ok(Unlink(D, b"f", ROOT))
    assert isinstance(fs.ask(GetAttr(f.inode)), AttrResult)
    fs.advance(TTL + 1)
    fs.session()  # any entry past the TTL collects the idle holder
    assert code(fs.ask(GetAttr(f.inode))) == errno.ENOENT
    assert isinstance(fs.ask(GetAttr(g.inode)), AttrResult)
    with fs.store.reader() as view:
        assert FsReader(view).open_count(g.inode, holder.cid) == 0


def test_ending_a_session_releases_its_opens(fs: FsHarness) -> None:
    s = fs.session()
    f = s.create(ROOT_DIR, b"f")
    s.ok(Unlink(D, b"f", ROOT))
    s.end()
    assert code(fs.ask(GetAttr(f.inode))) == errno.ENOENT


def test_release_without_open_is_ebadf_and_opens_are_per_session(fs: FsHarness) -> None:
    a, b = fs.session(), fs.session()
    f = a.create(ROOT_DIR, b"f")
    assert b.fails(Release(f.inode)) == errno.EBADF
    a.release(f.inode)
