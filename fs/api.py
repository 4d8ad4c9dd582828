"""The interface between the FUSE operations and the file-system client.

`fs/fuse` is written against `FsApi` only; `fs/client` implements it over
the network (metadata servers + chunk servers), and `fs/memfs.py` implements
it in memory so the FUSE layer and its real-mount tests run without a
cluster.  Every method raises `FsError(errno)` on failure and nothing else
(the client library translates transport failures to ETIMEDOUT/EIO within
its configured time bound).

Semantics the implementations share (remote mode, NFS-like):
* lookup/getattr/readdir reflect the linearizable metadata state;
* data written with `write` is acknowledged only when `flush`/`fsync`
  return: an implementation may buffer writes per open file; errors of
  buffered data (ENOSPC, EIO) are reported by the next write, flush or fsync;
* `open` registers the open file with the metadata service, so an unlinked
  file stays readable (an orphan) until `release` or until the client's
  session ends;
* readdir offsets (cookies) are stable: listing resumes correctly after
  entries before the cookie were added or removed;
* `setattr(..., fh=h)` is a change made through the open file `h`
  (ftruncate, futimens): a size change through a handle of that inode opened
  for writing needs no write permission on the file (the access mode was
  checked at open, as for any descriptor); a handle that is unknown, of
  another inode or read-only changes nothing about the checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from fs.types import Attr, Cred, DirEntry, FileHandle, InodeId, SetAttrFields, StatFs


class FsApi(Protocol):
    # --- names and attributes ----------------------------------------------------
    async def lookup(self, parent: InodeId, name: bytes, cred: Cred) -> Attr: ...

    async def getattr(self, inode: InodeId, cred: Cred) -> Attr: ...

    async def setattr(
        self, inode: InodeId, fields: SetAttrFields, cred: Cred, fh: FileHandle | None = None
    ) -> Attr: ...

    async def mknod(
        self, parent: InodeId, name: bytes, mode: int, rdev: int, cred: Cred
    ) -> Attr: ...

    async def mkdir(self, parent: InodeId, name: bytes, mode: int, cred: Cred) -> Attr: ...

    async def symlink(
        self, parent: InodeId, name: bytes, target: bytes, cred: Cred
    ) -> Attr: ...

    async def readlink(self, inode: InodeId, cred: Cred) -> bytes: ...

    async def link(
        self, inode: InodeId, new_parent: InodeId, new_name: bytes, cred: Cred
    ) -> Attr: ...

    async def unlink(self, parent: InodeId, name: bytes, cred: Cred) -> None: ...

    async def rmdir(self, parent: InodeId, name: bytes, cred: Cred) -> None: ...

    async def rename(
        self, parent: InodeId, name: bytes, new_parent: InodeId, new_name: bytes,
        flags: int, cred: Cred,
    ) -> None: ...

    async def readdir(
        self, inode: InodeId, cookie: int, limit: int, cred: Cred
    ) -> Sequence[DirEntry]: ...

    async def access(self, inode: InodeId, mask: int, cred: Cred) -> None: ...

    async def statfs(self, cred: Cred) -> StatFs: ...

    # --- extended attributes -----------------------------------------------------
    async def setxattr(
        self, inode: InodeId, name: bytes, value: bytes, flags: int, cred: Cred
    ) -> None: ...

    async def getxattr(self, inode: InodeId, name: bytes, cred: Cred) -> bytes: ...

    async def listxattr(self, inode: InodeId, cred: Cred) -> Sequence[bytes]: ...

    async def removexattr(self, inode: InodeId, name: bytes, cred: Cred) -> None: ...

    # --- open files and data -----------------------------------------------------
    async def create(
        self, parent: InodeId, name: bytes, mode: int, flags: int, cred: Cred
    ) -> tuple[FileHandle, Attr]: ...

    async def open(self, inode: InodeId, flags: int, cred: Cred) -> FileHandle: ...

    async def read(self, fh: FileHandle, offset: int, size: int) -> bytes: ...

    async def write(self, fh: FileHandle, offset: int, data: bytes) -> int: ...

    async def flush(self, fh: FileHandle) -> None: ...

    async def fsync(self, fh: FileHandle, datasync: bool) -> None: ...

    async def release(self, fh: FileHandle) -> None: ...

    async def forget(self, inodes: Sequence[tuple[InodeId, int]]) -> None: ...
