"""An in-memory `FsApi` with POSIX semantics: the FUSE layer's test backend
and the reference the networked client is compared against.

`MemFsCore` is synchronous and does no I/O (time comes from an injected
clock); `MemFs` is the async `FsApi` over it, plus one test hook (`set_hang`)
that makes every call block, so the FUSE layer's operation timeout can be
tested.

Invariants:
* an inode lives in `_nodes` exactly while it has a name (nlink > 0) or an
  open handle: an unlinked file stays readable and writable through its
  handles (an orphan) until its last `release`; inode ids are never reused;
* a directory's nlink is 2 + its number of subdirectories, and its `parent`
  is the directory that holds its one name (the root is its own parent);
* readdir cookies come from a per-directory counter: listing order is
  creation order, a cookie always resumes right after the entry it was
  handed out with, and a name replaced by rename keeps its cookie;
* every check (permission, type, existence, limits) happens before the first
  change: a call that raises has changed nothing;
* root (uid 0) bypasses read/write permission checks as Linux does
  (CAP_DAC_OVERRIDE) and may execute a non-directory only if some x bit is set.

Times: every change stamps ctime (and mtime of the data or of a directory's
entries); atime changes only through setattr and at creation (like a
`noatime` mount: the networked file system keeps reads off the metadata log).
Set-id bits are killed on write and truncate by non-root callers and on every
chown of a non-directory, as the kernel expects of a FUSE file system that
negotiated FUSE_HANDLE_KILLPRIV (libfuse 3 does by default).
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from fs import posix
from fs.posix import LINK_MAX, R_OK, RENAME_EXCHANGE, RENAME_NOREPLACE, W_OK, X_OK
from fs.types import (
    MAX_FILE_SIZE,
    PATH_MAX,
    ROOT_INODE,
    Attr,
    Cred,
    DirEntry,
    FileHandle,
    FsError,
    InodeId,
    SetAttrFields,
    StatFs,
)

PAGE = 64 * 1024  # file data is kept in pages of this size; absent pages are holes
STATFS_BLOCK = 4096  # the unit statfs counts in
_MAKEABLE = frozenset({stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK})


def _fail(code: int, message: str = "") -> FsError:
    return FsError(code, message)


class _Entries:
    """The names of one directory, each with a stable cookie."""

    __slots__ = ("by_cookie", "by_name", "cookies", "next_cookie")

    def __init__(self) -> None:
        self.by_name: dict[bytes, tuple[InodeId, int]] = {}  # name -> (child, cookie)
        self.by_cookie: dict[int, bytes] = {}  # live cookie -> name
        self.cookies: list[int] = []  # ascending; may still hold cookies of removed names
        self.next_cookie = 1  # 0 means "from the start" in readdir

    def get(self, name: bytes) -> InodeId | None:
        found = self.by_name.get(name)
        return None if found is None else found[0]

    def add(self, name: bytes, child: InodeId) -> None:
        cookie = self.next_cookie
        self.next_cookie += 1
        self.by_name[name] = (child, cookie)
        self.by_cookie[cookie] = name
        self.cookies.append(cookie)  # the counter only grows: the list stays sorted

    def point(self, name: bytes, child: InodeId) -> None:
        """Make an existing name refer to `child`, keeping its cookie."""
        self.by_name[name] = (child, self.by_name[name][1])

    def remove(self, name: bytes) -> None:
        _, cookie = self.by_name.pop(name)
        del self.by_cookie[cookie]
        if len(self.cookies) > 2 * len(self.by_cookie) + 64:  # amortised compaction
            self.cookies = [c for c in self.cookies if c in self.by_cookie]

    def after(self, cookie: int, limit: int) -> list[tuple[bytes, InodeId, int]]:
        out: list[tuple[bytes, InodeId, int]] = []
        for index in range(bisect.bisect_right(self.cookies, cookie), len(self.cookies)):
            if len(out) >= limit:
                break
            name = self.by_cookie.get(self.cookies[index])
            if name is not None:
                out.append((name, self.by_name[name][0], self.cookies[index]))
        return out

    def __len__(self) -> int:
        return len(self.by_name)


@dataclass(slots=True, eq=False)
class _Node:
    ino: InodeId
    mode: int  # type and permission bits
    uid: int
    gid: int
    nlink: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    size: int = 0  # bytes (regular files), target length (symlinks)
    pages: dict[int, bytearray] | None = None  # regular files: page index -> PAGE bytes
    target: bytes = b""  # symlinks
    entries: _Entries | None = None  # directories
    parent: InodeId = ROOT_INODE  # directories: where the one name lives
    xattrs: dict[bytes, bytes] | None = None  # created on first set
    opens: int = 0  # open handles (an orphan lives while this is > 0)


@dataclass(slots=True)
class _Handle:
    ino: InodeId
    flags: int  # open flags (access mode, O_APPEND)
    cred: Cred  # the opener: set-id bits are killed when a non-root opener writes


class MemFsCore:
    """The whole file system in memory; see the module docstring for its rules."""

    def __init__(
        self,
        clock: Callable[[], int],
        *,
        capacity: int = 1 << 40,
        max_inodes: int = 1 << 32,
    ) -> None:
        self._clock = clock  # nanoseconds since the epoch
        self._capacity_pages = capacity // PAGE  # ENOSPC beyond this many data pages
        self._max_inodes = max_inodes
        self._used_pages = 0
        self._next_ino = ROOT_INODE + 1
        self._next_fh = 1
        self._handles: dict[FileHandle, _Handle] = {}
        self.forgotten: list[tuple[InodeId, int]] = []  # what FUSE forgot (for tests)
        now = clock()
        root = _Node(ROOT_INODE, stat.S_IFDIR | 0o755, 0, 0, 2, now, now, now)
        root.entries = _Entries()
        self._nodes: dict[InodeId, _Node] = {ROOT_INODE: root}

    # --- helpers ----------------------------------------------------------------

    def _node(self, inode: InodeId) -> _Node:
        node = self._nodes.get(inode)
        if node is None:
            raise _fail(errno.ENOENT, f"no inode {inode}")
        return node

    def _dir(self, inode: InodeId, cred: Cred, mask: int) -> tuple[_Node, _Entries]:
        node = self._node(inode)
        if node.entries is None:
            raise _fail(errno.ENOTDIR)
        if not posix.may(node, cred, mask):
            raise _fail(errno.EACCES, f"directory {inode}")
        return node, node.entries

    def _child(self, entries: _Entries, name: bytes) -> _Node:
        posix.check_name(name)
        child = entries.get(name)
        if child is None:
            raise _fail(errno.ENOENT, repr(name))
        return self._nodes[child]

    def _attr(self, node: _Node) -> Attr:
        blocks = len(node.pages) * (PAGE // 512) if node.pages else 0
        return Attr(
            node.ino, node.mode, node.nlink, node.uid, node.gid, node.size,
            node.atime_ns, node.mtime_ns, node.ctime_ns, node.rdev, blocks,
        )

    def _touch_dir(self, node: _Node, now: int) -> None:
        node.mtime_ns = node.ctime_ns = now

    def _maybe_free(self, node: _Node) -> None:
        if node.nlink <= 0 and node.opens <= 0 and node.ino != ROOT_INODE:
            if node.pages:
                self._used_pages -= len(node.pages)
            del self._nodes[node.ino]

    def _new_node(
        self, parent: InodeId, name: bytes, mode: int, cred: Cred
    ) -> tuple[_Node, _Node, _Entries]:
        """Check and allocate a child of `parent` (not yet linked in)."""
        dnode, entries = self._dir(parent, cred, W_OK | X_OK)
        posix.check_new_name(name)
        if entries.get(name) is not None:
            raise _fail(errno.EEXIST, repr(name))
        if dnode.nlink == 0:
            raise _fail(errno.ENOENT, "directory was removed")
        if len(self._nodes) >= self._max_inodes:
            raise _fail(errno.ENOSPC, "no free inodes")
        mode, gid = posix.new_owner(dnode, mode, cred)
        now = self._clock()
        node = _Node(InodeId(self._next_ino), mode, cred.uid, gid, 1, now, now, now)
        self._next_ino += 1
        return node, dnode, entries

    def _link_in(self, node: _Node, dnode: _Node, entries: _Entries, name: bytes) -> Attr:
        self._nodes[node.ino] = node
        entries.add(name, node.ino)
        self._touch_dir(dnode, node.ctime_ns)
        return self._attr(node)

    # --- names and attributes ---------------------------------------------------

    def lookup(self, parent: InodeId, name: bytes, cred: Cred) -> Attr:
        dnode, entries = self._dir(parent, cred, X_OK)
        if name == b".":
            return self._attr(dnode)
        if name == b"..":
            return self._attr(self._node(dnode.parent))
        return self._attr(self._child(entries, name))

    def getattr(self, inode: InodeId, cred: Cred) -> Attr:
        return self._attr(self._node(inode))

    def setattr(
        self, inode: InodeId, fields: SetAttrFields, cred: Cred, fh: FileHandle | None = None
    ) -> Attr:
        node = self._node(inode)
        handle = None if fh is None else self._handles.get(fh)
        writable = handle is not None and handle.ino == inode and bool(handle.flags & os.O_ACCMODE)
        posix.check_setattr(node, fields, cred, MAX_FILE_SIZE, writable_handle=writable)
        now = self._clock()
        if fields.size is not None:
            self._truncate(node, fields.size, now)
            if not cred.is_root:
                node.mode = posix.killed_privs(node.mode)
        if fields.uid is not None or fields.gid is not None:
            node.uid = node.uid if fields.uid is None else fields.uid
            node.gid = node.gid if fields.gid is None else fields.gid
            node.mode = posix.killed_privs(node.mode)
        if fields.mode is not None:
            node.mode = stat.S_IFMT(node.mode) | posix.chmod_bits(fields.mode, node.gid, cred)
        if fields.atime_ns is not None:
            node.atime_ns = now if fields.times_now else fields.atime_ns
        if fields.mtime_ns is not None:
            node.mtime_ns = now if fields.times_now else fields.mtime_ns
        if fields != SetAttrFields():
            node.ctime_ns = now
        return self._attr(node)

    def mknod(self, parent: InodeId, name: bytes, mode: int, rdev: int, cred: Cred) -> Attr:
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in _MAKEABLE:
            raise _fail(errno.EINVAL, "mknod of this type")
        if kind in (stat.S_IFCHR, stat.S_IFBLK) and not cred.is_root:
            raise _fail(errno.EPERM, "device nodes need root")
        node, dnode, entries = self._new_node(parent, name, kind | (mode & 0o7777), cred)
        if kind == stat.S_IFREG:
            node.pages = {}
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = rdev
        return self._link_in(node, dnode, entries, name)

    def mkdir(self, parent: InodeId, name: bytes, mode: int, cred: Cred) -> Attr:
        node, dnode, entries = self._new_node(parent, name, stat.S_IFDIR | (mode & 0o7777), cred)
        node.nlink = 2
        node.entries = _Entries()
        node.parent = dnode.ino
        dnode.nlink += 1
        return self._link_in(node, dnode, entries, name)

    def symlink(self, parent: InodeId, name: bytes, target: bytes, cred: Cred) -> Attr:
        if len(target) > PATH_MAX:
            raise _fail(errno.ENAMETOOLONG, "symlink target longer than PATH_MAX")
        if not target:
            raise _fail(errno.ENOENT, "empty symlink target")
        node, dnode, entries = self._new_node(parent, name, stat.S_IFLNK | 0o777, cred)
        node.target, node.size = target, len(target)
        return self._link_in(node, dnode, entries, name)

    def readlink(self, inode: InodeId, cred: Cred) -> bytes:
        node = self._node(inode)
        if not stat.S_ISLNK(node.mode):
            raise _fail(errno.EINVAL, "not a symlink")
        return node.target

    def link(self, inode: InodeId, new_parent: InodeId, new_name: bytes, cred: Cred) -> Attr:
        node = self._node(inode)
        dnode, entries = self._dir(new_parent, cred, W_OK | X_OK)
        posix.check_new_name(new_name)
        if stat.S_ISDIR(node.mode):
            raise _fail(errno.EPERM, "hard link to a directory")
        if entries.get(new_name) is not None:
            raise _fail(errno.EEXIST, repr(new_name))
        if node.nlink == 0:
            raise _fail(errno.ENOENT, "linking an unlinked inode")
        if node.nlink >= LINK_MAX:
            raise _fail(errno.EMLINK)
        node.nlink += 1
        node.ctime_ns = self._clock()
        entries.add(new_name, node.ino)
        self._touch_dir(dnode, node.ctime_ns)
        return self._attr(node)

    def unlink(self, parent: InodeId, name: bytes, cred: Cred) -> None:
        dnode, entries = self._dir(parent, cred, W_OK | X_OK)
        if name in (b".", b".."):
            raise _fail(errno.EISDIR, "unlink of . or ..")
        node = self._child(entries, name)
        if stat.S_ISDIR(node.mode):
            raise _fail(errno.EISDIR, "unlink of a directory")
        if posix.sticky_denies(dnode, node, cred):
            raise _fail(errno.EPERM, "sticky directory")
        entries.remove(name)
        node.nlink -= 1
        now = self._clock()
        node.ctime_ns = now
        self._touch_dir(dnode, now)
        self._maybe_free(node)

    def rmdir(self, parent: InodeId, name: bytes, cred: Cred) -> None:
        dnode, entries = self._dir(parent, cred, W_OK | X_OK)
        if name == b".":
            raise _fail(errno.EINVAL, "rmdir .")
        if name == b"..":
            raise _fail(errno.ENOTEMPTY, "rmdir ..")
        node = self._child(entries, name)
        if node.entries is None:
            raise _fail(errno.ENOTDIR)
        if len(node.entries):
            raise _fail(errno.ENOTEMPTY)
        if posix.sticky_denies(dnode, node, cred):
            raise _fail(errno.EPERM, "sticky directory")
        entries.remove(name)
        node.nlink = 0
        dnode.nlink -= 1
        now = self._clock()
        node.ctime_ns = now
        self._touch_dir(dnode, now)
        self._maybe_free(node)

    def rename(
        self, parent: InodeId, name: bytes, new_parent: InodeId, new_name: bytes,
        flags: int, cred: Cred,
    ) -> None:
        posix.check_rename_flags(flags)
        for n in (name, new_name):
            if n in (b".", b".."):
                raise _fail(errno.EINVAL, "rename of . or ..")
        src_dir, src_entries = self._dir(parent, cred, W_OK | X_OK)
        dst_dir, dst_entries = self._dir(new_parent, cred, W_OK | X_OK)
        node = self._child(src_entries, name)
        posix.check_name(new_name)
        target_ino = dst_entries.get(new_name)
        target = None if target_ino is None else self._nodes[target_ino]
        self._check_rename(src_dir, node, dst_dir, target, flags, cred)
        if target is node:
            return  # two names of one inode: POSIX says do nothing
        now = self._clock()
        if flags & RENAME_EXCHANGE:
            assert target is not None  # _check_rename demands it
            src_entries.point(name, target.ino)
            dst_entries.point(new_name, node.ino)
            self._reparent(target, dst_dir, src_dir)
            target.ctime_ns = now
        else:
            src_entries.remove(name)
            if target is not None:
                self._drop_target(target, dst_dir, now)
                dst_entries.point(new_name, node.ino)
            else:
                dst_entries.add(new_name, node.ino)
        self._reparent(node, src_dir, dst_dir)
        node.ctime_ns = now
        self._touch_dir(src_dir, now)
        self._touch_dir(dst_dir, now)
        if target is not None and not flags & RENAME_EXCHANGE:
            self._maybe_free(target)

    def _check_rename(
        self, src_dir: _Node, node: _Node, dst_dir: _Node, target: _Node | None,
        flags: int, cred: Cred,
    ) -> None:
        if posix.sticky_denies(src_dir, node, cred):
            raise _fail(errno.EPERM, "sticky source directory")
        if target is None:
            if flags & RENAME_EXCHANGE:
                raise _fail(errno.ENOENT, "exchange with a missing name")
        else:
            if flags & RENAME_NOREPLACE:
                raise _fail(errno.EEXIST, "target exists")
            if posix.sticky_denies(dst_dir, target, cred):
                raise _fail(errno.EPERM, "sticky target directory")
            if target is node:
                return
            if not flags & RENAME_EXCHANGE:
                if node.entries is not None and target.entries is None:
                    raise _fail(errno.ENOTDIR, "directory over a non-directory")
                if node.entries is None and target.entries is not None:
                    raise _fail(errno.EISDIR, "non-directory over a directory")
                if target.entries is not None and len(target.entries):
                    raise _fail(errno.ENOTEMPTY)
        moves = [(node, src_dir, dst_dir)]
        if target is not None and flags & RENAME_EXCHANGE:
            moves.append((target, dst_dir, src_dir))
        for moved, old, new in moves:
            if moved.entries is None or old is new:
                continue
            if not posix.may(moved, cred, W_OK):  # its ".." changes
                raise _fail(errno.EACCES, "moving a directory needs write on it")
            if self._is_ancestor(moved, new):
                raise _fail(errno.EINVAL, "directory into its own subtree")

    def _is_ancestor(self, node: _Node, of: _Node) -> bool:
        """True if `node` is `of` or one of its ancestors (bounded by the tree depth)."""
        current = of
        for _ in range(len(self._nodes) + 1):
            if current is node:
                return True
            if current.ino == ROOT_INODE:
                return False
            current = self._nodes[current.parent]
        raise AssertionError("directory parents form a cycle")

    def _reparent(self, node: _Node, old: _Node, new: _Node) -> None:
        if node.entries is not None and old is not new:
            node.parent = new.ino
            old.nlink -= 1
            new.nlink += 1

    def _drop_target(self, target: _Node, dst_dir: _Node, now: int) -> None:
        if target.entries is not None:
            target.nlink = 0
            dst_dir.nlink -= 1
        else:
            target.nlink -= 1
        target.ctime_ns = now

    def readdir(
        self, inode: InodeId, cookie: int, limit: int, cred: Cred
    ) -> list[DirEntry]:
        _, entries = self._dir(inode, cred, R_OK)
        return [
            DirEntry(name, self._attr(self._nodes[child]), next_cookie)
            for name, child, next_cookie in entries.after(cookie, max(limit, 1))
        ]

    def access(self, inode: InodeId, mask: int, cred: Cred) -> None:
        node = self._node(inode)
        if mask & 7 and not posix.may(node, cred, mask & 7):
            raise _fail(errno.EACCES)

    def statfs(self, cred: Cred) -> StatFs:
        total = self._capacity_pages * PAGE // STATFS_BLOCK
        free = (self._capacity_pages - self._used_pages) * PAGE // STATFS_BLOCK
        files_free = self._max_inodes - len(self._nodes)
        return StatFs(STATFS_BLOCK, total, free, free, self._max_inodes, files_free)

    # --- extended attributes ----------------------------------------------------

    def setxattr(
        self, inode: InodeId, name: bytes, value: bytes, flags: int, cred: Cred
    ) -> None:
        node = self._node(inode)
        posix.check_xattr(node, name, cred, write=True)
        posix.check_xattr_set(flags, value, node.xattrs is not None and name in node.xattrs)
        if node.xattrs is None:
            node.xattrs = {}
        node.xattrs[name] = bytes(value)
        node.ctime_ns = self._clock()

    def getxattr(self, inode: InodeId, name: bytes, cred: Cred) -> bytes:
        node = self._node(inode)
        posix.check_xattr(node, name, cred, write=False)
        if node.xattrs is None or name not in node.xattrs:
            raise _fail(errno.ENODATA, "no such xattr")
        return node.xattrs[name]

    def listxattr(self, inode: InodeId, cred: Cred) -> list[bytes]:
        return posix.listable_xattrs(list(self._node(inode).xattrs or ()), cred)

    def removexattr(self, inode: InodeId, name: bytes, cred: Cred) -> None:
        node = self._node(inode)
        posix.check_xattr(node, name, cred, write=True)
        if node.xattrs is None or name not in node.xattrs:
            raise _fail(errno.ENODATA, "no such xattr")
        del node.xattrs[name]
        node.ctime_ns = self._clock()

    # --- open files and data ----------------------------------------------------

    def create(
        self, parent: InodeId, name: bytes, mode: int, flags: int, cred: Cred
    ) -> tuple[FileHandle, Attr]:
        """O_CREAT: make a regular file, or open the existing one unless O_EXCL."""
        _, entries = self._dir(parent, cred, X_OK)
        posix.check_name(name)
        existing = entries.get(name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise _fail(errno.EEXIST, repr(name))
            if stat.S_ISDIR(self._nodes[existing].mode):
                raise _fail(errno.EISDIR, repr(name))
            fh = self.open(existing, flags, cred)
            return fh, self._attr(self._nodes[existing])
        attr = self.mknod(parent, name, stat.S_IFREG | (mode & 0o7777), 0, cred)
        return self._open_node(self._nodes[attr.inode], flags, cred), attr

    def open(self, inode: InodeId, flags: int, cred: Cred) -> FileHandle:
        node = self._node(inode)
        mask = posix.open_mask(flags)
        if stat.S_ISDIR(node.mode) and mask & W_OK:
            raise _fail(errno.EISDIR)
        if stat.S_ISLNK(node.mode):
            raise _fail(errno.ELOOP)
        if not (stat.S_ISREG(node.mode) or stat.S_ISDIR(node.mode)):
            raise _fail(errno.ENXIO, "special files are opened by the kernel")
        if not posix.may(node, cred, mask):
            raise _fail(errno.EACCES)
        if flags & os.O_TRUNC and stat.S_ISREG(node.mode):
            self._truncate(node, 0, self._clock())
            if not cred.is_root:
                node.mode = posix.killed_privs(node.mode)
        return self._open_node(node, flags, cred)

    def _open_node(self, node: _Node, flags: int, cred: Cred) -> FileHandle:
        fh = FileHandle(self._next_fh)
        self._next_fh += 1
        self._handles[fh] = _Handle(node.ino, flags, cred)
        node.opens += 1
        return fh

    def _handle(self, fh: FileHandle, write: bool) -> tuple[_Handle, _Node]:
        handle = self._handles.get(fh)
        if handle is None:
            raise _fail(errno.EBADF, f"no open file {fh}")
        access = handle.flags & os.O_ACCMODE
        if (write and access == os.O_RDONLY) or (not write and access == os.O_WRONLY):
            raise _fail(errno.EBADF, "wrong access mode")
        node = self._nodes[handle.ino]
        if node.pages is None:
            raise _fail(errno.EISDIR)
        return handle, node

    def read(self, fh: FileHandle, offset: int, size: int) -> bytes:
        _, node = self._handle(fh, write=False)
        assert node.pages is not None
        if offset < 0 or size < 0:
            raise _fail(errno.EINVAL)
        end = min(node.size, offset + size)
        parts: list[bytes | bytearray] = []
        pos = offset
        while pos < end:
            index, start = divmod(pos, PAGE)
            count = min(PAGE - start, end - pos)
            page = node.pages.get(index)
            parts.append(page[start:start + count] if page is not None else bytes(count))
            pos += count
        return b"".join(parts)

    def write(self, fh: FileHandle, offset: int, data: bytes) -> int:
        handle, node = self._handle(fh, write=True)
        assert node.pages is not None
        if handle.flags & os.O_APPEND:
            offset = node.size  # appends land at the end even if another writer grew it
        if offset < 0:
            raise _fail(errno.EINVAL)
        end = offset + len(data)
        if end > MAX_FILE_SIZE:
            raise _fail(errno.EFBIG)
        if not data:
            return 0
        first, last = offset // PAGE, (end - 1) // PAGE
        fresh = sum(1 for i in range(first, last + 1) if i not in node.pages)
        if self._used_pages + fresh > self._capacity_pages:
            raise _fail(errno.ENOSPC)
        self._used_pages += fresh
        view, pos = memoryview(data), offset
        while pos < end:
            index, start = divmod(pos, PAGE)
            count = min(PAGE - start, end - pos)
            page = node.pages.setdefault(index, bytearray(PAGE))
            page[start:start + count] = view[pos - offset:pos - offset + count]
            pos += count
        node.size = max(node.size, end)
        node.mtime_ns = node.ctime_ns = self._clock()
        if not handle.cred.is_root:
            node.mode = posix.killed_privs(node.mode)
        return len(data)

    def _truncate(self, node: _Node, size: int, now: int) -> None:
        assert node.pages is not None
        if size < node.size:
            dropped = [i for i in node.pages if i * PAGE >= size]
            for index in dropped:
                del node.pages[index]
            self._used_pages -= len(dropped)
            index, start = divmod(size, PAGE)
            page = node.pages.get(index)
            if page is not None and start:
                page[start:] = bytes(PAGE - start)
        node.size = size
        node.mtime_ns = node.ctime_ns = now

    def flush(self, fh: FileHandle) -> None:
        if fh not in self._handles:
            raise _fail(errno.EBADF)

    def release(self, fh: FileHandle) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            raise _fail(errno.EBADF)
        node = self._nodes[handle.ino]
        node.opens -= 1
        self._maybe_free(node)

    def forget(self, inodes: Sequence[tuple[InodeId, int]]) -> None:
        # Orphans live by open handles, not by kernel references (as in the
        # metadata service); only recorded, so tests can see forget arrive.
        self.forgotten.extend(inodes)
        del self.forgotten[:-1000]

    # --- test support -------------------------------------------------------------

    def populate(self, parent: InodeId, prefix: bytes, count: int) -> InodeId:
        """Add `count` hard links named prefix+number to one fresh empty file
        (a huge directory that costs one inode; LINK_MAX is not applied)."""
        attr = self.mknod(parent, prefix + b"0", stat.S_IFREG | 0o644, 0, Cred(0, 0))
        node, entries = self._nodes[attr.inode], self._nodes[parent].entries
        assert entries is not None
        for number in range(1, count):
            entries.add(prefix + str(number).encode(), node.ino)
        node.nlink = count
        return node.ino

    def open_handles(self) -> int:
        return len(self._handles)

    def inode_count(self) -> int:
        return len(self._nodes)


class MemFs:
    """`FsApi` over `MemFsCore`; every call is a trio checkpoint (or blocks while hung)."""

    def __init__(self, core: MemFsCore | None = None) -> None:
        self.core = core if core is not None else MemFsCore(time.time_ns)
        self._unhung: trio.Event | None = None  # set while calls must block (test hook)

    def set_hang(self, hang: bool) -> None:
        """Test hook: while hung, every call blocks until unhung (or cancelled)."""
        if hang and self._unhung is None:
            self._unhung = trio.Event()
        elif not hang and self._unhung is not None:
            self._unhung.set()
            self._unhung = None

    async def _enter(self) -> None:
        if self._unhung is not None:
            await self._unhung.wait()
        else:
            await trio.lowlevel.checkpoint()

    async def lookup(self, parent: InodeId, name: bytes, cred: Cred) -> Attr:
        await self._enter()
        return self.core.lookup(parent, name, cred)

    async def getattr(self, inode: InodeId, cred: Cred) -> Attr:
        await self._enter()
        return self.core.getattr(inode, cred)

    async def setattr(
        self, inode: InodeId, fields: SetAttrFields, cred: Cred, fh: FileHandle | None = None
    ) -> Attr:
        await self._enter()
        return self.core.setattr(inode, fields, cred, fh)

    async def mknod(
        self, parent: InodeId, name: bytes, mode: int, rdev: int, cred: Cred
    ) -> Attr:
        await self._enter()
        return self.core.mknod(parent, name, mode, rdev, cred)

    async def mkdir(self, parent: InodeId, name: bytes, mode: int, cred: Cred) -> Attr:
        await self._enter()
        return self.core.mkdir(parent, name, mode, cred)

    async def symlink(self, parent: InodeId, name: bytes, target: bytes, cred: Cred) -> Attr:
        await self._enter()
        return self.core.symlink(parent, name, target, cred)

    async def readlink(self, inode: InodeId, cred: Cred) -> bytes:
        await self._enter()
        return self.core.readlink(inode, cred)

    async def link(
        self, inode: InodeId, new_parent: InodeId, new_name: bytes, cred: Cred
    ) -> Attr:
        await self._enter()
        return self.core.link(inode, new_parent, new_name, cred)

    async def unlink(self, parent: InodeId, name: bytes, cred: Cred) -> None:
        await self._enter()
        self.core.unlink(parent, name, cred)

    async def rmdir(self, parent: InodeId, name: bytes, cred: Cred) -> None:
        await self._enter()
        self.core.rmdir(parent, name, cred)

    async def rename(
        self, parent: InodeId, name: bytes, new_parent: InodeId, new_name: bytes,
        flags: int, cred: Cred,
    ) -> None:
        await self._enter()
        self.core.rename(parent, name, new_parent, new_name, flags, cred)

    async def readdir(
        self, inode: InodeId, cookie: int, limit: int, cred: Cred
    ) -> Sequence[DirEntry]:
        await self._enter()
        return self.core.readdir(inode, cookie, limit, cred)

    async def access(self, inode: InodeId, mask: int, cred: Cred) -> None:
        await self._enter()
        self.core.access(inode, mask, cred)

    async def statfs(self, cred: Cred) -> StatFs:
        await self._enter()
        return self.core.statfs(cred)

    async def setxattr(
        self, inode: InodeId, name: bytes, value: bytes, flags: int, cred: Cred
    ) -> None:
        await self._enter()
        self.core.setxattr(inode, name, value, flags, cred)

    async def getxattr(self, inode: InodeId, name: bytes, cred: Cred) -> bytes:
        await self._enter()
        return self.core.getxattr(inode, name, cred)

    async def listxattr(self, inode: InodeId, cred: Cred) -> Sequence[bytes]:
        await self._enter()
        return self.core.listxattr(inode, cred)

    async def removexattr(self, inode: InodeId, name: bytes, cred: Cred) -> None:
        await self._enter()
        self.core.removexattr(inode, name, cred)

    async def create(
        self, parent: InodeId, name: bytes, mode: int, flags: int, cred: Cred
    ) -> tuple[FileHandle, Attr]:
        await self._enter()
        return self.core.create(parent, name, mode, flags, cred)

    async def open(self, inode: InodeId, flags: int, cred: Cred) -> FileHandle:
        await self._enter()
        return self.core.open(inode, flags, cred)

    async def read(self, fh: FileHandle, offset: int, size: int) -> bytes:
        await self._enter()
        return self.core.read(fh, offset, size)

    async def write(self, fh: FileHandle, offset: int, data: bytes) -> int:
        await self._enter()
        return self.core.write(fh, offset, data)

    async def flush(self, fh: FileHandle) -> None:
        await self._enter()
        self.core.flush(fh)

    async def fsync(self, fh: FileHandle, datasync: bool) -> None:
        await self._enter()
        self.core.flush(fh)  # memory is as durable as it gets: only the handle is checked

    async def release(self, fh: FileHandle) -> None:
        await self._enter()
        self.core.release(fh)

    async def forget(self, inodes: Sequence[tuple[InodeId, int]]) -> None:
        await self._enter()
        self.core.forget(inodes)
