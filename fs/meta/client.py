"""MetaClient: typed calls to the metadata service, in one session, with retries.

For the client library and for tests.  Exactly-once across leader changes
comes from the session (thesis §6.3, as in coord.kv.remote): `open()`
registers a session; every command is built once with its (client id, seq)
and that same body is resent to whichever member is tried next; the state
machine executes it at most once and answers duplicates from its cache.
Leader discovery, redirects, backoff and the time bound are
`coord.kv.remote.LeaderRouter`'s (the one retry loop of the project).

Errors: every method raises `FsError` only - the errno the state machine
chose, ETIMEDOUT when no member completed the call within `timeout` (a
command may or may not have taken effect), `SessionLost` (EIO) when the
session expired (the command was NOT executed; open files registered in it
are released by the servers), EIO for anything else that should not happen.

Long-lived users must keep the session alive: run `keep_alive_forever()` in
a nursery, or call `keep_alive()` well within `session_ttl_ms`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import random
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import trio

from coord.kv.client import ClientSession
from coord.kv.commands import (
    Body,
    EndSession,
    ExtCommand,
    RegisterClient,
    encode_body,
)
from coord.kv.remote import KvError, KvTimeout, LeaderRouter
from coord.kv.results import (
    ErrorCode,
    ErrorResult,
    ExtResult,
    KeepAliveResult,
    RegisterResult,
    Result,
    SessionEndedResult,
    decode_result,
)
from coord.rpc import RpcClient
from fs.meta import commands as c
from fs.meta.protocol import FS_SPACE, FsRead, FsReply, FsSubmit
from fs.meta.results import (
    AttrResult,
    ChunkResult,
    ChunksResult,
    DataResult,
    Done,
    EntriesResult,
    FsErr,
    FsResult,
    LeaseResult,
    NamesResult,
    StatFsResult,
)
from fs.meta.results import decode_result as decode_fs
from fs.types import (
    Attr,
    ChunkHandle,
    ChunkLocation,
    Cred,
    DirEntry,
    FsError,
    InodeId,
    ServerId,
    SetAttrFields,
    StatFs,
)

T = TypeVar("T")


class SessionLost(FsError):
    """The metadata session expired: the command was not executed."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class MetaClient:
    """`async with MetaClient(rpc, endpoints) as meta: await meta.mkdir(...)`."""

    def __init__(
        self,
        rpc: RpcClient,
        endpoints: Sequence[str],
        *,
        timeout: float = 10.0,
        attempt_timeout: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self._rpc = rpc
        self._router = LeaderRouter(endpoints, timeout=timeout, rng=rng)
        self._attempt = attempt_timeout
        self._session: ClientSession | None = None
        self.session_ttl_ms = 0  # from the registration

    @property
    def retries(self) -> int:
        return self._router.retries

    @property
    def client_id(self) -> int:
        return 0 if self._session is None else self._session.client_id

    async def __aenter__(self) -> MetaClient:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(self._router.timeout):
            await self.close()

    # ------------------------------------------------------------------ session
    async def open(self) -> None:
        """Register a session (one log entry)."""
        result = await self._submit(RegisterClient())
        if not isinstance(result, RegisterResult):
            raise FsError(errno.EIO, f"registering a session failed: {result}")
        self._session = ClientSession(result.client_id)
        self.session_ttl_ms = result.session_ttl_ms

    async def keep_alive(self) -> None:
        """Refresh the session (a log entry)."""
        _expect(await self._submit(self._live().keep_alive()), KeepAliveResult)

    async def keep_alive_forever(self) -> None:
        """Refresh the session every third of its TTL until cancelled."""
        while True:
            await trio.sleep(max(0.05, self.session_ttl_ms / 3000))
            await self.keep_alive()

    async def close(self) -> None:
        """End the session: the servers release the files it holds open.  Errors
        are ignored (the session then simply expires)."""
        if self._session is None:
            return
        session, self._session = self._session, None
        with contextlib.suppress(FsError):
            _expect(await self._submit(EndSession(session.client_id)), SessionEndedResult)

    def _live(self) -> ClientSession:
        if self._session is None:
            raise FsError(errno.EIO, "the metadata client has no session: call open()")
        return self._session

    # ------------------------------------------------------------------ machinery
    async def _submit(self, body: Body) -> Result:
        raw = encode_body(body)
        reply = await self._retrying(
            lambda addr: self._rpc.call(addr, FsSubmit(raw), timeout=self._attempt)
        )
        result = decode_result(reply.result)
        if isinstance(result, ErrorResult):
            if result.code is ErrorCode.SESSION_EXPIRED:
                raise SessionLost(result.message or "session expired; command not executed")
            raise FsError(errno.EIO, f"{result.code.name}: {result.message}")
        return result

    async def _retrying(self, attempt: Callable[[str], Awaitable[FsReply]]) -> FsReply:
        try:
            return await self._router.call(attempt)
        except KvTimeout as exc:
            raise FsError(errno.ETIMEDOUT, str(exc)) from None
        except KvError as exc:
            raise FsError(errno.EIO, str(exc)) from None

    async def command(self, command: c.FsCommand) -> FsResult:
        """Run one FS command in the session (exactly once); FsErr raises FsError."""
        session = self._live()
        req = session.request(ExtCommand(FS_SPACE, c.encode_command(command)))
        try:
            result = await self._submit(req)  # retries resend this same request
        finally:
            # Never resent after this point, so its reply may be forgotten even on
            # failure; otherwise one timeout would pin the acknowledgement mark and
            # the servers' reply cache would fill up (TOO_MANY_OUTSTANDING).
            session.completed(req.seq)
        if not isinstance(result, ExtResult):
            raise FsError(errno.EIO, f"unexpected reply {result}")
        return _checked(decode_fs(result.payload))

    async def query(self, query: c.FsQuery) -> FsResult:
        """Run one FS query (linearizable, on any member)."""
        raw = c.encode_query(query)
        reply = await self._retrying(
            lambda addr: self._rpc.call(addr, FsRead(raw), timeout=self._attempt)
        )
        return _checked(decode_fs(reply.result))

    async def _attr(self, command: c.FsCommand) -> Attr:
        return _expect(await self.command(command), AttrResult).attr

    async def _done(self, command: c.FsCommand) -> None:
        _expect(await self.command(command), Done)

    # ------------------------------------------------------------------ commands
    async def mknod(self, parent: InodeId, name: bytes, mode: int, rdev: int, cred: Cred) -> Attr:
        return await self._attr(c.Mknod(parent, name, mode, rdev, cred))

    async def mkdir(self, parent: InodeId, name: bytes, mode: int, cred: Cred) -> Attr:
        return await self._attr(c.Mkdir(parent, name, mode, cred))

    async def symlink(self, parent: InodeId, name: bytes, target: bytes, cred: Cred) -> Attr:
        return await self._attr(c.Symlink(parent, name, target, cred))

    async def link(self, inode: InodeId, new_parent: InodeId, new_name: bytes, cred: Cred) -> Attr:
        return await self._attr(c.Link(inode, new_parent, new_name, cred))

    async def unlink(self, parent: InodeId, name: bytes, cred: Cred) -> None:
        await self._done(c.Unlink(parent, name, cred))

    async def rmdir(self, parent: InodeId, name: bytes, cred: Cred) -> None:
        await self._done(c.Rmdir(parent, name, cred))

    async def rename(
        self, parent: InodeId, name: bytes, new_parent: InodeId, new_name: bytes, flags: int,
        cred: Cred,
    ) -> None:
        await self._done(c.Rename(parent, name, new_parent, new_name, flags, cred))

    async def setattr(
        self, inode: InodeId, fields: SetAttrFields, cred: Cred, times_now: bool = False
    ) -> Attr:
        # "now" travels as the command's flag (the wire form of the fields has
        # no room for it), so the fields are sent without it.
        now = times_now or fields.times_now
        return await self._attr(
            c.SetAttr(inode, dataclasses.replace(fields, times_now=False), cred, now))

    async def setxattr(
        self, inode: InodeId, name: bytes, value: bytes, flags: int, cred: Cred
    ) -> None:
        await self._done(c.SetXattr(inode, name, value, flags, cred))

    async def removexattr(self, inode: InodeId, name: bytes, cred: Cred) -> None:
        await self._done(c.RemoveXattr(inode, name, cred))

    async def create(
        self, parent: InodeId, name: bytes, mode: int, flags: int, cred: Cred
    ) -> Attr:
        return await self._attr(c.Create(parent, name, mode, flags, cred))

    async def open_file(self, inode: InodeId, flags: int, cred: Cred) -> Attr:
        return await self._attr(c.Open(inode, flags, cred))

    async def release(self, inode: InodeId) -> None:
        await self._done(c.Release(inode))

    async def alloc_chunk(self, inode: InodeId, index: int) -> ChunkLocation:
        return _expect(await self.command(c.AllocChunk(inode, index)), ChunkResult).location

    async def acquire_lease(self, inode: InodeId, index: int) -> LeaseResult:
        return _expect(await self.command(c.AcquireLease(inode, index)), LeaseResult)

    async def drop_replica(self, handle: ChunkHandle, server: ServerId) -> ChunkLocation:
        return _expect(await self.command(c.DropReplica(handle, server)), ChunkResult).location

    async def set_size(self, inode: InodeId, size: int, truncate: bool, cred: Cred) -> Attr:
        return await self._attr(c.SetSize(inode, size, truncate, cred))

    # ------------------------------------------------------------------ queries
    async def lookup(self, parent: InodeId, name: bytes, cred: Cred) -> Attr:
        return _expect(await self.query(c.Lookup(parent, name, cred)), AttrResult).attr

    async def getattr(self, inode: InodeId) -> Attr:
        return _expect(await self.query(c.GetAttr(inode)), AttrResult).attr

    async def readlink(self, inode: InodeId) -> bytes:
        return _expect(await self.query(c.ReadLink(inode)), DataResult).data

    async def readdir(
        self, inode: InodeId, cookie: int, limit: int, cred: Cred
    ) -> tuple[tuple[DirEntry, ...], bool]:
        """Up to `limit` entries after `cookie`, and whether more follow."""
        result = _expect(await self.query(c.ReadDir(inode, cookie, limit, cred)), EntriesResult)
        return result.entries, result.more

    async def access(self, inode: InodeId, mask: int, cred: Cred) -> None:
        _expect(await self.query(c.Access(inode, mask, cred)), Done)

    async def statfs(self) -> StatFs:
        return _expect(await self.query(c.StatFsQuery()), StatFsResult).statfs

    async def getxattr(self, inode: InodeId, name: bytes, cred: Cred) -> bytes:
        return _expect(await self.query(c.GetXattr(inode, name, cred)), DataResult).data

    async def listxattr(self, inode: InodeId, cred: Cred) -> tuple[bytes, ...]:
        return _expect(await self.query(c.ListXattr(inode, cred)), NamesResult).names

    async def chunk_locations(
        self, inode: InodeId, first: int, count: int
    ) -> tuple[ChunkLocation, ...]:
        result = _expect(await self.query(c.ChunkLocations(inode, first, count)), ChunksResult)
        return result.locations


def _checked(result: FsResult) -> FsResult:
    if isinstance(result, FsErr):
        raise result.exception()
    return result


def _expect(result: object, kind: type[T]) -> T:
    if not isinstance(result, kind):
        raise FsError(errno.EIO, f"expected {kind.__name__}, got {type(result).__name__}")
    return result
