"""Helpers of the POSIX conformance tests: errno names, other users, renameat2.

Every helper works the same on any folder (a ddfs cluster mount, a memfs
mount, a local ext4 folder), which is the point: a behaviour is tested once
and checked on all three (the local folder is the reference).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path

from tests.fuse.cluster_support import run_code_as
from tests.fuse.ddfs_mount import run_as

__all__ = ["ALICE", "BOB", "STAFF", "as_user", "err", "rename2", "run_as", "run_code_as"]

ALICE, BOB, STAFF = 1000, 1001, 2001  # uids 1000/1001 (own groups), group 2001
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def err(call: Callable[..., object], *args: object, **kwargs: object) -> str:
    """"ok", or the errno name `call` failed with."""
    try:
        call(*args, **kwargs)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def as_user(uid: int, *ops: list[object], groups: tuple[int, ...] = ()) -> list[object]:
    """`ops` (os functions and touch/write/read/...) run by `uid` (its own group)."""
    return run_as(uid, uid, list(groups), list(ops))


def rename2(old: Path, new: Path, flags: int) -> None:
    """renameat2(2), which the os module does not offer."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
