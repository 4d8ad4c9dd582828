"""readdir cookies: bounded pages, stable offsets while the directory changes, and a
directory of 100,000 entries listed page by page (on the in-memory twin)."""

from __future__ import annotations

import random

from fs.meta import namespace
from fs.meta.commands import ReadDir, Unlink
from fs.meta.context import FsConfig, Op
from fs.meta.fsck import check
from fs.meta.machine import FsMachine, bootstrap, memory_meta_store, meta_machine
from fs.meta.results import EntriesResult
from fs.meta.state import FsReader, FsWriter
from fs.types import ROOT_CRED, InodeId
from tests.unit.test_fs_meta_support import ROOT, ROOT_DIR, FsHarness, fs

__all__ = ["fs"]
CFG = FsConfig()


def _page(h: FsHarness, d: int, cookie: int, limit: int) -> EntriesResult:
    result = h.ask(ReadDir(InodeId(d), cookie, limit, ROOT))
    assert isinstance(result, EntriesResult)
    assert len(result.entries) <= limit
    return result


def test_pages_resume_after_the_cookie_of_the_last_entry(fs: FsHarness) -> None:
    s = fs.session()
    d = s.mkdir(ROOT_DIR, b"d")
    names = [b"e%02d" % i for i in range(10)]
    for n in names:
        s.mknod(d.inode, n)
    seen: list[bytes] = []
    cookie, pages = 0, 0
    for _ in range(10):
        page = _page(fs, d.inode, cookie, 3)
        seen.extend(e.name for e in page.entries)
        pages += 1
        if not page.more:
            break
        cookie = page.entries[-1].cookie
    assert seen == names and pages == 4


def test_entries_removed_before_the_cookie_do_not_shift_the_listing(fs: FsHarness) -> None:
    s = fs.session()
    d = s.mkdir(ROOT_DIR, b"d")
    for i in range(6):
        s.mknod(d.inode, b"e%d" % i)
    first = _page(fs, d.inode, 0, 3)
    for n in (b"e0", b"e1"):
        s.ok(Unlink(d.inode, n, ROOT))
    rest = _page(fs, d.inode, first.entries[-1].cookie, 10)
    assert [e.name for e in rest.entries] == [b"e3", b"e4", b"e5"] and not rest.more


def test_an_empty_directory_lists_nothing(fs: FsHarness) -> None:
    s = fs.session()
    d = s.mkdir(ROOT_DIR, b"d")
    assert _page(fs, d.inode, 0, 5) == EntriesResult((), False)


class _Dir:
    """A directory on the twin, changed and listed without going through the log."""

    def __init__(self) -> None:
        self.store = memory_meta_store()
        self.machine = meta_machine(self.store)
        self.fs = FsMachine()
        self.index = 10
        with self.store.writer() as view:
            w = FsWriter(view)
            bootstrap(w, self._op())
            self.ino = namespace.mkdir(w, self._op(), ROOT_DIR, b"big", 0o755, ROOT_CRED).ino

    def _op(self) -> Op:
        self.index += 1
        return Op(self.index, 0, 0, CFG)

    def add(self, names: list[bytes]) -> None:
        with self.store.writer() as view:
            w = FsWriter(view)
            for n in names:
                namespace.mknod(w, self._op(), self.ino, n, 0o100644, 0, ROOT_CRED)

    def remove(self, names: list[bytes]) -> None:
        with self.store.writer() as view:
            w = FsWriter(view)
            for n in names:
                namespace.unlink(w, self._op(), self.ino, n, ROOT_CRED)

    def page(self, cookie: int, limit: int) -> EntriesResult:
        with self.store.reader() as view:
            result = self.fs.ask(FsReader(view), ReadDir(self.ino, cookie, limit, ROOT))
        assert isinstance(result, EntriesResult) and len(result.entries) <= limit
        return result


def test_a_directory_of_100000_entries_lists_in_pages_while_it_changes() -> None:
    """Every entry present throughout is listed exactly once; entries removed before
    the listing reaches them are not listed; entries added during it are listed
    (cookies follow creation order); no page exceeds its limit."""
    rng = random.Random(5)
    big = _Dir()
    initial = [b"f%06d" % i for i in range(100_000)]
    big.add(initial)
    removed: set[bytes] = set()
    added: list[bytes] = []
    listed: list[bytes] = []
    cookie, pages = 0, 0
    for _ in range(1_000):  # bounded: 100,000 / 1,000 + what is added
        page = big.page(cookie, 1_000)
        pages += 1
        listed.extend(e.name for e in page.entries)
        if not page.more:
            break
        cookie = page.entries[-1].cookie
        # Some already listed, most not; sampled from a list (sorting a set of 100,000
        # names per page would cost more than the listing).
        doomed = list(dict.fromkeys(n for n in rng.sample(initial, 60) if n not in removed))
        big.remove(doomed[:50])
        removed |= set(doomed[:50])
        fresh = [b"n%05d" % (len(added) + i) for i in range(50)]
        big.add(fresh)
        added.extend(fresh)
    assert len(listed) == len(set(listed)), "an entry was listed twice"
    never_removed = (set(initial) | set(added)) - removed
    assert never_removed <= set(listed)
    listed_set = set(listed)
    unlisted_removed = removed - listed_set
    assert all(n in removed for n in set(initial) - listed_set)
    assert unlisted_removed and len(listed) > 100_000 - len(removed)
    assert 100 <= pages < 200
    with big.store.reader() as view:
        assert check(FsReader(view)) == []
