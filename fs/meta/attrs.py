"""Attributes: setattr (chmod, chown, truncate, utimens), xattrs, access, statfs.

Rules (Linux behaviour; each refusal before any write):

* chmod: owner or root, else EPERM - except a change that only clears
  set-id bits, which anyone may make (the kernel sends it, with the
  writer's credentials, when a non-owner writes to a set-id file; it only
  ever removes privileges); S_ISGID is cleared when a non-root caller is
  not in the file's (new) group.
* chown: only root changes the owner (the owner may "change" it to itself);
  the owner may change the group to one it belongs to; else EPERM.  A chown
  clears S_ISUID, and S_ISGID if group-execute is set, on non-directories
  (unless the same call sets the mode explicitly).
* truncate: EISDIR for a directory, EINVAL for other non-regular files,
  EACCES without write permission, EFBIG past MAX_FILE_SIZE; sets mtime and
  ctime, clears suid/sgid for a non-root caller, releases the chunks past
  the new end.
* times: explicit values need the owner or root (EPERM); "now" values
  (`times_now`) need the owner, root or write permission (EACCES).
* every successful setattr sets ctime.
* xattrs by namespace: ``user.`` on regular files and directories only
  (else EPERM to write, ENODATA to read), with r/w permission, and only
  the owner in a sticky directory; ``trusted.`` for root only (others get
  EPERM writing, ENODATA reading, and do not see the names);
  ``security.`` readable by all, writable by root; ``system.`` and unknown
  prefixes: ENOTSUP.  Names: 1..XATTR_NAME_MAX bytes else ERANGE; values:
  at most XATTR_SIZE_MAX bytes else E2BIG.  XATTR_CREATE: EEXIST if
  present; XATTR_REPLACE: ENODATA if absent; both: EINVAL.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from fs.meta.chunks import truncate_chunks
from fs.meta.context import Op
from fs.meta.namespace import allow, get
from fs.meta.perms import R_OK, W_OK, Refused, kill_suid, permitted
from fs.meta.state import FsReader, FsWriter, InodeRec
from fs.posix import only_kills_privs
from fs.types import (
    MAX_FILE_SIZE,
    NAME_MAX,
    XATTR_NAME_MAX,
    XATTR_SIZE_MAX,
    Cred,
    SetAttrFields,
    StatFs,
)

XATTR_CREATE, XATTR_REPLACE = 1, 2
_XATTR_LIST_MAX = 4096  # names returned by one listxattr
STATFS_BLOCK = 4096


def _check_chown(rec: InodeRec, f: SetAttrFields, cred: Cred) -> None:
    if cred.is_root:
        return
    if f.uid is not None and (f.uid != rec.uid or cred.uid != rec.uid):
        raise Refused(errno.EPERM, "only root changes a file's owner")
    if f.gid is not None and (
        cred.uid != rec.uid or not (cred.in_group(f.gid) or f.gid == rec.gid)
    ):
        raise Refused(errno.EPERM, "chgrp needs the owner and a group it belongs to")


def _check_setattr(rec: InodeRec, f: SetAttrFields, cred: Cred, times_now: bool) -> None:
    owner = cred.is_root or cred.uid == rec.uid
    if f.mode is not None and not owner and not only_kills_privs(rec.mode, f.mode):
        raise Refused(errno.EPERM, "only the owner changes the mode")
    _check_chown(rec, f, cred)
    if f.size is not None:
        if stat.S_ISDIR(rec.mode):
            raise Refused(errno.EISDIR, "truncate of a directory")
        if not stat.S_ISREG(rec.mode):
            raise Refused(errno.EINVAL, "truncate of a non-regular file")
        allow(rec, cred, W_OK, "write permission to truncate")
        if f.size > MAX_FILE_SIZE:
            raise Refused(errno.EFBIG, f"size {f.size} > {MAX_FILE_SIZE}")
    if f.atime_ns is not None or f.mtime_ns is not None:
        if times_now:
            if not owner and not permitted(rec.mode, rec.uid, rec.gid, cred, W_OK):
                raise Refused(errno.EACCES, "setting times to now needs write permission")
        elif not owner:
            raise Refused(errno.EPERM, "only the owner sets explicit times")


def setattr(
    w: FsWriter, op: Op, ino: int, f: SetAttrFields, cred: Cred, times_now: bool
) -> InodeRec:
    rec = get(w, ino)
    _check_setattr(rec, f, cred, times_now)
    uid = rec.uid if f.uid is None else f.uid
    gid = rec.gid if f.gid is None else f.gid
    mode = rec.mode
    if f.uid is not None or f.gid is not None:
        mode = kill_suid(mode)
    if f.mode is not None:
        mode = stat.S_IFMT(rec.mode) | (f.mode & 0o7777)
        if not cred.is_root and not cred.in_group(gid):
            mode &= ~stat.S_ISGID
    rec = replace(rec, uid=uid, gid=gid, mode=mode, ctime_ns=op.ns)
    if f.size is not None:
        rec = truncate_chunks(w, rec, f.size)
        mode = rec.mode if cred.is_root else kill_suid(rec.mode)
        rec = replace(rec, mode=mode, mtime_ns=op.ns)
    if f.atime_ns is not None:
        rec = replace(rec, atime_ns=op.ns if times_now else f.atime_ns)
    if f.mtime_ns is not None:
        rec = replace(rec, mtime_ns=op.ns if times_now else f.mtime_ns)
    w.put_inode(rec)
    return rec


def access(r: FsReader, ino: int, mask: int, cred: Cred) -> None:
    if mask & ~7:
        raise Refused(errno.EINVAL, f"access mask {mask:#o}")
    allow(get(r, ino), cred, mask, "access")


# --- extended attributes ----------------------------------------------------------------------


def _xattr_allowed(rec: InodeRec, name: bytes, cred: Cred, write: bool) -> None:
    if not name or len(name) > XATTR_NAME_MAX:
        raise Refused(errno.ERANGE, f"xattr name of {len(name)} bytes")
    if name.startswith(b"user."):
        if not (stat.S_ISREG(rec.mode) or stat.S_ISDIR(rec.mode)):
            raise Refused(errno.EPERM if write else errno.ENODATA, "user xattrs on this type")
        if (write and stat.S_ISDIR(rec.mode) and rec.mode & stat.S_ISVTX
                and not (cred.is_root or cred.uid == rec.uid)):
            raise Refused(errno.EPERM, "user xattrs of a sticky directory: owner only")
        allow(rec, cred, W_OK if write else R_OK, "xattr permission")
    elif name.startswith(b"trusted."):
        if not cred.is_root:
            raise Refused(errno.EPERM if write else errno.ENODATA, "trusted xattrs: root only")
    elif name.startswith(b"security."):
        if write and not cred.is_root:
            raise Refused(errno.EPERM, "security xattrs: root only")
    else:
        raise Refused(errno.ENOTSUP, f"xattr namespace of {name!r} not supported")


def setxattr(
    w: FsWriter, op: Op, ino: int, name: bytes, value: bytes, flags: int, cred: Cred
) -> None:
    if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
        raise Refused(errno.EINVAL, f"xattr flags {flags:#x}")
    rec = get(w, ino)
    _xattr_allowed(rec, name, cred, write=True)
    if len(value) > XATTR_SIZE_MAX:
        raise Refused(errno.E2BIG, f"xattr value of {len(value)} bytes")
    present = w.xattr(ino, name) is not None
    if flags & XATTR_CREATE and present:
        raise Refused(errno.EEXIST, f"xattr {name!r} exists")
    if flags & XATTR_REPLACE and not present:
        raise Refused(errno.ENODATA, f"no xattr {name!r}")
    w.set_xattr(ino, name, value)
    w.put_inode(replace(rec, ctime_ns=op.ns))


def getxattr(r: FsReader, ino: int, name: bytes, cred: Cred) -> bytes:
    _xattr_allowed(get(r, ino), name, cred, write=False)
    value = r.xattr(ino, name)
    if value is None:
        raise Refused(errno.ENODATA, f"no xattr {name!r}")
    return value


def listxattr(r: FsReader, ino: int, cred: Cred) -> list[bytes]:
    get(r, ino)
    names = r.xattr_names(ino, b"", _XATTR_LIST_MAX + 1)
    if len(names) > _XATTR_LIST_MAX:
        raise Refused(errno.E2BIG, "too many xattrs to list")
    return [n for n in names if cred.is_root or not n.startswith(b"trusted.")]


def removexattr(w: FsWriter, op: Op, ino: int, name: bytes, cred: Cred) -> None:
    rec = get(w, ino)
    _xattr_allowed(rec, name, cred, write=True)
    if not w.delete_xattr(ino, name):
        raise Refused(errno.ENODATA, f"no xattr {name!r}")
    w.put_inode(replace(rec, ctime_ns=op.ns))


# --- statfs -----------------------------------------------------------------------------------


def statfs(r: FsReader, replicas: int) -> StatFs:
    """Capacity of the live chunk servers divided by the replication actually
    possible with them; file count from the inode counter."""
    live = [s for s in r.servers() if s.alive]
    factor = max(1, min(replicas, len(live)))
    total = sum(s.capacity for s in live) // factor // STATFS_BLOCK
    free = sum(s.free for s in live) // factor // STATFS_BLOCK
    files = r.counter(b"inodes")
    return StatFs(STATFS_BLOCK, total, free, free, files, max(0, (1 << 32) - files), NAME_MAX)

