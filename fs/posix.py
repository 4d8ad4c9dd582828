"""POSIX rules as pure functions: permission bits, sticky directories, set-id
bits, ownership changes, names and extended-attribute namespaces.

The in-memory file system (fs/memfs.py) applies them, and any other
implementation of the namespace (the metadata state machine) can apply the
same functions so that both answer every call alike.  Nothing here does I/O
or keeps state; every check raises `FsError` with the errno Linux returns.

Rules (as Linux applies them on a local file system):
* root (uid 0) passes read and write checks on anything, and execute checks
  on directories and on files with at least one x bit (CAP_DAC_OVERRIDE);
* otherwise exactly one class applies: owner, else group (primary or
  supplementary), else other;
* in a sticky directory only root, the directory's owner or the entry's
  owner may remove or replace the entry;
* a new inode in a set-gid directory takes the directory's group, and a new
  subdirectory also the set-gid bit; a caller outside the group loses S_ISGID
  on chmod and on creating a non-directory;
* set-id bits are killed on write/truncate by non-root and on chown; anyone
  may clear them (the kernel does so for a writer who is not the owner);
* setting times to "now" needs the owner, root or write permission (EACCES);
  explicit times need the owner or root (EPERM); a truncate through a
  descriptor opened for writing needs no write permission.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Protocol

from fs.types import (
    NAME_MAX,
    XATTR_NAME_MAX,
    XATTR_SIZE_MAX,
    Cred,
    FsError,
    SetAttrFields,
)

R_OK, W_OK, X_OK = 4, 2, 1
XATTR_CREATE, XATTR_REPLACE = 1, 2
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
LINK_MAX = 65000  # hard links per inode (ext4's limit)
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")  # system.* (ACLs) is not supported


class Owned(Protocol):
    """Anything with a mode and an owner (an Attr, an inode record)."""

    @property
    def mode(self) -> int: ...

    @property
    def uid(self) -> int: ...

    @property
    def gid(self) -> int: ...


def may(node: Owned, cred: Cred, mask: int) -> bool:
    """Whether `cred` has all of `mask` (R_OK|W_OK|X_OK) on `node`."""
    if cred.is_root:
        return not (mask & X_OK) or stat.S_ISDIR(node.mode) or bool(node.mode & 0o111)
    if cred.uid == node.uid:
        bits = node.mode >> 6
    elif cred.in_group(node.gid):
        bits = node.mode >> 3
    else:
        bits = node.mode
    return (bits & mask & 7) == mask


def require(node: Owned, cred: Cred, mask: int, what: str = "") -> None:
    if not may(node, cred, mask):
        raise FsError(errno.EACCES, what)


def sticky_denies(directory: Owned, child: Owned, cred: Cred) -> bool:
    """True if the sticky bit of `directory` forbids removing or replacing `child`."""
    return (
        bool(directory.mode & stat.S_ISVTX)
        and not cred.is_root
        and cred.uid not in (directory.uid, child.uid)
    )


def killed_privs(mode: int) -> int:
    """`mode` without set-uid, and without set-gid when group x is set
    (set-gid without group x means mandatory locking and stays)."""
    if stat.S_ISDIR(mode):
        return mode
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


def only_kills_privs(old: int, new: int) -> bool:
    """True if `new` is `old` with at least one set-id bit cleared and nothing else.

    Anyone may make such a change: the kernel sends it, with the writer's
    credentials, when a non-owner writes to a set-id file (without
    FUSE_HANDLE_KILLPRIV), and it only ever removes privileges.
    """
    setid = stat.S_ISUID | stat.S_ISGID
    old, new = old & 0o7777, new & 0o7777
    return new != old and new & ~setid == old & ~setid and new & setid == new & old & setid


def check_name(name: bytes) -> None:
    """A single path component: 1..NAME_MAX bytes, no '/' or NUL."""
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, "name longer than NAME_MAX")
    if not name or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, "bad name")


def check_new_name(name: bytes) -> None:
    """A name to create: also not '.' or '..' (those always exist)."""
    check_name(name)
    if name in (b".", b".."):
        raise FsError(errno.EEXIST, "'.' and '..' exist")


def new_owner(directory: Owned, mode: int, cred: Cred) -> tuple[int, int]:
    """(mode, gid) of an inode `cred` creates in `directory` (set-gid inheritance)."""
    gid = cred.gid
    if directory.mode & stat.S_ISGID:
        gid = directory.gid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
    if (
        mode & stat.S_ISGID
        and not stat.S_ISDIR(mode)
        and not (cred.is_root or cred.in_group(gid))
    ):
        mode &= ~stat.S_ISGID
    return mode, gid


def chmod_bits(mode: int, gid: int, cred: Cred) -> int:
    """The permission bits chmod stores: S_ISGID is dropped for a non-member."""
    mode &= 0o7777
    if not (cred.is_root or cred.in_group(gid)):
        mode &= ~stat.S_ISGID
    return mode


def check_setattr(
    node: Owned, fields: SetAttrFields, cred: Cred, max_size: int, *,
    writable_handle: bool = False,
) -> None:
    """Raise unless `cred` may make every change in `fields` to `node`.

    `writable_handle`: the change comes through a descriptor of `node` opened
    for writing (ftruncate), so a size change needs no write permission.
    """
    owner = cred.is_root or cred.uid == node.uid
    if fields.size is not None:
        if stat.S_ISDIR(node.mode):
            raise FsError(errno.EISDIR)
        if not stat.S_ISREG(node.mode) or fields.size < 0:
            raise FsError(errno.EINVAL)
        if fields.size > max_size:
            raise FsError(errno.EFBIG)
        if not writable_handle:
            require(node, cred, W_OK, "truncate needs write permission")
    if fields.uid is not None and not cred.is_root and not cred.uid == node.uid == fields.uid:
        raise FsError(errno.EPERM, "only root changes the owner")
    if fields.gid is not None and not cred.is_root and not (
        cred.uid == node.uid and (cred.in_group(fields.gid) or fields.gid == node.gid)
    ):
        raise FsError(errno.EPERM, "chgrp: not owner or not a member of the group")
    if fields.mode is not None and not owner and not only_kills_privs(node.mode, fields.mode):
        raise FsError(errno.EPERM, "chmod: not owner")
    check_times(node, fields, cred)


def check_times(node: Owned, fields: SetAttrFields, cred: Cred) -> None:
    """utimensat's rule: explicit times need the owner or root (EPERM); "now"
    (`times_now`) also any caller with write permission (EACCES otherwise)."""
    if fields.atime_ns is None and fields.mtime_ns is None:
        return
    if cred.is_root or cred.uid == node.uid:
        return
    if not fields.times_now:
        raise FsError(errno.EPERM, "utimes: explicit times need the owner")
    require(node, cred, W_OK, "utimes: 'now' needs the owner or write permission")


def open_mask(flags: int) -> int:
    """The permission an open(2) with `flags` needs."""
    mask = {os.O_RDONLY: R_OK, os.O_WRONLY: W_OK}.get(flags & os.O_ACCMODE, R_OK | W_OK)
    return mask | W_OK if flags & os.O_TRUNC else mask


def check_rename_flags(flags: int) -> None:
    both = RENAME_NOREPLACE | RENAME_EXCHANGE
    if flags & ~both or flags == both:
        raise FsError(errno.EINVAL, "rename flags")


def xattr_namespace(name: bytes) -> bytes:
    """The namespace prefix of `name`; ENOTSUP for system.* (ACLs) and unknown ones."""
    if not name or len(name) > XATTR_NAME_MAX:
        raise FsError(errno.ERANGE, "bad xattr name length")
    for prefix in XATTR_NAMESPACES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return prefix
    raise FsError(errno.ENOTSUP, "unsupported xattr namespace")


def check_xattr(node: Owned, name: bytes, cred: Cred, write: bool) -> None:
    """Linux's xattr_permission: user.* only on files and directories (and the
    sticky-directory rule), trusted.* for root only, security.* writes by root."""
    space = xattr_namespace(name)
    absent = errno.EPERM if write else errno.ENODATA
    if space == b"user.":
        if not (stat.S_ISREG(node.mode) or stat.S_ISDIR(node.mode)):
            raise FsError(absent, "user xattrs only on files and directories")
        if write and stat.S_ISDIR(node.mode) and sticky_denies(node, node, cred):
            raise FsError(errno.EPERM, "user xattr on a sticky directory not owned")
        require(node, cred, W_OK if write else R_OK)
    elif space == b"trusted." and not cred.is_root:
        raise FsError(absent, "trusted xattrs need root")
    elif space == b"security." and write and not cred.is_root:
        raise FsError(errno.EPERM, "security xattrs need root")


def check_xattr_set(flags: int, value: bytes, present: bool) -> None:
    if flags & ~(XATTR_CREATE | XATTR_REPLACE):
        raise FsError(errno.EINVAL, "xattr flags")
    if len(value) > XATTR_SIZE_MAX:
        raise FsError(errno.E2BIG, "xattr value too large")
    if flags & XATTR_CREATE and present:
        raise FsError(errno.EEXIST, "xattr exists")
    if flags & XATTR_REPLACE and not present:
        raise FsError(errno.ENODATA, "no such xattr")


def listable_xattrs(names: list[bytes], cred: Cred) -> list[bytes]:
    """trusted.* names are listed to root only."""
    return names if cred.is_root else [n for n in names if not n.startswith(b"trusted.")]
