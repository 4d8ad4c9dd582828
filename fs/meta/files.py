"""Open files and orphans: create, open, release, and the end of a session.

Every open is registered per (inode, session) with a count, so the state
machine knows when a file with no names left (an orphan, nlink 0) may be
deleted: at its last release, or when the session that holds it open
expires or ends - whichever comes first.  Reclaiming deletes the inode, its
xattrs and its chunk map; the chunk servers learn through their heartbeats
that the handles are garbage.

Access is checked at open time only (POSIX file-descriptor semantics): a
later chmod does not revoke an open file, and the creator of a file gets
it open whatever mode it gave it.  An orphan cannot be opened again.
"""

from __future__ import annotations

import errno
import os
import stat

from fs.meta.context import Op
from fs.meta.namespace import allow, get, get_dir, mknod, reclaim
from fs.meta.perms import R_OK, W_OK, X_OK, Refused, check_name
from fs.meta.state import FsWriter, InodeRec
from fs.types import Cred

_PAGE = 512


def access_mask(flags: int) -> int:
    """The permission an open(2) with `flags` needs."""
    acc = flags & os.O_ACCMODE
    mask = {os.O_RDONLY: R_OK, os.O_WRONLY: W_OK}.get(acc, R_OK | W_OK)
    return mask | (W_OK if flags & os.O_TRUNC else 0)


def _register(w: FsWriter, op: Op, ino: int) -> None:
    if op.session == 0:
        raise Refused(errno.EINVAL, "opens belong to a session")
    w.set_open_count(ino, op.session, w.open_count(ino, op.session) + 1)


def open_file(w: FsWriter, op: Op, ino: int, flags: int, cred: Cred) -> InodeRec:
    rec = get(w, ino)
    if rec.nlink == 0:
        raise Refused(errno.ENOENT, "the file was unlinked")
    mask = access_mask(flags)
    if stat.S_ISDIR(rec.mode) and mask & W_OK:
        raise Refused(errno.EISDIR, "a directory cannot be opened for writing")
    allow(rec, cred, mask, "open permission")
    _register(w, op, ino)
    return rec


def create(
    w: FsWriter, op: Op, parent: int, name: bytes, mode: int, flags: int, cred: Cred
) -> InodeRec:
    """O_CREAT: make a regular file and open it, or (without O_EXCL) open the existing one."""
    check_name(name)
    d = get_dir(w, parent)
    allow(d, cred, X_OK, "search permission on the directory")
    found = w.dirent(parent, name)
    if found is not None:
        if flags & os.O_EXCL:
            raise Refused(errno.EEXIST, f"{name!r} exists")
        if stat.S_ISDIR(get(w, found[0]).mode):
            raise Refused(errno.EISDIR, f"{name!r} is a directory")
        return open_file(w, op, found[0], flags, cred)
    if op.session == 0:
        raise Refused(errno.EINVAL, "opens belong to a session")
    rec = mknod(w, op, parent, name, stat.S_IFREG | (mode & 0o7777), 0, cred)
    _register(w, op, rec.ino)
    return rec


def _closed(w: FsWriter, ino: int) -> None:
    """`ino` lost an open: delete it if it was the last open of an orphan."""
    rec = w.inode(ino)
    if rec is not None and rec.nlink == 0 and not w.is_open(ino):
        reclaim(w, rec)


def release(w: FsWriter, op: Op, ino: int) -> None:
    count = w.open_count(ino, op.session)
    if count == 0:
        raise Refused(errno.EBADF, f"inode {ino} is not open in session {op.session}")
    w.set_open_count(ino, op.session, count - 1)
    if count == 1:
        _closed(w, ino)


def session_ended(w: FsWriter, session: int) -> None:
    """Release every open of a session that expired or ended."""
    for _ in range(1 << 40):  # bounded by the number of files the session had open
        inodes = w.opened_by(session, _PAGE)
        for ino in inodes:
            w.set_open_count(ino, session, 0)
            _closed(w, ino)
        if len(inodes) < _PAGE:
            return
