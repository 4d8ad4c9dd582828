"""Names: lookup, create (every file type), link, unlink, rmdir, rename, readdir.

Sans-IO functions over an `FsWriter` (or `FsReader` for reads).  Each
mutation runs all of its checks (raising `Refused`) before its first write,
so a refused operation changes nothing.  Times come from the entry (`Op.ns`):
a new entry sets the parent's mtime and ctime; a changed inode gets a new
ctime.  Directory nlink is 2 + the number of subdirectories.

Removing the last name of a file deletes it with its chunks and xattrs,
unless some session has it open: then it becomes an orphan (nlink 0) and
`files.release`/`files.session_ended` reclaims it after the last close.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from fs.meta.context import Op
from fs.meta.perms import (
    R_OK,
    W_OK,
    X_OK,
    Refused,
    check_name,
    new_owner,
    require,
    sticky_allows,
)
from fs.meta.state import FsReader, FsWriter, InodeRec
from fs.types import PATH_MAX, ROOT_INODE, Attr, Cred, DirEntry, InodeId

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_DELETE_PAGE = 512  # rows removed per scan when reclaiming an inode


def get(r: FsReader, ino: int) -> InodeRec:
    rec = r.inode(ino)
    if rec is None:
        raise Refused(errno.ENOENT, f"no inode {ino}")
    return rec


def get_dir(r: FsReader, ino: int) -> InodeRec:
    rec = get(r, ino)
    if not stat.S_ISDIR(rec.mode):
        raise Refused(errno.ENOTDIR, f"inode {ino} is not a directory")
    return rec


def allow(rec: InodeRec, cred: Cred, mask: int, what: str) -> None:
    require(rec.mode, rec.uid, rec.gid, cred, mask, what)


def touched(rec: InodeRec, op: Op) -> InodeRec:
    """A directory whose entries changed (mtime and ctime)."""
    return replace(rec, mtime_ns=op.ns, ctime_ns=op.ns)


def lookup(r: FsReader, parent: int, name: bytes, cred: Cred) -> Attr:
    check_name(name, dots_ok=True)
    d = get_dir(r, parent)
    allow(d, cred, X_OK, "search permission on the directory")
    if name == b".":
        return d.attr()
    if name == b"..":
        return get(r, d.parent).attr()
    found = r.dirent(parent, name)
    if found is None:
        raise Refused(errno.ENOENT, f"no entry {name!r}")
    return get(r, found[0]).attr()


def _creatable(w: FsReader, parent: int, name: bytes, cred: Cred) -> InodeRec:
    check_name(name)
    d = get_dir(w, parent)
    allow(d, cred, W_OK | X_OK, "write and search permission on the directory")
    if w.dirent(parent, name) is not None:
        raise Refused(errno.EEXIST, f"{name!r} exists")
    return d


def _make(
    w: FsWriter, op: Op, d: InodeRec, name: bytes, mode: int, cred: Cred,
    rdev: int = 0, target: bytes = b"",
) -> InodeRec:
    """Create the inode and its entry (all checks done by the caller)."""
    uid, gid, mode = new_owner(d.mode, d.gid, cred, mode)
    is_dir = stat.S_ISDIR(mode)
    rec = w.new_inode(InodeRec(
        InodeId(0), mode, uid, gid, 2 if is_dir else 1, len(target), op.ns, op.ns, op.ns,
        rdev, target, d.ino if is_dir else InodeId(0),
    ))
    d = touched(w.add_entry(d, name, rec.ino), op)
    w.put_inode(replace(d, nlink=d.nlink + 1) if is_dir else d)
    return rec


def mknod(
    w: FsWriter, op: Op, parent: int, name: bytes, mode: int, rdev: int, cred: Cred
) -> InodeRec:
    kind = stat.S_IFMT(mode) or stat.S_IFREG
    if kind == stat.S_IFDIR:
        raise Refused(errno.EPERM, "mknod cannot make a directory")
    if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
        raise Refused(errno.EINVAL, f"unknown file type {kind:o}")
    is_dev = kind in (stat.S_IFCHR, stat.S_IFBLK)
    if is_dev and not cred.is_root:
        raise Refused(errno.EPERM, "only root makes device nodes")
    d = _creatable(w, parent, name, cred)
    return _make(w, op, d, name, kind | (mode & 0o7777), cred, rdev=rdev if is_dev else 0)


def mkdir(w: FsWriter, op: Op, parent: int, name: bytes, mode: int, cred: Cred) -> InodeRec:
    d = _creatable(w, parent, name, cred)
    if d.nlink >= op.config.max_links:
        raise Refused(errno.EMLINK, "too many subdirectories")
    return _make(w, op, d, name, stat.S_IFDIR | (mode & 0o1777), cred)


def symlink(
    w: FsWriter, op: Op, parent: int, name: bytes, target: bytes, cred: Cred
) -> InodeRec:
    if not target:
        raise Refused(errno.ENOENT, "empty symlink target")
    if len(target) > PATH_MAX:
        raise Refused(errno.ENAMETOOLONG, f"symlink target of {len(target)} bytes")
    if b"\0" in target:
        raise Refused(errno.EINVAL, "NUL in symlink target")
    d = _creatable(w, parent, name, cred)
    return _make(w, op, d, name, stat.S_IFLNK | 0o777, cred, target=target)


def readlink(r: FsReader, ino: int) -> bytes:
    rec = get(r, ino)
    if not stat.S_ISLNK(rec.mode):
        raise Refused(errno.EINVAL, "not a symlink")
    return rec.target


def link(
    w: FsWriter, op: Op, ino: int, new_parent: int, new_name: bytes, cred: Cred
) -> InodeRec:
    rec = get(w, ino)
    if stat.S_ISDIR(rec.mode):
        raise Refused(errno.EPERM, "hard links to directories are not allowed")
    d = _creatable(w, new_parent, new_name, cred)
    if rec.nlink == 0:
        raise Refused(errno.ENOENT, "the file was unlinked")
    if rec.nlink >= op.config.max_links:
        raise Refused(errno.EMLINK, f"{rec.nlink} links")
    rec = replace(rec, nlink=rec.nlink + 1, ctime_ns=op.ns)
    w.put_inode(rec)
    w.put_inode(touched(w.add_entry(d, new_name, rec.ino), op))
    return rec


def _removable(w: FsReader, parent: int, name: bytes, cred: Cred) -> tuple[InodeRec, InodeRec]:
    check_name(name)
    d = get_dir(w, parent)
    allow(d, cred, W_OK | X_OK, "write and search permission on the directory")
    found = w.dirent(parent, name)
    if found is None:
        raise Refused(errno.ENOENT, f"no entry {name!r}")
    child = get(w, found[0])
    if not sticky_allows(d.mode, d.uid, child.uid, cred):
        raise Refused(errno.EPERM, "sticky directory: not the owner")
    return d, child


def reclaim(w: FsWriter, rec: InodeRec) -> None:
    """Delete an inode that has no names and no opens, with its chunks and xattrs."""
    for _ in range(1 << 40):  # bounded by the file's chunk count
        chunks = w.chunks_from(rec.ino, 0, _DELETE_PAGE)
        for chunk in chunks:
            w.delete_chunk(chunk)
        if len(chunks) < _DELETE_PAGE:
            break
    for _ in range(1 << 40):  # bounded by the inode's xattr count
        names = w.xattr_names(rec.ino, b"", _DELETE_PAGE)
        for name in names:
            w.delete_xattr(rec.ino, name)
        if len(names) < _DELETE_PAGE:
            break
    w.delete_inode(rec.ino)


def drop_name(w: FsWriter, op: Op, rec: InodeRec) -> None:
    """One name of a non-directory is gone: fewer links, an orphan, or deletion."""
    rec = replace(rec, nlink=rec.nlink - 1, ctime_ns=op.ns)
    if rec.nlink > 0:
        w.put_inode(rec)
    elif w.is_open(rec.ino):
        w.put_inode(rec)
        w.mark_orphan(rec.ino)
    else:
        reclaim(w, rec)


def unlink(w: FsWriter, op: Op, parent: int, name: bytes, cred: Cred) -> None:
    d, child = _removable(w, parent, name, cred)
    if stat.S_ISDIR(child.mode):
        raise Refused(errno.EISDIR, "unlink of a directory")
    w.remove_entry(parent, name)
    w.put_inode(touched(d, op))
    drop_name(w, op, child)


def rmdir(w: FsWriter, op: Op, parent: int, name: bytes, cred: Cred) -> None:
    d, child = _removable(w, parent, name, cred)
    if not stat.S_ISDIR(child.mode):
        raise Refused(errno.ENOTDIR, "rmdir of a non-directory")
    if w.has_entries(child.ino):
        raise Refused(errno.ENOTEMPTY, "directory not empty")
    w.remove_entry(parent, name)
    w.put_inode(replace(touched(d, op), nlink=d.nlink - 1))
    reclaim(w, child)


def is_within(r: FsReader, ancestor: int, ino: int, max_depth: int) -> bool:
    """Whether directory `ino` is `ancestor` or lies in its subtree (walks up parents)."""
    for _ in range(max_depth):
        if ino == ancestor:
            return True
        if ino == ROOT_INODE:
            return False
        ino = get(r, ino).parent
    raise Refused(errno.ELOOP, "directory tree deeper than the configured limit")


def readdir(r: FsReader, ino: int, cookie: int, limit: int, cred: Cred) -> tuple[
    list[DirEntry], bool
]:
    """Up to `limit` entries after `cookie` in creation order, and whether more follow."""
    d = get_dir(r, ino)
    allow(d, cred, R_OK, "read permission on the directory")
    rows = r.entries_after(ino, cookie, limit + 1)
    out = []
    for c, name in rows[:limit]:
        found = r.dirent(ino, name)
        child = r.inode(found[0]) if found is not None else None
        if child is None:
            raise AssertionError(f"cookie row ({ino}, {c}) without its entry")  # fsck invariant
        out.append(DirEntry(name, child.attr(), c))
    return out, len(rows) > limit

