"""`NetworkFs`: the `FsApi` over the metadata servers and the chunk servers.

    async with connect(FsClientConfig(meta_endpoints=(...,)), secret) as fs:
        fh, attr = await fs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR, cred)
        await fs.write(fh, 0, b"hello")
        await fs.release(fh)

Metadata calls go through `MetaClient` in one session (registered on entry,
kept alive by a background task at a quarter of its TTL, ended on exit so
the servers release what it held open).  Data goes through `ChunkIO`
(fs/client/chunkio.py) and, for writes, `WriteBack` (write-behind per file).

Invariants:
* every FsApi method runs inside `_edge`: it finishes within
  `config.op_timeout` and raises `FsError` only (translated once, in
  fs/client/errors.py);
* every `Handle` corresponds to exactly one `Open` registered with the
  metadata service in session `generation`; `release` always forgets the
  handle locally, and unregisters it while that session is current;
* a `FileState` exists while its inode has handles or unflushed data here;
* data written through a handle reaches the chunk servers before `flush`,
  `fsync` or `release` of any handle of that inode returns successfully, and
  before this client reads that inode (read-your-writes);
* atime is never written (like a `noatime` mount and memfs): reads cost no
  metadata write.

Close-to-open consistency: `open` revalidates the attributes (the `Open`
reply) and forgets the inode's cached chunk locations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import secrets
import socket
import stat
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio

from coord.rpc import ClientConfig, RetryPolicy, RpcClient, TcpConnector
from fs.api import FsApi
from fs.chunk import protocol as cp
from fs.client.chunkio import ChunkIO
from fs.client.config import FsClientConfig
from fs.client.errors import TRANSLATED, translate
from fs.client.files import FileState, Handle
from fs.client.writeback import WriteBack
from fs.meta.client import MetaClient, SessionLost
from fs.meta.commands import MAX_READDIR
from fs.types import (
    CHUNK_SIZE,
    MAX_FILE_SIZE,
    Attr,
    Cred,
    DirEntry,
    FileHandle,
    FsError,
    InodeId,
    SetAttrFields,
    StatFs,
)

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


def _edge(
    fn: Callable[Concatenate[NetworkFs, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[NetworkFs, P], Coroutine[Any, Any, T]]:
    """Bound the call by the operation timeout and translate its failures once."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: NetworkFs, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            with trio.fail_after(self.config.op_timeout):
                return await fn(self, *args, **kwargs)
        except TRANSLATED as exc:
            if isinstance(exc, SessionLost):
                self._lost.set()
            raise translate(exc, name) from None

    return wrapper


