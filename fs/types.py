"""The file system's shared vocabulary: ids, attributes, credentials, limits
and the one errno table.

Every layer speaks these types: the metadata state machine (fs/meta), the
chunk servers (fs/chunk), the client library (fs/client) and the FUSE
operations (fs/fuse).  Nothing here does I/O.

Errors: every layer raises `FsError(errno, message)`; the FUSE layer turns it
into `pyfuse3.FUSEError(errno)` in exactly one place.  Transport and
availability failures of the client library become ETIMEDOUT / EIO there,
never an exception of another class reaching the kernel.
"""

from __future__ import annotations

import errno as _errno
import stat
from dataclasses import dataclass
from typing import NewType

InodeId = NewType("InodeId", int)  # 1 is the root directory; ids are never reused
ChunkHandle = NewType("ChunkHandle", int)  # cluster-unique, never reused
ChunkVersion = NewType("ChunkVersion", int)  # bumped on every new primary lease / replica loss
ServerId = NewType("ServerId", int)  # a chunk server's id (stable across restarts)
FileHandle = NewType("FileHandle", int)  # a client-local open-file number

ROOT_INODE = InodeId(1)

CHUNK_SIZE = 64 * 1024 * 1024  # bytes per chunk (GFS)
BLOCK_SIZE = 64 * 1024  # bytes per checksum block inside a chunk
NAME_MAX = 255  # bytes in one path component (ENAMETOOLONG beyond)
PATH_MAX = 4096  # bytes in a symlink target (ENAMETOOLONG beyond)
MAX_FILE_SIZE = 1 << 44  # 16 TiB (EFBIG beyond)
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 64 * 1024
REPLICAS = 3  # default replication factor


class FsError(Exception):
    """A file-system error with its errno; the FUSE edge turns it into FUSEError."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(f"{_errno.errorcode.get(errno, errno)}: {message}" if message else
                         _errno.errorcode.get(errno, str(errno)))
        self.errno = errno
        self.message = message


@dataclass(frozen=True, slots=True)
class Cred:
    """Who is asking: FUSE gives uid, gid and pid; the mount reads the
    supplementary groups from /proc/<pid>/status (FUSE passes none)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    pid: int = 0

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


ROOT_CRED = Cred(0, 0)


@dataclass(frozen=True, slots=True)
class Attr:
    """POSIX attributes of an inode, as the metadata state machine keeps them.

    `mode` includes the file-type bits (S_IFREG, S_IFDIR, ...).  Times are
    nanoseconds since the epoch.  `generation` is 0 (ids are never reused).
    """

    inode: InodeId
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    blocks: int = 0  # 512-byte units allocated (size rounded up to chunks' written extent)

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)


@dataclass(frozen=True, slots=True)
class SetAttrFields:
    """Which attributes a setattr changes (None: unchanged).

    Times are numbers (the caller resolves UTIME_NOW too).  `times_now` says
    the atime/mtime given mean "now" (utimensat(NULL) or UTIME_NOW): POSIX
    lets the owner, root or anyone with write permission do that (else
    EACCES), while explicit times need the owner or root (else EPERM); the
    metadata service then stamps its own log time, so every replica agrees.
    """

    mode: int | None = None  # permission bits only (07777); the type never changes
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    times_now: bool = False  # the times given are "now" (see above)


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry from readdir; `cookie` is the stable offset of the NEXT entry."""

    name: bytes
    attr: Attr
    cookie: int


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    blocks_avail: int
    files: int
    files_free: int
    name_max: int = NAME_MAX


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where chunk number `index` of a file lives; only replicas at `version` may be read."""

    index: int  # chunk number within the file (offset // CHUNK_SIZE)
    handle: ChunkHandle
    version: ChunkVersion
    replicas: tuple[tuple[ServerId, str], ...]  # (server id, "host:port"), placement order


# The errno values the file system uses on purpose; anything else reaching the
# FUSE edge is a bug and becomes EIO there (with a logged traceback).
KNOWN_ERRNOS = frozenset({
    _errno.EPERM, _errno.ENOENT, _errno.EIO, _errno.EBADF, _errno.EACCES, _errno.EEXIST,
    _errno.EXDEV, _errno.ENOTDIR, _errno.EISDIR, _errno.EINVAL, _errno.EFBIG, _errno.ENOSPC,
    _errno.EROFS, _errno.EMLINK, _errno.ERANGE, _errno.ENAMETOOLONG, _errno.ENOTEMPTY,
    _errno.ELOOP, _errno.ENODATA, _errno.ETIMEDOUT, _errno.ENOTSUP, _errno.E2BIG,
    _errno.EAGAIN, _errno.ENOSYS, _errno.EBUSY,
})
