"""POSIX permission and naming rules, as pure functions of records and a Cred.

The state machine enforces these for every operation it is asked, whatever
the kernel already checked (FUSE's default_permissions covers path
traversal on one client, not another client's stale view).  Rules
implemented (Linux behaviour):

* rwx classes: owner if uid matches, else group if the gid is the caller's
  primary or a supplementary group, else other.  Root passes every r/w
  check, and x only when the inode is a directory or has any x bit.
* sticky directory (S_ISVTX): removing or renaming an entry needs the
  caller to own the entry or the directory, or be root.
* setgid directory: new entries take the directory's group; new
  subdirectories also get S_ISGID; a new non-directory keeps S_ISGID only
  if the caller is root or in that group.
* chmod by a non-root caller not in the file's group clears S_ISGID on
  non-directories; chown (any caller) clears S_ISUID, and S_ISGID when
  group-execute is set, on non-directories; a write or truncate by a
  non-root caller does the same to regular files.
* names: empty -> ENOENT; "/" or NUL -> EINVAL; "." or ".." -> EINVAL
  where an entry would be created or removed; > NAME_MAX bytes ->
  ENAMETOOLONG.

`Refused(errno)` is raised by the checks; operations run every check before
their first write, so a refusal never leaves a half-done change behind.
"""

from __future__ import annotations

import errno
import stat

from fs.types import NAME_MAX, Cred

R_OK, W_OK, X_OK = 4, 2, 1


class Refused(Exception):
    """An operation is refused with `errno`; nothing has been written yet."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.errno = code
        self.message = message


def permitted(mode: int, uid: int, gid: int, cred: Cred, mask: int) -> bool:
    """Whether `cred` may access an inode (mode, uid, gid) for `mask` (R_OK|W_OK|X_OK)."""
    mask &= 7
    if mask == 0:
        return True
    if cred.is_root:
        return not (mask & X_OK) or stat.S_ISDIR(mode) or bool(mode & 0o111)
    if cred.uid == uid:
        bits = (mode >> 6) & 7
    elif cred.in_group(gid):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return mask & bits == mask


def require(mode: int, uid: int, gid: int, cred: Cred, mask: int, what: str) -> None:
    if not permitted(mode, uid, gid, cred, mask):
        raise Refused(errno.EACCES, what)


def sticky_allows(dir_mode: int, dir_uid: int, victim_uid: int, cred: Cred) -> bool:
    """May `cred` remove/rename an entry owned by `victim_uid` in this directory?"""
    if not dir_mode & stat.S_ISVTX or cred.is_root:
        return True
    return cred.uid in (dir_uid, victim_uid)


def new_owner(
    parent_mode: int, parent_gid: int, cred: Cred, mode: int
) -> tuple[int, int, int]:
    """(uid, gid, mode) of a new inode created by `cred` in a directory (setgid rules)."""
    gid = cred.gid
    if parent_mode & stat.S_ISGID:
        gid = parent_gid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
        elif (
            mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP
            and not cred.is_root
            and not cred.in_group(gid)
        ):
            mode &= ~stat.S_ISGID
    return cred.uid, gid, mode


def kill_suid(mode: int) -> int:
    """The mode after a change that drops privileges (chown, unprivileged write)."""
    if stat.S_ISDIR(mode):
        return mode
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


def check_name(name: bytes, *, dots_ok: bool = False) -> None:
    """Refuse a path component that cannot name an entry (see the module rules)."""
    if not name:
        raise Refused(errno.ENOENT, "empty name")
    if b"/" in name or b"\0" in name:
        raise Refused(errno.EINVAL, "name contains '/' or NUL")
    if len(name) > NAME_MAX:
        raise Refused(errno.ENAMETOOLONG, f"name of {len(name)} bytes")
    if not dots_ok and name in (b".", b".."):
        raise Refused(errno.EINVAL, "'.' and '..' cannot be created or removed")
