"""The data path: reading and writing chunk replicas (GFS protocol, client side).

`ChunkIO` talks to the chunk servers (`chunk.*`) and asks the metadata
service (through a `MetaOps`, i.e. `MetaClient`) for chunk locations,
allocations, primary leases and replica drops.  It raises `FsError` (from
the metadata service), `coord.rpc` errors and `trio.TooSlowError`; the
caller's edge translates them (fs/client/errors.py).

Reads: each chunk span goes to the replica `order_replicas` puts first (this
host's, else placement order, recently failing servers last); CHECKSUM,
STALE_VERSION, NO_CHUNK, EIO and unreachable servers make it try the next
replica; when none served it, the cached location is dropped and fetched
again once.  A listed replica whose version lags the map's (a lease was
granted and its bump has not reached the replica) is readable at its own
version - readability is map membership (docs/fs-design.md) - but only on
a location just fetched, never on a cached one (a cached list may still
name a replica that was dropped since).  Holes and bytes past a replica's
data read as zeros.

Writes (one extent inside one chunk), in this order:
1. a lease: cached while valid, else `AllocChunk` if the chunk is absent,
   `AcquireLease`, and `chunk.begin` at its primary: the new primary
   settles every mutation an earlier primary left undecided (the same way
   on every replica) and raises the replicas to the lease's version (the
   bump gap); replicas it could not bring in line are dropped here;
2. the data pushed along the chain nearest-first, in parts, several in
   flight (skipping a first server that does not answer);
3. `chunk.write` to the primary with the token: a two-phase commit over the
   replica set.  Its `failed` replicas are dropped from the chunk map
   (`DropReplica`, a version bump each) and the survivors raised with
   `chunk.set_version` BEFORE anything else happens; then, if the primary
   committed, the write counts as done, and if it aborted (some replica
   could not prepare: nothing changed anywhere), it is written again
   without them;
4. on STALE_TOKEN / NOT_PRIMARY / STALE_VERSION: a fresh lease and a new
   attempt; NO_DATA: push again; IN_DOUBT, CHECKSUM, EIO: a new attempt
   shortly (the lease is renewed, which settles old mutations); an
   unreachable primary: it is dropped from the map (its lease ends at
   once) when other replicas remain, so a new primary is granted at once
   instead of after the lease term; a slow one gets one more try first.
   Every new attempt pushes the data again (a write consumes the staged
   copy).  The client is never told a write succeeded before every
   replica still listed has committed it.

Record appends (`append`) follow the same steps with `chunk.append`: the
primary picks the offset.  A retry after a lost reply may append the
record twice (at least once, as in GFS).

Reads that find every replica holding an undecided mutation over the range
(IN_DOUBT: its primary died before deciding) take the chunk's lease, whose
`chunk.begin` settles it, and read again.

All waits are bounded by the caller's cancel scope (the operation
timeout) and each chunk-server call by `chunk_call_timeout`.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import trio

from coord.lease import FencingToken
from coord.rpc import (
    ConnectionLost,
    RemoteError,
    Request,
    RpcClient,
    RpcError,
    Timeout,
    Unavailable,
)
from fs.chunk import protocol as cp
from fs.client.buffer import Extent
from fs.client.caches import LeaseTable, LocationCache, Suspects, Unknown
from fs.client.config import FsClientConfig
from fs.client.errors import is_unreachable
from fs.client.layout import Replica, Span, order_replicas, parts, push_chain, spans
from fs.client.tasks import run_all
from fs.meta.results import LeaseResult
from fs.types import ChunkHandle, ChunkLocation, ChunkVersion, FsError, InodeId, ServerId

log = logging.getLogger(__name__)
R = TypeVar("R")

LOCATION_WINDOW = 64  # chunk locations fetched per metadata query (4 GiB of file)
MAX_MUTATION_ATTEMPTS = 8  # new leases/pushes per extent before giving up (EIO)
CONTROL_TIMEOUT = 2.0  # set_version is small: do not wait long for a dead server
_RENEW = frozenset({cp.STALE_TOKEN, cp.NOT_PRIMARY, cp.STALE_VERSION})
_REPLICA_TROUBLE = frozenset({cp.CHECKSUM, cp.EIO, cp.OUT_OF_ORDER, cp.STAGING_FULL,
                              cp.IN_DOUBT})


class MetaOps(Protocol):
    """What the data path needs of the metadata service (MetaClient has it)."""

    async def chunk_locations(
        self, inode: InodeId, first: int, count: int
    ) -> tuple[ChunkLocation, ...]: ...

    async def alloc_chunk(self, inode: InodeId, index: int) -> ChunkLocation: ...

    async def acquire_lease(self, inode: InodeId, index: int) -> LeaseResult: ...

    async def drop_replica(self, handle: ChunkHandle, server: ServerId) -> ChunkLocation: ...


@dataclass(frozen=True, slots=True)
class Applied:
    """What the primary said about one mutation."""

    failed: tuple[str, ...]  # replicas to drop before anything else
    committed: bool  # False: aborted everywhere, write again


@dataclass(frozen=True, slots=True)
class Pushed:
    """Data staged on chunk servers under (our node id, data_id)."""

    data_id: int
    chain: tuple[str, ...]  # the addresses it was pushed to, in order
    holders: frozenset[str]  # those that confirmed holding all of it

    def serves(self, lease: LeaseResult) -> bool:
        """Can `lease`'s primary write it and its secondaries apply it?  (A
        secondary that missed the push fails the apply and is dropped, as any
        replica that cannot take a write is.)"""
        return lease.primary_address in self.holders and all(
            address in self.chain for _, address in lease.location.replicas
        )


class ChunkIO:
    def __init__(self, rpc: RpcClient, meta: MetaOps, config: FsClientConfig) -> None:
        self._rpc = rpc
        self._meta = meta
        self._config = config
        self.locations = LocationCache(config.location_ttl, config.location_entries)
        self.leases = LeaseTable()
        self.suspects = Suspects(config.suspect_ttl)
        self._lease_locks: dict[tuple[InodeId, int], trio.Lock] = {}
        self._data_ids = itertools.count(1)
        self.drops = 0  # replicas this client had dropped from chunk maps (for tests/tools)

    # ------------------------------------------------------------------ calls
    async def _call(self, address: str, request: Request[R], cap: float | None = None) -> R:
        """One chunk-server call, bounded by `cap` (default chunk_call_timeout)
        and by the caller's cancel scope."""
        limit = self._config.chunk_call_timeout if cap is None else cap
        deadline = min(trio.current_effective_deadline(), trio.current_time() + limit)
        return await self._rpc.call(address, request, deadline=deadline)

    # ------------------------------------------------------------------ locations
    async def location(
        self, inode: InodeId, index: int, *, fresh: bool = False
    ) -> ChunkLocation | None:
        """Where chunk `index` lives (None: a hole), from the cache unless `fresh`."""
        now = trio.current_time()
        if not fresh:
            cached = self.locations.get(inode, index, now)
            if not isinstance(cached, Unknown):
                return cached
        count = 1 if fresh else LOCATION_WINDOW
        found = await self._meta.chunk_locations(inode, index, count)
        self.locations.put_range(inode, index, count, found, now)
        return next((loc for loc in found if loc.index == index), None)

    # ------------------------------------------------------------------ reads
    async def read(self, inode: InodeId, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of the file (the caller clipped it at
        the file size): `length` bytes, zeros where nothing was written."""
        pieces = [
            piece
            for span in spans(offset, length)
            for piece in _split_span(span, self._config.read_part)
        ]
        out: list[bytes] = [b""] * len(pieces)

        def reader(k: int) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                out[k] = await self._read_span(inode, pieces[k])
            return run

        await run_all([reader(k) for k in range(len(pieces))], self._config.read_window,
                      f"read-{inode}")
        return b"".join(out)

    async def _read_span(self, inode: InodeId, span: Span) -> bytes:
        fresh = settled = False
        for _ in range(3):
            location = await self.location(inode, span.index, fresh=fresh)
            if location is None:
                return bytes(span.length)  # a hole
            data, in_doubt = await self._read_replicas(location, span, trusted=fresh)
            if data is not None:
                return data + bytes(span.length - len(data))
            if in_doubt and not settled:  # every replica waits for a dead primary
                await self._settle(inode, span.index)
                settled = True
                continue
            self.locations.invalidate(inode, span.index)
            fresh = True
        raise FsError(errno.EIO, f"no replica of chunk {span.index} of inode {inode} "
                                 "could be read")

    async def _settle(self, inode: InodeId, index: int) -> None:
        """Have the chunk's primary settle what a dead one left undecided (best
        effort: the file must be open in our session for a lease)."""
        try:
            lease = await self.lease(inode, index, allocate=False)
            await self._begin(inode, index, lease)
        except (FsError, RpcError) as exc:
            log.debug("settling chunk %d of inode %d: %s", index, inode, exc)

    async def _read_replicas(
        self, location: ChunkLocation, span: Span, *, trusted: bool
    ) -> tuple[bytes | None, bool]:
        """The span from the first replica that serves it (None if none did), and
        whether some replica refused it IN_DOUBT (an undecided mutation there)."""
        now = trio.current_time()
        codes: list[str | None] = []
        for _, address in order_replicas(
            location.replicas, self._config.local_hosts, self.suspects.current(now)
        ):
            data = await self._read_one(address, location, span, trusted=trusted, codes=codes)
            if data is not None:
                return data, False
        return None, cp.IN_DOUBT in codes

    async def _read_one(
        self, address: str, location: ChunkLocation, span: Span, *, trusted: bool,
        codes: list[str | None],
    ) -> bytes | None:
        version = location.version
        for _ in range(2):
            request = cp.ChunkRead(location.handle, version, span.offset, span.length)
            try:
                return (await self._call(address, request)).data
            except RemoteError as exc:
                if exc.code not in cp.RETRY_ELSEWHERE:
                    raise
                lagging = cp.replica_version_of(exc.message) if exc.code == cp.STALE_VERSION \
                    else None
                if trusted and lagging is not None and lagging < version:
                    version = ChunkVersion(lagging)  # listed, bump not arrived yet: readable
                    continue
                log.debug("read of chunk %d at %s: %s", location.handle, address, exc)
                codes.append(exc.code)
                if exc.code not in (cp.STALE_VERSION, cp.IN_DOUBT):
                    self.suspects.mark(address, trio.current_time())
                return None
            except RpcError as exc:
                if not is_unreachable(exc):
                    raise
                log.debug("read of chunk %d: %s unreachable: %s", location.handle, address, exc)
                codes.append(None)
                self.suspects.mark(address, trio.current_time())
                return None
        return None

    # ------------------------------------------------------------------ leases
    def _lock(self, inode: InodeId, index: int) -> trio.Lock:
        key = (inode, index)
        lock = self._lease_locks.get(key)
        if lock is None:
            if len(self._lease_locks) > 4096:  # drop idle locks: bounded table
                self._lease_locks = {k: v for k, v in self._lease_locks.items() if v.locked()}
            lock = self._lease_locks[key] = trio.Lock()
        return lock

    async def lease(self, inode: InodeId, index: int, *, allocate: bool = True) -> LeaseResult:
        """A valid primary lease for chunk `index` (allocating the chunk if absent
        and `allocate`); a new one has its version sent to the replicas."""
        async with self._lock(inode, index):
            held = self.leases.get(inode, index, trio.current_time())
            if held is not None:
                return held
            if allocate and await self.location(inode, index) is None:
                location = await self._meta.alloc_chunk(inode, index)
                self.locations.put(inode, index, location, trio.current_time())
            sent = trio.current_time()
            lease = await self._acquire(inode, index, allocate=allocate)
            lease = await self._begin(inode, index, lease)
            term = lease.lease_ms / 1000 - self._config.lease_margin
            self.leases.put(inode, index, lease, sent + max(term, 0.0))
            self.locations.put(inode, index, lease.location, trio.current_time())
            return lease

    async def _acquire(self, inode: InodeId, index: int, *, allocate: bool) -> LeaseResult:
        """AcquireLease; EAGAIN (a silent primary's term runs out) is waited out
        with backoff, ENOENT (our cached location was stale) allocates."""
        backoff = 0.05
        for _ in range(10_000):  # bounded by the caller's deadline long before this
            try:
                return await self._meta.acquire_lease(inode, index)
            except FsError as exc:
                if exc.errno == errno.ENOENT and allocate:
                    self.locations.invalidate(inode, index)
                    await self._meta.alloc_chunk(inode, index)
                    continue
                if exc.errno != errno.EAGAIN:
                    raise
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        raise FsError(errno.EIO, "no lease")

    async def _begin(self, inode: InodeId, index: int, lease: LeaseResult) -> LeaseResult:
        """`chunk.begin` at the lease's primary: settle earlier leases' undecided
        mutations, raise every replica to the lease's version; drop the replicas
        it could not bring in line.  Best effort otherwise: a lost call is made
        up for by the first write, which settles too."""
        request = cp.ChunkBegin(lease.location.handle, lease.location.version,
                                FencingToken(lease.token), _secondaries(lease))
        try:
            reply = await self._call(lease.primary_address, request)
        except RpcError as exc:  # RemoteError included: the write will find out why
            log.debug("begin of chunk %d at %s: %s", lease.location.handle,
                      lease.primary_address, exc)
            return lease
        if not reply.failed:
            return lease
        location = await self._drop(inode, index, lease, reply.failed)
        return dataclasses.replace(lease, location=location)

    async def _set_version(self, location: ChunkLocation, token: FencingToken) -> None:
        """Raise every replica to the map's version (best effort, concurrently)."""
        request = cp.ChunkSetVersion(location.handle, location.version, token)

        def setter(address: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                try:
                    await self._call(address, request, cap=CONTROL_TIMEOUT)
                except RpcError as exc:  # it learns the version with the next write
                    log.debug("set_version of chunk %d at %s: %s", location.handle, address,
                              exc)
            return run

        await run_all([setter(a) for _, a in location.replicas], len(location.replicas),
                      "set-version")

    # ------------------------------------------------------------------ pushes
    async def push(self, data: bytes, chain: Sequence[str]) -> Pushed:
        """Stage `data` on the servers of `chain` (nearest first), in parts."""
        remaining = list(chain)
        while remaining:
            head, rest = remaining[0], remaining[1:]
            data_id = next(self._data_ids)
            try:
                stored = await self._push_parts(head, rest, data_id, data)
            except RpcError as exc:
                if not is_unreachable(exc):
                    raise
                log.debug("push to %s failed (%s): skipping it", head, exc)
                self.suspects.mark(head, trio.current_time())
                remaining = rest
                continue
            return Pushed(data_id, tuple(chain), frozenset({head, *stored}))
        raise FsError(errno.EIO, f"no chunk server of {list(chain)} took the data")

    async def _push_parts(self, head: str, rest: list[str], data_id: int, data: bytes) -> set[str]:
        view = memoryview(data)
        stored = set(rest)

        def pusher(offset: int, size: int) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                part = bytes(view[offset:offset + size])
                reply = await self._call(head, cp.ChunkPush(data_id, part, rest, offset))
                stored.intersection_update(reply.stored)
            return run

        await run_all([pusher(o, n) for o, n in parts(len(data), self._config.push_part)],
                      self._config.push_window, f"push-{data_id}")
        return stored

    async def push_for(self, inode: InodeId, extent: Extent) -> tuple[LeaseResult, Pushed]:
        """Steps 1-2 for `extent`: its chunk's lease and the data staged on its replicas."""
        lease = await self.lease(inode, extent.index)
        chain = push_chain(lease.location.replicas, self._config.local_hosts)
        return lease, await self.push(extent.data, chain)

    # ------------------------------------------------------------------ mutations
    async def write(self, inode: InodeId, extent: Extent, pushed: Pushed | None = None) -> None:
        """Write `extent` to every replica of its chunk (steps 1-4)."""
        staged = pushed

        async def attempt(lease: LeaseResult) -> Applied:
            nonlocal staged
            if staged is None or not staged.serves(lease):
                chain = push_chain(lease.location.replicas, self._config.local_hosts)
                staged = await self.push(extent.data, chain)
            sent, staged = staged, None  # consumed by the write, whatever happens ...
            request = cp.ChunkWrite(
                lease.location.handle, lease.location.version, FencingToken(lease.token),
                sent.data_id, extent.chunk_offset, _secondaries(lease), self._config.sync_writes,
            )
            try:
                reply = await self._call(lease.primary_address, request)
            except Unavailable as exc:
                if not isinstance(exc, ConnectionLost):
                    staged = sent  # ... unless it never reached the primary: use it again
                raise
            return Applied(tuple(reply.failed), reply.committed)

        await self._mutate(inode, extent.index, attempt, allocate=True)

    async def append(self, inode: InodeId, index: int, data: bytes) -> int | None:
        """GFS record append to chunk `index` (steps 1-4, with `chunk.append`):
        the offset in the chunk where the primary put the record, or None if the
        chunk is full (nothing was written; append to the next chunk)."""
        placed: list[int | None] = []

        async def attempt(lease: LeaseResult) -> Applied:
            chain = push_chain(lease.location.replicas, self._config.local_hosts)
            staged = await self.push(data, chain)  # every attempt consumes its copy
            request = cp.ChunkAppend(
                lease.location.handle, lease.location.version, FencingToken(lease.token),
                staged.data_id, _secondaries(lease),
            )
            reply = await self._call(lease.primary_address, request)
            if reply.full:
                placed.append(None)
                return Applied((), True)
            if reply.committed:
                placed.append(reply.offset)
            return Applied(tuple(reply.failed), reply.committed)

        await self._mutate(inode, index, attempt, allocate=True)
        return placed[-1]

    async def truncate(self, inode: InodeId, index: int, length: int) -> None:
        """Cut chunk `index`'s replicas to `length` bytes (no-op for a hole)."""
        if await self.location(inode, index, fresh=True) is None:
            return

        async def attempt(lease: LeaseResult) -> Applied:
            request = cp.ChunkTruncate(
                lease.location.handle, lease.location.version, FencingToken(lease.token),
                length, _secondaries(lease),
            )
            reply = await self._call(lease.primary_address, request)
            return Applied(tuple(reply.failed), reply.committed)

        await self._mutate(inode, index, attempt, allocate=False)

    async def _mutate(
        self, inode: InodeId, index: int, attempt: Callable[[LeaseResult], Awaitable[Applied]],
        *, allocate: bool,
    ) -> None:
        """Run `attempt` under a valid lease until the primary committed it; report
        the replicas that failed (commit or abort) before anything else."""
        slow = 0  # attempts the primary did not answer in time
        for _ in range(MAX_MUTATION_ATTEMPTS):
            lease = await self.lease(inode, index, allocate=allocate)
            try:
                applied = await attempt(lease)
            except RemoteError as exc:
                await self._after_refusal(inode, index, exc)
                continue
            except RpcError as exc:
                if not is_unreachable(exc):
                    raise
                if isinstance(exc, Timeout):
                    if trio.current_time() >= trio.current_effective_deadline():
                        raise  # our own time is up: that says nothing about the primary
                    slow += 1
                    if slow < 2:
                        continue  # slow, not gone: one more try with the same primary
                await self._primary_gone(inode, index, lease, exc)
                continue
            if applied.failed:
                await self._drop(inode, index, lease, applied.failed)
            if applied.committed:
                return
            if not applied.failed:  # aborted with nobody to blame: a moment, then again
                await trio.sleep(0.1)
        raise FsError(errno.EIO, f"chunk {index} of inode {inode}: no replica took the mutation "
                                 f"after {MAX_MUTATION_ATTEMPTS} attempts")

    async def _after_refusal(self, inode: InodeId, index: int, exc: RemoteError) -> None:
        """A chunk server refused a mutation: decide whether a new attempt may help."""
        log.debug("mutation of chunk %d of inode %d refused: %s", index, inode, exc)
        if exc.code == cp.NO_DATA:
            return  # the staged copy was lost (restart, expiry): push again
        if exc.code in _RENEW:
            self.leases.invalidate(inode, index)
            self.locations.invalidate(inode, index)
            return
        if exc.code in _REPLICA_TROUBLE:
            self.leases.invalidate(inode, index)
            await trio.sleep(0.1)  # the server reports a bad replica itself; let it land
            return
        raise exc  # ENOSPC, BAD_ARGS, ...: no new attempt helps

    async def _primary_gone(
        self, inode: InodeId, index: int, lease: LeaseResult, exc: RpcError
    ) -> None:
        """The primary does not answer: drop it (its lease ends with it) unless it
        holds the last replica."""
        primary = lease.primary_address
        self.suspects.mark(primary, trio.current_time())
        self.leases.invalidate(inode, index)
        if len(lease.location.replicas) < 2:
            raise exc
        log.warning("chunk %d: primary %s does not answer (%s); dropping it",
                    lease.location.handle, primary, exc)
        location = await self._meta.drop_replica(lease.location.handle, lease.primary)
        self.drops += 1
        self.locations.put(inode, index, location, trio.current_time())

    async def _drop(
        self, inode: InodeId, index: int, lease: LeaseResult, failed: Sequence[str]
    ) -> ChunkLocation:
        """Remove the replicas that missed a mutation from the chunk map (each a
        version bump), then raise the survivors to the new version."""
        ids = {address: server for server, address in lease.location.replicas}
        location = lease.location
        for address in failed:
            server = ids.get(address)
            if server is None:
                continue
            log.warning("chunk %d: replica on %s could not take a mutation; dropping it",
                        location.handle, address)
            location = await self._meta.drop_replica(location.handle, server)
            self.drops += 1
            self.suspects.mark(address, trio.current_time())
        self.leases.replace_location(inode, index, location)
        self.locations.put(inode, index, location, trio.current_time())
        await self._set_version(location, FencingToken(lease.token))
        return location

    def forget_from(self, inode: InodeId, first_index: int) -> None:
        """Chunks from `first_index` on were released (truncate): forget them."""
        self.locations.drop_inode(inode)
        self.leases.drop_from(inode, first_index)


def _secondaries(lease: LeaseResult) -> list[str]:
    return [address for _, address in lease.secondaries]


def _split_span(span: Span, part: int) -> list[Span]:
    return [
        Span(span.index, span.offset + o, size, span.file_offset + o)
        for o, size in parts(span.length, part)
    ]


__all__ = ["Applied", "ChunkIO", "MetaOps", "Pushed", "Replica"]
