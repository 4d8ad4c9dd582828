"""pyfuse3 operations over `FsApi`: the kernel's requests, translated.

Invariants:
* Handlers are thin: convert the arguments, make one FsApi call, convert the
  answer.  All of them run under `_edge`, the one place where exceptions
  become errnos: `FsError(e)` -> `FUSEError(e)` (an errno outside
  `KNOWN_ERRNOS` is a bug: logged, EIO); a call that outlives
  `op_timeout` -> ETIMEDOUT; any other exception -> traceback logged, EIO.
  Nothing else ever reaches pyfuse3 (an exception there would end the mount).
* Lookup counts are exact: `_lookups[ino]` is the number of entry replies for
  `ino` the kernel took (lookup, create, mknod, mkdir, symlink, link, and
  each readdir entry `readdir_reply` accepted) minus what it forgot.  A count
  is incremented with no await between the increment and the reply, and an
  inode leaves the table, and `FsApi.forget` hears of it, exactly when its
  count reaches zero.
* A readdir request makes at most one FsApi.readdir call, before it replies
  with any entry, so a failure can never strand counted entries.  An open
  directory holds at most one batch (`readdir_batch` entries) of what the
  kernel had no room for; it is used only to resume from the cookie it
  follows, only if no mutating request finished since it was fetched, and
  only within `attr_timeout`: listing a directory of any size takes bounded
  memory.
* The kernel's attribute cache is dropped (invalidate_inode, attributes only)
  after every open in remote mode (close-to-open: a fresh size) and after a
  write to a file last seen with set-id bits (where FUSE_HANDLE_KILLPRIV is
  negotiated the backend kills them and the kernel would go on showing the
  old mode; where it is not, as with libfuse 3.14 here, the kernel sends the
  chmod itself and this costs one extra invalidation).
* Cred = (uid, gid, pid) of the request plus the caller's supplementary
  groups (creds.GroupCache); requests without a context (read, write,
  release, readdir) use the handle's.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio

from fs import posix
from fs.api import FsApi
from fs.fuse.config import FuseConfig
from fs.fuse.creds import GroupCache
from fs.types import (
    KNOWN_ERRNOS,
    Attr,
    Cred,
    DirEntry,
    FileHandle,
    FsError,
    InodeId,
    SetAttrFields,
)

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Ops = TypeVar("_Ops", bound="Operations")


def _edge(
    fn: Callable[Concatenate[_Ops, _P], Awaitable[_R]],
) -> Callable[Concatenate[_Ops, _P], Coroutine[Any, Any, _R]]:
    """Bound a handler by the operation timeout and translate its errors (the only place)."""

    @functools.wraps(fn)
    async def handler(self: _Ops, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            with trio.fail_after(self.config.op_timeout):
                return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            if exc.errno not in KNOWN_ERRNOS:
                log.error("%s: unexpected errno %s (%s): answering EIO", fn.__name__,
                          exc.errno, exc)
                raise pyfuse3.FUSEError(errno.EIO) from None
            raise pyfuse3.FUSEError(exc.errno) from None
        except trio.TooSlowError:
            log.warning("%s: no answer within %.3g s: ETIMEDOUT", fn.__name__,
                        self.config.op_timeout)
            raise pyfuse3.FUSEError(errno.ETIMEDOUT) from None
        except Exception:
            log.exception("%s failed: answering EIO", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


def _was_now(exc: FsError, change: SetAttrFields, cred: Cred) -> bool:
    """Was a refused time change really a "now" (utimensat(NULL), UTIME_NOW)?

    Under default_permissions (always set) the kernel refuses explicit times
    from a caller who is neither root nor the owner before asking us, so a
    time change the backend refused as "explicit times need the owner"
    (EPERM) for such a caller can only have been a "now": it is asked again
    as one, and the backend applies the rule for "now" (owner, root or write
    permission).  Exact, and it costs a second call only in that case.
    """
    times = change.atime_ns is not None or change.mtime_ns is not None
    return exc.errno == errno.EPERM and times and not change.times_now and not cred.is_root


@dataclass(slots=True)
class _DirHandle:
    inode: InodeId
    cred: Cred  # the opener's: readdir requests carry no context
    held: Sequence[DirEntry] = ()  # fetched, not yet taken by the kernel
    held_after: int = -1  # the cookie the held entries follow
    held_epoch: int = -1  # Operations._epoch when they were fetched
    held_until: float = 0.0  # trio time after which their attributes are too old


class Operations(pyfuse3.Operations):
    """The FUSE request handlers of a ddfs mount (see the module invariants)."""

    supports_dot_lookup = False  # no NFS export: the kernel never looks up . or ..
    enable_writeback_cache = False  # writes reach FsApi in order, when made
    enable_acl = False

    def __init__(
        self, fs: FsApi, config: FuseConfig, groups: GroupCache | None = None
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self._fs = fs
        self._groups = groups if groups is not None else GroupCache()
        self._lookups: dict[int, int] = {pyfuse3.ROOT_INODE: 1}  # the kernel holds the root
        self._dirs: dict[int, _DirHandle] = {}
        self._next_dir = 1
        self._open_files: dict[int, int] = {}  # file handle -> inode
        # Inodes whose last attributes we sent carry set-id bits that a write
        # kills; the kernel does not refresh the mode after a write itself.
        self._setid: set[int] = set()
        self._epoch = 0  # bumped after every mutating request: invalidates held readdir batches

    # --- conversions (synchronous) ------------------------------------------------

    def _cred(self, ctx: pyfuse3.RequestContext) -> Cred:
        return self._groups.cred(ctx.uid, ctx.gid, ctx.pid)

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = attr.inode
        entry.generation = 0
        entry.entry_timeout = self.config.entry_timeout
        entry.attr_timeout = self.config.attr_timeout
        entry.st_mode = attr.mode
        entry.st_nlink = attr.nlink
        entry.st_uid = attr.uid
        entry.st_gid = attr.gid
        entry.st_rdev = attr.rdev
        entry.st_size = attr.size
        entry.st_blksize = self.config.io_block
        entry.st_blocks = attr.blocks
        entry.st_atime_ns = attr.atime_ns
        entry.st_mtime_ns = attr.mtime_ns
        entry.st_ctime_ns = attr.ctime_ns
        if stat.S_ISREG(attr.mode) and posix.killed_privs(attr.mode) != attr.mode:
            self._setid.add(attr.inode)
        else:
            self._setid.discard(attr.inode)
        return entry

    def _counted(self, attr: Attr) -> pyfuse3.EntryAttributes:
        """An entry reply: the kernel will hold one more reference to the inode."""
        entry = self._entry(attr)
        self._lookups[attr.inode] = self._lookups.get(attr.inode, 0) + 1
        return entry

    def _opened(self, fh: FileHandle, inode: int) -> pyfuse3.FileInfo:
        self._open_files[fh] = inode
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=self.config.keep_cache)

    def _mutated(self) -> None:
        self._epoch += 1

    def lookup_count(self, inode: int) -> int:
        return self._lookups.get(inode, 0)

    # --- names and attributes -----------------------------------------------------

    @_edge
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            attr = await self._fs.lookup(InodeId(parent_inode), name, self._cred(ctx))
        except FsError as exc:
            if exc.errno != errno.ENOENT or self.config.negative_timeout <= 0:
                raise
            negative = pyfuse3.EntryAttributes()  # st_ino 0: the kernel caches "absent"
            negative.entry_timeout = self.config.negative_timeout
            return negative
        return self._counted(attr)

    @_edge
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self._fs.getattr(InodeId(inode), self._cred(ctx)))

    @_edge
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        # pyfuse3 resolves UTIME_NOW to a number in `attr` and does not say so
        # (see _was_now).  `fh` is set for ftruncate/futimens on an open file.
        change = SetAttrFields(
            mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        handle, cred = None if fh is None else FileHandle(fh), self._cred(ctx)
        try:
            try:
                result = await self._fs.setattr(InodeId(inode), change, cred, handle)
            except FsError as exc:
                if not _was_now(exc, change, cred):
                    raise
                now = replace(change, times_now=True)
                result = await self._fs.setattr(InodeId(inode), now, cred, handle)
        finally:
            self._mutated()
        return self._entry(result)

    @_edge
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._fs.readlink(InodeId(inode), self._cred(ctx))

    @_edge
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        try:
            attr = await self._fs.mknod(InodeId(parent_inode), name, mode, rdev, self._cred(ctx))
        finally:
            self._mutated()
        return self._counted(attr)

    @_edge
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            attr = await self._fs.mkdir(InodeId(parent_inode), name, mode, self._cred(ctx))
        finally:
            self._mutated()
        return self._counted(attr)

    @_edge
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            attr = await self._fs.symlink(InodeId(parent_inode), name, target, self._cred(ctx))
        finally:
            self._mutated()
        return self._counted(attr)

    @_edge
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            attr = await self._fs.link(
                InodeId(inode), InodeId(new_parent_inode), new_name, self._cred(ctx)
            )
        finally:
            self._mutated()
        return self._counted(attr)

    @_edge
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        try:
            await self._fs.unlink(InodeId(parent_inode), name, self._cred(ctx))
        finally:
            self._mutated()

    @_edge
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        try:
            await self._fs.rmdir(InodeId(parent_inode), name, self._cred(ctx))
        finally:
            self._mutated()

    @_edge
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        try:
            await self._fs.rename(
                InodeId(parent_inode_old), name_old, InodeId(parent_inode_new), name_new,
                flags, self._cred(ctx),
            )
        finally:
            self._mutated()

    @_edge
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        fs = await self._fs.statfs(self._cred(ctx))
        out = pyfuse3.StatvfsData()
        out.f_bsize = fs.block_size
        out.f_frsize = fs.block_size
        out.f_blocks = fs.blocks
        out.f_bfree = fs.blocks_free
        out.f_bavail = fs.blocks_avail
        out.f_files = fs.files
        out.f_ffree = fs.files_free
        out.f_favail = fs.files_free
        out.f_namemax = fs.name_max
        return out

    @_edge
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Not called under default_permissions (the kernel checks); kept for
        # mounts without it.  A refusal arrives as FsError(EACCES).
        await self._fs.access(InodeId(inode), mode, self._cred(ctx))
        return True

    # --- extended attributes ------------------------------------------------------

    @_edge
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        # pyfuse3 implements XATTR_CREATE/XATTR_REPLACE itself (getxattr first).
        await self._fs.setxattr(InodeId(inode), name, value, 0, self._cred(ctx))

    @_edge
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._fs.getxattr(InodeId(inode), name, self._cred(ctx))

    @_edge
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return await self._fs.listxattr(InodeId(inode), self._cred(ctx))

    @_edge
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._fs.removexattr(InodeId(inode), name, self._cred(ctx))

    # --- open files ---------------------------------------------------------------

    @_edge
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        try:
            # O_TRUNC arrives here (libfuse 3 negotiates atomic_o_trunc).
            fh = await self._fs.open(InodeId(inode), flags, self._cred(ctx))
        finally:
            if flags & os.O_TRUNC:
                self._mutated()
        if self.config.revalidate_on_open:
            await self._drop_cached_attrs(inode)
        return self._opened(fh, inode)

    async def _drop_cached_attrs(self, inode: int) -> None:
        """Make the kernel ask for fresh attributes next time (close-to-open:
        the size another client left; the mode a write's set-id kill changed).

        From a worker thread (a notification can block in the kernel), shielded
        and never raising: it runs after FsApi calls whose result (an open
        handle, a done write) must reach the kernel.
        """
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, True)
            except OSError as exc:  # ENOENT: the kernel has nothing cached
                log.debug("invalidate_inode(%d): %s", inode, exc)

    @_edge
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        try:
            fh, attr = await self._fs.create(
                InodeId(parent_inode), name, mode, flags, self._cred(ctx)
            )
        finally:
            self._mutated()
        return self._opened(fh, attr.inode), self._counted(attr)

    @_edge
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._fs.read(FileHandle(fh), off, size)

    @_edge
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            written = await self._fs.write(FileHandle(fh), off, buf)
        finally:
            self._mutated()
        inode = self._open_files.get(fh)
        if inode in self._setid:  # the write may have killed set-id bits
            self._setid.discard(inode)
            await self._drop_cached_attrs(inode)
        return written

    @_edge
    async def flush(self, fh: int) -> None:
        await self._fs.flush(FileHandle(fh))

    @_edge
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._fs.fsync(FileHandle(fh), datasync)

    @_edge
    async def release(self, fh: int) -> None:
        self._open_files.pop(fh, None)
        await self._fs.release(FileHandle(fh))

    # --- directories --------------------------------------------------------------

    @_edge
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        # The kernel checked read permission (default_permissions); FsApi
        # checks again on every readdir with the opener's cred.
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = _DirHandle(InodeId(inode), self._cred(ctx))
        return fh

    @_edge
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs.get(fh)
        if handle is None:
            raise FsError(errno.EBADF, f"no open directory {fh}")
        batch = self._take_held(handle, start_id)
        if not batch:
            batch = await self._fetch(handle, start_id)
        after = start_id
        for index, entry in enumerate(batch):
            if not pyfuse3.readdir_reply(token, entry.name, self._entry(entry.attr), entry.cookie):
                handle.held, handle.held_after = batch[index:], after
                return
            self._lookups[entry.attr.inode] = self._lookups.get(entry.attr.inode, 0) + 1
            after = entry.cookie

    def _take_held(self, handle: _DirHandle, start_id: int) -> Sequence[DirEntry]:
        held, handle.held = handle.held, ()
        fresh = handle.held_epoch == self._epoch and trio.current_time() < handle.held_until
        return held if held and fresh and handle.held_after == start_id else ()

    async def _fetch(self, handle: _DirHandle, cookie: int) -> Sequence[DirEntry]:
        epoch, now = self._epoch, trio.current_time()
        try:
            batch = await self._fs.readdir(
                handle.inode, cookie, self.config.readdir_batch, handle.cred
            )
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return ()  # removed while open: an empty listing, as on a local disk
            raise
        handle.held_epoch, handle.held_until = epoch, now + self.config.attr_timeout
        return batch

    @_edge
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_edge
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """Namespace changes are durable when their request is answered."""

    # --- the kernel forgets ----------------------------------------------------------

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Must not raise (no request to answer): failures are logged."""
        gone: list[tuple[InodeId, int]] = []
        for inode, count in inode_list:
            left = self._lookups.get(inode, 0) - count
            if left > 0:
                self._lookups[inode] = left
                continue
            if left < 0:
                log.error("forget(%d, %d): only %d lookups known", inode, count, left + count)
            self._lookups.pop(inode, None)
            self._setid.discard(inode)
            gone.append((InodeId(inode), count))
        if gone:
            await self._tell_forgotten(gone)

    async def forget_all(self) -> None:
        """After unmount: the kernel forgets everything (it may not have said so)."""
        gone = [(InodeId(i), n) for i, n in self._lookups.items() if i != pyfuse3.ROOT_INODE]
        self._lookups = {pyfuse3.ROOT_INODE: 1}
        if gone:
            await self._tell_forgotten(gone)

    async def _tell_forgotten(self, gone: list[tuple[InodeId, int]]) -> None:
        try:
            with trio.fail_after(self.config.op_timeout):
                await self._fs.forget(gone)
        except Exception:
            log.exception("FsApi.forget of %d inodes failed", len(gone))
