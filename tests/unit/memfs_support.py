"""Helpers for the memfs unit tests: a fresh core with a fake clock, errno
assertions, and `fsck`, which checks the whole tree's invariants through the
public API (every memfs test ends with one)."""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator

import pytest

from fs.memfs import MemFsCore
from fs.types import ROOT_CRED, ROOT_INODE, Cred, FsError, InodeId

ALICE = Cred(1000, 1000, (1000,), 11)
BOB = Cred(1001, 1001, (1001,), 12)
CAROL_IN_STAFF = Cred(1002, 1002, (1002, 50), 13)  # supplementary group 50


class FakeClock:
    """Nanoseconds that advance by one microsecond per reading."""

    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000_000

    def __call__(self) -> int:
        self.now += 1000
        return self.now


def new_core(**kwargs: int) -> MemFsCore:
    return MemFsCore(FakeClock(), **kwargs)


@contextlib.contextmanager
def raises_errno(code: int) -> Iterator[None]:
    with pytest.raises(FsError) as info:
        yield
    assert info.value.errno == code, f"expected errno {code}, got {info.value}"


def listing(core: MemFsCore, inode: InodeId, batch: int = 7) -> list[bytes]:
    """All names of a directory, read in small batches by cookie."""
    names: list[bytes] = []
    cookie = 0
    for _ in range(1_000_000):
        entries = core.readdir(inode, cookie, batch, ROOT_CRED)
        if not entries:
            return names
        names.extend(e.name for e in entries)
        cookie = entries[-1].cookie
    raise AssertionError("readdir never ended")


def fsck(core: MemFsCore, open_orphans: int = 0) -> None:
    """Check the tree: nlink of every inode equals its names (dirs: 2 + subdirs),
    '..' names the parent, readdir agrees with lookup, and the live inodes are
    exactly the reachable ones plus `open_orphans` unlinked-but-open ones."""
    names_of: dict[int, int] = {}
    seen_dirs: set[int] = set()
    stack = [ROOT_INODE]
    for _ in range(1_000_000):
        if not stack:
            break
        directory = stack.pop()
        assert directory not in seen_dirs, "a directory is reachable twice"
        seen_dirs.add(directory)
        names = listing(core, directory)
        assert len(names) == len(set(names)), "readdir repeated a name"
        subdirs = 0
        for name in names:
            attr = core.lookup(directory, name, ROOT_CRED)
            names_of[attr.inode] = names_of.get(attr.inode, 0) + 1
            if stat.S_ISDIR(attr.mode):
                subdirs += 1
                stack.append(attr.inode)
                assert core.lookup(attr.inode, b"..", ROOT_CRED).inode == directory
        assert core.getattr(directory, ROOT_CRED).nlink == 2 + subdirs
    for inode, count in names_of.items():
        attr = core.getattr(InodeId(inode), ROOT_CRED)
        if not stat.S_ISDIR(attr.mode):
            assert attr.nlink == count, f"inode {inode}: nlink {attr.nlink}, names {count}"
    reachable = len(seen_dirs | set(names_of))
    assert core.inode_count() == reachable + open_orphans


def snapshot(core: MemFsCore) -> list[tuple[bytes, tuple[int, ...]]]:
    """Every reachable path with its full attributes (to prove a refused call changed nothing)."""
    out: list[tuple[bytes, tuple[int, ...]]] = []
    stack: list[tuple[bytes, InodeId]] = [(b"", ROOT_INODE)]
    for _ in range(1_000_000):
        if not stack:
            return out
        path, directory = stack.pop()
        for name in listing(core, directory):
            a = core.lookup(directory, name, ROOT_CRED)
            out.append((path + b"/" + name, (
                a.inode, a.mode, a.nlink, a.uid, a.gid, a.size, a.mtime_ns, a.ctime_ns,
            )))
            if stat.S_ISDIR(a.mode):
                stack.append((path + b"/" + name, a.inode))
    raise AssertionError("tree walk never ended")