class NetworkFs:
    """`FsApi` over a ddfs cluster (see the module docstring)."""

    def __init__(
        self, rpc: RpcClient, config: FsClientConfig, *, meta: MetaClient | None = None
    ) -> None:
        self.config = config
        self.meta = meta if meta is not None else MetaClient(
            rpc, config.meta_endpoints, timeout=config.op_timeout,
            attempt_timeout=config.meta_attempt_timeout,
        )
        self.io = ChunkIO(rpc, self.meta, config)
        self._handles: dict[FileHandle, Handle] = {}
        self._files: dict[InodeId, FileState] = {}
        self._next_fh = 1
        self.generation = 0  # metadata sessions registered so far (handles carry theirs)
        self._lost = trio.Event()  # set when a call found the session expired
        self._stack = AsyncExitStack()
        self._nursery: trio.Nursery | None = None
        self._wb: WriteBack | None = None

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> NetworkFs:
        try:
            with trio.fail_after(self.config.op_timeout):
                await self.meta.open()
        except TRANSLATED as exc:
            raise translate(exc, "registering a metadata session") from None
        self.generation = 1
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._nursery = nursery
        self._wb = WriteBack(self.io, self.meta, self.config, nursery, self._maybe_forget)
        nursery.start_soon(self._keep_alive, name="fs-client-keepalive")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            with trio.CancelScope(shield=True):
                await self._shutdown()
        finally:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            await self._stack.__aexit__(None, None, None)

    async def _shutdown(self) -> None:
        """Flush what is buffered, then end the session (the servers release its
        opens); each step bounded by the operation timeout."""
        with trio.move_on_after(self.config.op_timeout):
            for state in list(self._files.values()):
                if state.dirty and self._wb is not None:
                    try:
                        await self._wb.flush(state)
                    except FsError as exc:
                        log.warning("inode %d: buffered data lost at shutdown: %s",
                                    state.inode, exc)
        with trio.move_on_after(self.config.op_timeout):
            await self.meta.close()

    async def _keep_alive(self) -> None:
        """Refresh the session well within its TTL; register a new one if it was lost."""
        interval = self.config.keepalive_interval or max(0.2, self.meta.session_ttl_ms / 4000)
        while True:  # until the nursery is cancelled
            with trio.move_on_after(interval):
                await self._lost.wait()
            try:
                with trio.fail_after(self.config.op_timeout):
                    if self._lost.is_set():
                        await self._reregister()
                    else:
                        await self.meta.keep_alive()
            except SessionLost:
                self._lost.set()
            except TRANSLATED as exc:
                log.warning("keeping the metadata session alive failed: %s", translate(exc))
                await trio.sleep(min(interval, 1.0))

    async def _reregister(self) -> None:
        await self.meta.open()
        self.generation += 1
        self._lost = trio.Event()
        log.warning("the metadata session expired: registered a new one; files opened "
                    "before answer EIO to writes")

    @property
    def writeback(self) -> WriteBack:
        if self._wb is None:
            raise FsError(errno.EIO, "the client is not running (use `async with`)")
        return self._wb

    # ------------------------------------------------------------------ helpers
    def _seen(self, attr: Attr) -> Attr:
        state = self._files.get(attr.inode)
        return attr if state is None else state.overlay(attr)

    def _handle(self, fh: FileHandle, *, write: bool | None) -> tuple[Handle, FileState]:
        """The open file `fh` (EBADF for a wrong access mode, EISDIR for a directory)."""
        handle = self._handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF, f"no open file {fh}")
        access = handle.flags & os.O_ACCMODE
        if (write is True and access == os.O_RDONLY) or (write is False and
                                                           access == os.O_WRONLY):
            raise FsError(errno.EBADF, "wrong access mode")
        if write is not None and handle.kind == stat.S_IFDIR:
            raise FsError(errno.EISDIR)
        return handle, self._files[handle.inode]

    def _register(self, attr: Attr, flags: int, cred: Cred) -> FileHandle:
        fh = FileHandle(self._next_fh)
        self._next_fh += 1
        self._handles[fh] = Handle(attr.inode, flags, cred, stat.S_IFMT(attr.mode),
                                   self.generation)
        state = self._files.get(attr.inode)
        if state is None:
            state = self._files[attr.inode] = FileState(attr.inode, attr)
        state.opens += 1
        state.note(attr)
        self.io.locations.drop_inode(attr.inode)  # close-to-open
        return fh

    def _registered(self, inode: InodeId) -> bool:
        """Is `inode` open in the current session (so chunk leases may be taken)?"""
        return any(h.inode == inode and h.generation == self.generation
                   for h in self._handles.values())

    def _maybe_forget(self, state: FileState) -> None:
        if state.opens <= 0 and not state.dirty and self._files.get(state.inode) is state:
            del self._files[state.inode]

    async def _release_quietly(self, inode: InodeId) -> None:
        """Undo an Open whose FsApi call fails after it (bounded, never raises)."""
        bound = self.config.meta_attempt_timeout
        with trio.CancelScope(shield=True), trio.move_on_after(bound), \
                contextlib.suppress(FsError):
            await self.meta.release(inode)

    def _writable(self, inode: InodeId, fh: FileHandle | None) -> bool:
        """Is `fh` a handle of `inode` opened for writing in the current session?
        (The metadata service trusts this check: its SetSize only needs the
        session to hold the file open.)"""
        handle = None if fh is None else self._handles.get(fh)
        return (handle is not None and handle.inode == inode
                and handle.generation == self.generation and bool(handle.flags & os.O_ACCMODE))

    async def _setattr_size(
        self, inode: InodeId, fields: SetAttrFields, cred: Cred, *, through: bool = False
    ) -> Attr:
        """setattr with a size (truncate): flush this client's writes, change the
        metadata (one entry, all fields), then zero the last chunk's tail.

        `through` a writable handle (ftruncate), the size is set by `SetSize`,
        which needs no write permission (and stamps mtime/ctime, so "now" times
        sent with the truncate are that stamp); other fields follow as a SetAttr."""
        assert fields.size is not None
        state = self._files.get(inode)
        if state is not None:
            await self.writeback.flush(state)
        if through:
            attr = await self.meta.set_size(inode, fields.size, True, cred)
            rest = dataclasses.replace(fields, size=None)
            if rest.times_now:
                rest = dataclasses.replace(rest, atime_ns=None, mtime_ns=None, times_now=False)
            if rest != SetAttrFields():
                attr = await self.meta.setattr(inode, rest, cred)
        else:
            attr = await self.meta.setattr(inode, fields, cred)
        self.io.forget_from(inode, -(-fields.size // CHUNK_SIZE))
        if state is not None:
            state.truncated(attr)
        if fields.size % CHUNK_SIZE:
            await self._truncate_tail(inode, fields.size, cred)
        return attr

    async def _truncate_tail(self, inode: InodeId, size: int, cred: Cred) -> None:
        """Bytes past `size` in its chunk must read as zeros if the file grows again."""
        index, length = divmod(size, CHUNK_SIZE)
        if self._registered(inode):
            await self.io.truncate(inode, index, length)
            return
        await self.meta.open_file(inode, os.O_WRONLY, cred)  # leases need an open file
        try:
            await self.io.truncate(inode, index, length)
        finally:
            await self._release_quietly(inode)

    async def _opened(self, attr: Attr, flags: int, cred: Cred, *, trunc_empty: bool) -> Attr:
        """Checks after an Open/Create registered: file type, O_TRUNC.  On failure
        the open is unregistered again."""
        try:
            if stat.S_ISLNK(attr.mode):
                raise FsError(errno.ELOOP)
            if not (stat.S_ISREG(attr.mode) or stat.S_ISDIR(attr.mode)):
                raise FsError(errno.ENXIO, "special files are opened by the kernel")
            if flags & os.O_TRUNC and stat.S_ISREG(attr.mode) and (attr.size or trunc_empty):
                attr = await self._setattr_size(attr.inode, SetAttrFields(size=0), cred)
            return attr
        except BaseException:
            await self._release_quietly(attr.inode)
            raise

    # ------------------------------------------------------------------ names and attributes
    @_edge
    async def lookup(self, parent: InodeId, name: bytes, cred: Cred) -> Attr:
        return self._seen(await self.meta.lookup(parent, name, cred))

    @_edge
    async def getattr(self, inode: InodeId, cred: Cred) -> Attr:
        return self._seen(await self.meta.getattr(inode))

    @_edge
    async def setattr(
        self, inode: InodeId, fields: SetAttrFields, cred: Cred, fh: FileHandle | None = None
    ) -> Attr:
        if fields.size is not None:
            through = self._writable(inode, fh)
            return self._seen(await self._setattr_size(inode, fields, cred, through=through))
        state = self._files.get(inode)
        if state is not None and state.dirty:
            # As an NFS client does before SETATTR: writes made before a utimes
            # (tar, cp -p) or chmod must not stamp mtime or drop set-id bits
            # after it, at a later flush.
            await self.writeback.flush(state)
        return self._seen(await self.meta.setattr(inode, fields, cred))

    @_edge
    async def mknod(self, parent: InodeId, name: bytes, mode: int, rdev: int, cred: Cred) -> Attr:
        return await self.meta.mknod(parent, name, mode, rdev, cred)

    @_edge
    async def mkdir(self, parent: InodeId, name: bytes, mode: int, cred: Cred) -> Attr:
        return await self.meta.mkdir(parent, name, mode, cred)

    @_edge
    async def symlink(self, parent: InodeId, name: bytes, target: bytes, cred: Cred) -> Attr:
        return await self.meta.symlink(parent, name, target, cred)

    @_edge
    async def readlink(self, inode: InodeId, cred: Cred) -> bytes:
        return await self.meta.readlink(inode)

    @_edge
    async def link(self, inode: InodeId, new_parent: InodeId, new_name: bytes, cred: Cred) -> Attr:
        return self._seen(await self.meta.link(inode, new_parent, new_name, cred))

    @_edge
    async def unlink(self, parent: InodeId, name: bytes, cred: Cred) -> None:
        await self.meta.unlink(parent, name, cred)

    @_edge
    async def rmdir(self, parent: InodeId, name: bytes, cred: Cred) -> None:
        await self.meta.rmdir(parent, name, cred)

    @_edge
    async def rename(
        self, parent: InodeId, name: bytes, new_parent: InodeId, new_name: bytes, flags: int,
        cred: Cred,
    ) -> None:
        await self.meta.rename(parent, name, new_parent, new_name, flags, cred)

    @_edge
    async def readdir(
        self, inode: InodeId, cookie: int, limit: int, cred: Cred
    ) -> Sequence[DirEntry]:
        entries, _ = await self.meta.readdir(inode, cookie, max(1, min(limit, MAX_READDIR)), cred)
        return [e if e.attr.inode not in self._files else
                DirEntry(e.name, self._seen(e.attr), e.cookie) for e in entries]

    @_edge
    async def access(self, inode: InodeId, mask: int, cred: Cred) -> None:
        await self.meta.access(inode, mask, cred)

    @_edge
    async def statfs(self, cred: Cred) -> StatFs:
        return await self.meta.statfs()

    # ------------------------------------------------------------------ extended attributes
    @_edge
    async def setxattr(
        self, inode: InodeId, name: bytes, value: bytes, flags: int, cred: Cred
    ) -> None:
        await self.meta.setxattr(inode, name, value, flags, cred)

    @_edge
    async def getxattr(self, inode: InodeId, name: bytes, cred: Cred) -> bytes:
        return await self.meta.getxattr(inode, name, cred)

    @_edge
    async def listxattr(self, inode: InodeId, cred: Cred) -> Sequence[bytes]:
        return await self.meta.listxattr(inode, cred)

    @_edge
    async def removexattr(self, inode: InodeId, name: bytes, cred: Cred) -> None:
        await self.meta.removexattr(inode, name, cred)

    # ------------------------------------------------------------------ open files and data
    @_edge
    async def create(
        self, parent: InodeId, name: bytes, mode: int, flags: int, cred: Cred
    ) -> tuple[FileHandle, Attr]:
        attr = await self.meta.create(parent, name, mode, flags, cred)
        attr = await self._opened(attr, flags, cred, trunc_empty=False)
        fh = self._register(attr, flags, cred)
        return fh, self._seen(attr)

    @_edge
    async def open(self, inode: InodeId, flags: int, cred: Cred) -> FileHandle:
        attr = await self.meta.open_file(inode, flags, cred)
        attr = await self._opened(attr, flags, cred, trunc_empty=True)
        return self._register(attr, flags, cred)

    @_edge
    async def read(self, fh: FileHandle, offset: int, size: int) -> bytes:
        handle, state = self._handle(fh, write=False)
        if offset < 0 or size < 0:
            raise FsError(errno.EINVAL, "negative offset or size")
        if state.dirty:
            await self.writeback.drain(state)  # read-your-writes
        end = offset + size
        if end > state.size:  # maybe it grew elsewhere: ask before answering short
            state.note(await self.meta.getattr(handle.inode))
        end = min(end, state.size)
        if end <= offset:
            return b""
        return await self.io.read(handle.inode, offset, end - offset)

    @_edge
    async def write(self, fh: FileHandle, offset: int, data: bytes) -> int:
        handle, state = self._handle(fh, write=True)
        if handle.generation != self.generation:
            raise FsError(errno.EIO, "the metadata session of this open file was lost")
        error = state.take_error()
        if error is not None:
            raise error
        if handle.flags & os.O_APPEND:
            offset = state.size  # this client's view of the end (no cross-client atomicity)
        if offset < 0:
            raise FsError(errno.EINVAL, "negative offset")
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        if not data:
            return 0
        await self.writeback.write(state, offset, bytes(data), handle.cred)
        return len(data)

    @_edge
    async def record_append(self, fh: FileHandle, data: bytes) -> int:
        """GFS record append: add `data` as one record at an end of the file the
        primary of the last chunk picks, atomically with respect to every other
        appender (on any client); the file offset where it landed.

        At least once: a retry after a lost reply may add the record twice, and
        a chunk too full for the record is padded with zeros to its end (the
        record goes to the next chunk), so readers must frame their records.
        Records are 1 to MAX_RECORD bytes (EINVAL otherwise)."""
        handle, state = self._handle(fh, write=True)
        if handle.generation != self.generation:
            raise FsError(errno.EIO, "the metadata session of this open file was lost")
        if not 0 < len(data) <= cp.MAX_RECORD:
            raise FsError(errno.EINVAL, f"a record is 1 to {cp.MAX_RECORD} bytes")
        await self.writeback.flush(state)  # this client's own writes come first
        state.note(await self.meta.getattr(handle.inode))
        index = state.size // CHUNK_SIZE
        for _ in range(MAX_FILE_SIZE // CHUNK_SIZE):  # bounded: one pass per chunk
            offset = await self.io.append(handle.inode, index, bytes(data))
            if offset is not None:
                end = index * CHUNK_SIZE + offset + len(data)
                state.note(await self.meta.set_size(handle.inode, end, False, handle.cred))
                return end - len(data)
            # Full: the file covers the padding, so every appender moves on.
            index += 1
            state.note(await self.meta.set_size(handle.inode, index * CHUNK_SIZE, False,
                                                handle.cred))
        raise FsError(errno.EFBIG)

    @_edge
    async def flush(self, fh: FileHandle) -> None:
        _, state = self._handle(fh, write=None)
        await self.writeback.flush(state)

    @_edge
    async def fsync(self, fh: FileHandle, datasync: bool) -> None:
        # Chunk writes are synced on every replica (sync_writes), so a flushed
        # write is durable: fsync is a flush.
        _, state = self._handle(fh, write=None)
        await self.writeback.flush(state)

    @_edge
    async def release(self, fh: FileHandle) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            raise FsError(errno.EBADF, f"no open file {fh}")
        state = self._files[handle.inode]
        error: FsError | None = None
        try:
            # Leave a quarter of the time bound for unregistering the open.
            with trio.fail_after(0.75 * self.config.op_timeout):
                await self.writeback.flush(state)
        except TRANSLATED as exc:
            error = translate(exc, "flush at release")
        state.opens -= 1
        try:
            if handle.generation == self.generation:
                await self.meta.release(handle.inode)
        finally:
            self._maybe_forget(state)
        if error is not None:
            raise error

    @_edge
    async def forget(self, inodes: Sequence[tuple[InodeId, int]]) -> None:
        """Inodes live by names and opens on the servers, not by kernel lookups."""


def default_local_hosts() -> tuple[str, ...]:
    return ("127.0.0.1", "::1", "localhost", socket.gethostname())


def _implements_fsapi(fs: NetworkFs) -> FsApi:
    return fs  # mypy checks here that NetworkFs has every FsApi method, typed alike


@asynccontextmanager
async def connect(
    config: FsClientConfig, secret: bytes, *, node_id: int | None = None
) -> AsyncIterator[NetworkFs]:
    """A running `NetworkFs` with its own RPC client (TCP, the cluster secret).
    Without `config.local_hosts`, replicas on loopback or under this host's
    name count as local (no DNS lookup: that could block)."""
    if not config.local_hosts:
        config = dataclasses.replace(config, local_hosts=default_local_hosts())
    rpc_config = ClientConfig(
        node_id=secrets.randbits(63) if node_id is None else node_id,
        secret=secret,
        role="fs-client",
        default_timeout=config.op_timeout,
        attempt_timeout=min(config.chunk_call_timeout, config.op_timeout),
        retry=RetryPolicy(max_attempts=3, max_backoff=0.5),
    )
    async with RpcClient(rpc_config, TcpConnector()) as rpc, NetworkFs(rpc, config) as fs:
        yield fs
