"""lossyfs operations: a pass-through over a backing folder that keeps every
un-fsynced change to file contents in memory only.

What is durable (survives killing this process):
* file contents and sizes: only what an fsync/fdatasync (or a write on an
  O_SYNC/O_DSYNC handle) flushed; the rest lives in one `Overlay` per inode;
* namespace changes (create, mkdir, unlink, rmdir, rename, link, symlink) and
  metadata (chmod, chown, utimes): at once, as they go straight to the backing
  folder.  This is the ext4 "metadata is journalled first" worst case for
  data: after a crash a created or renamed file exists, with its last fsynced
  contents (often empty).  fsyncdir is therefore a no-op.

Invariants:
* Every `_Inode` holds an O_PATH descriptor of its backing inode, so the
  backing inode (and its (st_dev, st_ino) key) cannot be freed or reused while
  we know it, and renames of it or of any parent need no bookkeeping here.
* `_by_key` and `_inodes` describe the same set; an inode leaves both only
  when the kernel has forgotten it, nothing has it open, and it has no
  un-fsynced data that a later lookup could still reach (an overlay is kept
  past `forget` while the file still has a name, and dropped once it has none).
* Flushing an overlay (`_apply`) is synchronous from taking the overlay out to
  the last backing write: no request can interleave and see or add to a
  half-written state.  Only the backing fsync runs in a thread, on a dup of
  the descriptor, after the overlay is gone; writes that arrive meanwhile go
  to a fresh overlay, which is what fsync promises (earlier writes only).
* OSError becomes FUSEError with the same errno in one place, `_errno_edge`.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from tests.lossyfs.overlay import Overlay, ReadBacking

log = logging.getLogger(__name__)

# The kernel may cache names and attributes: every change reaches us through
# the kernel, and a crash is a fresh mount, so nothing cached can be stale.
CACHE_TIMEOUT = 1.0

# Open flags that must not reach the backing file: we open it read-write once
# per inode, and truncation, appending and sync behaviour are ours to model.
_OPEN_FLAGS_KEPT = os.O_NOFOLLOW | os.O_CLOEXEC

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _errno_edge(fn: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Translate backing-folder errors to the errno the caller above sees."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper


def _proc(fd: int) -> str:
    """A path that names the inode behind `fd`, even after renames or unlink."""
    return f"/proc/self/fd/{fd}"


@dataclass(slots=True)
class _Inode:
    ino: int  # our FUSE inode number, never reused for another backing inode
    key: tuple[int, int]  # (st_dev, st_ino) of the backing inode
    path_fd: int  # O_PATH|O_NOFOLLOW descriptor that pins the backing inode
    lookups: int = 0  # the kernel's lookup count (lookup/create/mkdir/... minus forget)
    opens: int = 0  # open file handles
    data_fd: int | None = None  # read-write descriptor while `opens > 0` or flushing
    overlay: Overlay | None = None  # un-fsynced contents; None means "as the backing file"


@dataclass(slots=True)
class _Handle:
    inode: _Inode
    sync_writes: bool  # opened O_SYNC/O_DSYNC: every write is durable on return


@dataclass(slots=True)
class _DirHandle:
    inode: _Inode
    names: list[bytes]  # snapshot taken at opendir; readdir offsets index into it


class LossyFS(pyfuse3.Operations):
    """Pass-through file system whose crash (process death) loses un-fsynced data."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # writes must reach us in order, when made

    def __init__(self, backing: str) -> None:
        super().__init__()
        self._backing = backing
        root_fd = os.open(backing, os.O_PATH | os.O_DIRECTORY)
        st = os.fstat(root_fd)
        root = _Inode(pyfuse3.ROOT_INODE, (st.st_dev, st.st_ino), root_fd, lookups=1)
        self._inodes: dict[int, _Inode] = {root.ino: root}
        self._by_key: dict[tuple[int, int], _Inode] = {root.key: root}
        self._next_ino = pyfuse3.ROOT_INODE + 1
        self._handles: dict[int, _Handle] = {}
        self._dir_handles: dict[int, _DirHandle] = {}
        self._next_fh = 1

    # -- helpers (synchronous: no request interleaves with them) ------------

    def _get(self, ino: int) -> _Inode:
        inode = self._inodes.get(ino)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return inode

    def _learn(self, parent: _Inode, name: bytes) -> _Inode:
        """Resolve `name` in `parent` and count one kernel lookup of it."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent.path_fd)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        inode = self._by_key.get(key)
        if inode is None:
            inode = _Inode(self._next_ino, key, fd)
            self._next_ino += 1
            self._inodes[inode.ino] = inode
            self._by_key[key] = inode
        else:
            os.close(fd)
        inode.lookups += 1
        return inode

    def _attrs(self, inode: _Inode) -> pyfuse3.EntryAttributes:
        st = os.fstat(inode.path_fd)
        size = inode.overlay.size if inode.overlay is not None else st.st_size
        return _entry(inode.ino, st, size)

    def _data_fd(self, inode: _Inode) -> int:
        if inode.data_fd is None:
            inode.data_fd = os.open(_proc(inode.path_fd), os.O_RDWR | os.O_CLOEXEC)
        return inode.data_fd

    def _overlay(self, inode: _Inode) -> Overlay:
        if inode.overlay is None:
            inode.overlay = Overlay(os.fstat(inode.path_fd).st_size)
        return inode.overlay

    @staticmethod
    def _reader(fd: int) -> ReadBacking:
        return lambda offset, length: os.pread(fd, length, offset)

    def _apply(self, inode: _Inode) -> int | None:
        """Write the inode's overlay to its backing file; return a dup to fsync.

        Synchronous on purpose (see the module invariants).  None when there
        was nothing to write.
        """
        overlay, inode.overlay = inode.overlay, None
        if overlay is None or not overlay.dirty:
            return None
        fd = self._data_fd(inode)
        plan = overlay.flush_plan()
        os.ftruncate(fd, plan.truncate_to)
        for offset, data in plan.writes:
            os.pwrite(fd, data, offset)
        os.ftruncate(fd, plan.final_size)
        log.debug(
            "flushed inode %d: %d pages, size %d", inode.ino, len(plan.writes), plan.final_size
        )
        return os.dup(fd)

    async def _sync(self, inode: _Inode) -> None:
        fd = self._apply(inode)
        if fd is None:
            return
        try:
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)
            self._maybe_drop(inode)

    def _maybe_drop(self, inode: _Inode) -> None:
        if inode.opens == 0 and inode.data_fd is not None:
            os.close(inode.data_fd)
            inode.data_fd = None
        if inode.ino == pyfuse3.ROOT_INODE or inode.lookups > 0 or inode.opens > 0:
            return
        if inode.overlay is not None and os.fstat(inode.path_fd).st_nlink > 0:
            return  # still reachable by name: its un-fsynced data must stay visible
        del self._inodes[inode.ino]
        del self._by_key[inode.key]
        os.close(inode.path_fd)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _open_handle(self, inode: _Inode, flags: int) -> pyfuse3.FileInfo:
        self._data_fd(inode)
        inode.opens += 1
        if flags & os.O_TRUNC:
            self._overlay(inode).truncate(0)
        fh = self._new_fh()
        self._handles[fh] = _Handle(inode, sync_writes=bool(flags & os.O_DSYNC))
        # No direct_io: programs under test mmap their files (LMDB does).
        # keep_cache: only the kernel changes files, so its cache stays true.
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=True)

    def flush_all(self) -> int:
        """Make every overlay durable (a clean unmount); returns files flushed."""
        flushed = 0
        for inode in list(self._inodes.values()):
            fd = self._apply(inode)
            if fd is not None:
                os.fsync(fd)
                os.close(fd)
                flushed += 1
                self._maybe_drop(inode)
        return flushed

    def pending(self) -> dict[int, int]:
        """Inode number -> dirty bytes held in memory (for logs and tests)."""
        return {
            ino: inode.overlay.dirty_bytes
            for ino, inode in self._inodes.items()
            if inode.overlay is not None and inode.overlay.dirty
        }

    # -- names and attributes ------------------------------------------------

    @_errno_edge
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(self._learn(self._get(parent_inode), name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            inode = self._inodes.get(ino)
            if inode is None:
                continue
            inode.lookups = max(0, inode.lookups - count)
            log.debug("forget inode %d by %d -> %d lookups", ino, count, inode.lookups)
            self._maybe_drop(inode)

    @_errno_edge
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self._get(inode))

    @_errno_edge
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._get(inode)
        path = _proc(node.path_fd)
        if fields.update_size:
            if stat.S_ISDIR(os.fstat(node.path_fd).st_mode):
                raise pyfuse3.FUSEError(errno.EISDIR)
            self._overlay(node).truncate(attr.st_size)
        if fields.update_mode:
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            os.chown(path, uid, gid)
        if fields.update_atime or fields.update_mtime:
            st = os.stat(path)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(path, ns=(atime, mtime))
        return self._attrs(node)

    @_errno_edge
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(os.readlink("", dir_fd=self._get(inode).path_fd))

    @_errno_edge
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._get(parent_inode)
        os.mkdir(name, stat.S_IMODE(mode), dir_fd=parent.path_fd)
        os.chown(name, ctx.uid, ctx.gid, dir_fd=parent.path_fd, follow_symlinks=False)
        return self._attrs(self._learn(parent, name))

    @_errno_edge
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._get(parent_inode)
        os.symlink(target, name, dir_fd=parent.path_fd)
        os.chown(name, ctx.uid, ctx.gid, dir_fd=parent.path_fd, follow_symlinks=False)
        return self._attrs(self._learn(parent, name))

    @_errno_edge
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node, parent = self._get(inode), self._get(new_parent_inode)
        # linkat through the /proc magic link names the inode, not a path.
        os.link(
            _proc(node.path_fd),
            new_name,
            src_dir_fd=parent.path_fd,
            dst_dir_fd=parent.path_fd,
            follow_symlinks=True,
        )
        return self._attrs(self._learn(parent, new_name))

    @_errno_edge
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        # The inode keeps its overlay while the kernel or a handle holds it;
        # `_maybe_drop` discards it once it has no name left.
        os.unlink(name, dir_fd=self._get(parent_inode).path_fd)

    @_errno_edge
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        os.rmdir(name, dir_fd=self._get(parent_inode).path_fd)

    @_errno_edge
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old, new = self._get(parent_inode_old), self._get(parent_inode_new)
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE is not modelled
        if flags & pyfuse3.RENAME_NOREPLACE:
            # Check-then-rename is atomic here: requests do not interleave.
            try:
                os.lstat(name_new, dir_fd=new.path_fd)
            except FileNotFoundError:
                pass
            else:
                raise pyfuse3.FUSEError(errno.EEXIST)
        os.rename(name_old, name_new, src_dir_fd=old.path_fd, dst_dir_fd=new.path_fd)

    @_errno_edge
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self._backing)
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail"):
            setattr(out, field, getattr(sv, field))
        for field in ("f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, field, getattr(sv, field))
        return out

    # -- file contents ---------------------------------------------------------

    @_errno_edge
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return self._open_handle(self._get(inode), flags)

    @_errno_edge
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._get(parent_inode)
        fd = os.open(
            name,
            (flags & _OPEN_FLAGS_KEPT) | os.O_CREAT | os.O_RDWR | (flags & os.O_EXCL),
            stat.S_IMODE(mode),
            dir_fd=parent.path_fd,
        )
        os.close(fd)
        os.chown(name, ctx.uid, ctx.gid, dir_fd=parent.path_fd, follow_symlinks=False)
        inode = self._learn(parent, name)
        info = self._open_handle(inode, flags)
        return info, self._attrs(inode)

    @_errno_edge
    async def read(self, fh: int, off: int, size: int) -> bytes:
        inode = self._handles[fh].inode
        fd = self._data_fd(inode)
        if inode.overlay is None:
            return os.pread(fd, size, off)
        return inode.overlay.read(off, size, self._reader(fd))

    @_errno_edge
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        inode = handle.inode
        self._overlay(inode).write(off, buf, self._reader(self._data_fd(inode)))
        if handle.sync_writes:
            await self._sync(inode)
        return len(buf)

    async def flush(self, fh: int) -> None:
        """close() is not a durability point: nothing to do."""

    @_errno_edge
    async def release(self, fh: int) -> None:
        inode = self._handles.pop(fh).inode
        inode.opens -= 1
        self._maybe_drop(inode)

    @_errno_edge
    async def fsync(self, fh: int, datasync: bool) -> None:
        # fdatasync is treated like fsync: the size is part of what a later
        # read needs, and we keep no other metadata in memory.
        inode = self._handles[fh].inode
        log.debug("fsync inode %d (datasync=%s)", inode.ino, datasync)
        await self._sync(inode)

    # -- directories -------------------------------------------------------------

    @_errno_edge
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._get(inode)
        names = sorted(os.listdir(os.fsencode(_proc(node.path_fd))))
        fh = self._new_fh()
        self._dir_handles[fh] = _DirHandle(node, names)
        return fh

    @_errno_edge
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dir_handles[fh]
        for index in range(start_id, len(handle.names)):
            name = handle.names[index]
            try:
                st = os.lstat(name, dir_fd=handle.inode.path_fd)
            except FileNotFoundError:
                continue  # removed since opendir
            known = self._by_key.get((st.st_dev, st.st_ino))
            attrs = _entry(known.ino if known else st.st_ino, st, st.st_size)
            if not pyfuse3.readdir_reply(token, name, attrs, index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        del self._dir_handles[fh]

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """Namespace changes are durable at once (module docstring)."""


def _entry(ino: int, st: os.stat_result, size: int) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = ino
    entry.generation = 0
    entry.entry_timeout = CACHE_TIMEOUT
    entry.attr_timeout = CACHE_TIMEOUT
    entry.st_mode = st.st_mode
    entry.st_nlink = st.st_nlink
    entry.st_uid = st.st_uid
    entry.st_gid = st.st_gid
    entry.st_rdev = st.st_rdev
    entry.st_size = size
    entry.st_blksize = st.st_blksize
    entry.st_blocks = st.st_blocks
    entry.st_atime_ns = st.st_atime_ns
    entry.st_mtime_ns = st.st_mtime_ns
    entry.st_ctime_ns = st.st_ctime_ns
    return entry
