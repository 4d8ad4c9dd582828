"""rename(2)/renameat2(2) in one atomic step.

POSIX rules implemented (each refusal happens before any write):

* write+search permission on both parents; the sticky rule on the source
  and on a replaced target; write permission on a directory that changes
  parent (its ".." changes);
* a directory may replace only an empty directory (ENOTDIR, ENOTEMPTY); a
  non-directory may not replace a directory (EISDIR);
* moving a directory into its own subtree is EINVAL (walks the parents of
  the new parent up to the root);
* renaming onto another name of the same inode does nothing and succeeds;
* RENAME_NOREPLACE: EEXIST if the target exists; RENAME_EXCHANGE: both
  must exist (ENOENT), they swap atomically; both flags, or unknown bits:
  EINVAL.

A rename within one directory keeps the entry's readdir cookie (a listing
in progress neither repeats nor misses it); a move to another directory
gives it the next cookie there.  The moved inode's ctime and both parents'
mtime/ctime are set to the entry's time.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from fs.meta.context import Op
from fs.meta.namespace import (
    allow,
    drop_name,
    get,
    get_dir,
    is_within,
    reclaim,
    touched,
)
from fs.meta.perms import W_OK, X_OK, Refused, check_name, sticky_allows
from fs.meta.state import FsWriter, InodeRec
from fs.types import Cred, InodeId

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def _check_move(w: FsWriter, op: Op, rec: InodeRec, src: int, dst: int, cred: Cred) -> None:
    """`rec` leaves directory `src` for directory `dst`."""
    if not stat.S_ISDIR(rec.mode) or src == dst:
        return
    allow(rec, cred, W_OK, "write permission on a directory that changes parent")
    if is_within(w, rec.ino, dst, op.config.max_depth):
        raise Refused(errno.EINVAL, "cannot move a directory into its own subtree")


def _check_replace(w: FsWriter, src: InodeRec, tgt: InodeRec) -> None:
    if stat.S_ISDIR(src.mode):
        if not stat.S_ISDIR(tgt.mode):
            raise Refused(errno.ENOTDIR, "a directory cannot replace a non-directory")
        if w.has_entries(tgt.ino):
            raise Refused(errno.ENOTEMPTY, "the target directory is not empty")
    elif stat.S_ISDIR(tgt.mode):
        raise Refused(errno.EISDIR, "a non-directory cannot replace a directory")


def rename(
    w: FsWriter, op: Op, parent: int, name: bytes, new_parent: int, new_name: bytes,
    flags: int, cred: Cred,
) -> None:
    if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
        RENAME_NOREPLACE | RENAME_EXCHANGE
    ):
        raise Refused(errno.EINVAL, f"rename flags {flags:#x}")
    check_name(name)
    check_name(new_name)
    dirs = {parent: get_dir(w, parent), new_parent: get_dir(w, new_parent)}
    for d in dirs.values():
        allow(d, cred, W_OK | X_OK, "write and search permission on the directory")
    found = w.dirent(parent, name)
    if found is None:
        raise Refused(errno.ENOENT, f"no entry {name!r}")
    src = get(w, found[0])
    t_found = w.dirent(new_parent, new_name)
    tgt = get(w, t_found[0]) if t_found is not None else None
    if not sticky_allows(dirs[parent].mode, dirs[parent].uid, src.uid, cred) or (
        tgt is not None
        and not sticky_allows(dirs[new_parent].mode, dirs[new_parent].uid, tgt.uid, cred)
    ):
        raise Refused(errno.EPERM, "sticky directory: not the owner")
    if flags & RENAME_EXCHANGE:
        if tgt is None or t_found is None:
            raise Refused(errno.ENOENT, f"no entry {new_name!r} to exchange with")
        _check_move(w, op, src, parent, new_parent, cred)
        _check_move(w, op, tgt, new_parent, parent, cred)
        _exchange(w, op, dirs, (parent, name, src, found[1]), (new_parent, new_name, tgt,
                                                               t_found[1]))
        return
    if tgt is not None:
        if flags & RENAME_NOREPLACE:
            raise Refused(errno.EEXIST, f"{new_name!r} exists")
        if tgt.ino == src.ino:
            return  # two names of one file: POSIX says do nothing
        _check_replace(w, src, tgt)
    _check_move(w, op, src, parent, new_parent, cred)
    _move(w, op, dirs, (parent, name, src, found[1]), (new_parent, new_name, tgt))


def _move(
    w: FsWriter, op: Op, dirs: dict[int, InodeRec],
    source: tuple[int, bytes, InodeRec, int], target: tuple[int, bytes, InodeRec | None],
) -> None:
    parent, name, src, cookie = source
    new_parent, new_name, tgt = target
    if tgt is not None:
        w.remove_entry(new_parent, new_name)
        if stat.S_ISDIR(tgt.mode):
            dirs[new_parent] = replace(dirs[new_parent], nlink=dirs[new_parent].nlink - 1)
            reclaim(w, tgt)
        else:
            drop_name(w, op, tgt)
    w.remove_entry(parent, name)
    if parent == new_parent:
        w.put_entry(parent, new_name, src.ino, cookie)
    else:
        dirs[new_parent] = w.add_entry(dirs[new_parent], new_name, src.ino)
    src = replace(src, ctime_ns=op.ns)
    if stat.S_ISDIR(src.mode) and parent != new_parent:
        src = replace(src, parent=InodeId(new_parent))
        dirs[parent] = replace(dirs[parent], nlink=dirs[parent].nlink - 1)
        dirs[new_parent] = replace(dirs[new_parent], nlink=dirs[new_parent].nlink + 1)
    w.put_inode(src)
    for d in dirs.values():
        w.put_inode(touched(d, op))


def _exchange(
    w: FsWriter, op: Op, dirs: dict[int, InodeRec],
    one: tuple[int, bytes, InodeRec, int], two: tuple[int, bytes, InodeRec, int],
) -> None:
    (p1, n1, r1, c1), (p2, n2, r2, c2) = one, two
    w.put_entry(p1, n1, r2.ino, c1)
    w.put_entry(p2, n2, r1.ino, c2)
    moved: dict[int, InodeRec] = {}
    for orig, old, new in ((r1, p1, p2), (r2, p2, p1)):
        rec = replace(moved.get(orig.ino, orig), ctime_ns=op.ns)
        if stat.S_ISDIR(rec.mode) and old != new:
            rec = replace(rec, parent=InodeId(new))
            dirs[old] = replace(dirs[old], nlink=dirs[old].nlink - 1)
            dirs[new] = replace(dirs[new], nlink=dirs[new].nlink + 1)
        moved[rec.ino] = rec
    for rec in moved.values():
        w.put_inode(rec)
    for d in dirs.values():
        w.put_inode(touched(d, op))
