"""The chunk server's RPC handlers: the driver around the admission core,
the staging buffer and the store.

Invariants:

* Every mutation of a chunk (write, apply, truncate, set_version, delete)
  runs under that chunk's lock from its admission decision until its store
  call returned, so the decision is made on the state it changes and a
  chunk's mutations reach the store one at a time, in serial order.
  The store call runs in a worker thread (it blocks on fsync); nothing
  else awaits while the lock is held.
* Staged data named by a write or apply is taken out of the staging buffer
  before the decision, so it is consumed whatever the outcome.
* A read verifies its blocks without the lock (reads run concurrently with
  writes); a mismatch is re-checked under the lock before it is believed,
  because a read that overlapped a write may have seen new checksums with
  old data.  A confirmed mismatch is reported to the metadata leader (in
  the background: the reply does not wait for it) and answered CHECKSUM.
* Store errors are translated to protocol error codes here and only here.
* A secondary that failed an apply under a token is not sent later applies
  under that token (it missed a serial and would only time out): it is
  reported failed at once, until a new token (lease) starts afresh.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import trio

from coord.lease import FencingToken
from coord.rpc import CallContext, RemoteError, RpcClient, handles
from fs.chunk import pipeline
from fs.chunk import protocol as p
from fs.chunk.heartbeat import HeartbeatSink
from fs.chunk.ordering import Admit, ChunkGate, Duplicate, Reject, ReplicaState, Wait
from fs.chunk.staging import DataKey, IncompleteData, StagingBuffer
from fs.chunk.store import (
    ChunkStore,
    CorruptBlock,
    Mutation,
    NoReplica,
    NoSpace,
    StoreError,
    check_handle,
)
from fs.types import CHUNK_SIZE, ChunkHandle, ServerId

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    server_id: ServerId
    address: str  # advertised in heartbeats
    staging_bytes: int = 256 << 20  # bound on pushed data held in memory
    staging_ttl: float = 60.0  # staged data unused this long is dropped
    order_wait: float = 5.0  # how long a secondary waits for an earlier serial
    forward_timeout: float = 30.0  # bound on a push forwarded down the chain
    apply_timeout: float = 10.0  # bound on the applies a primary sends

    def validate(self) -> ServiceConfig:
        if min(self.staging_ttl, self.order_wait, self.forward_timeout,
               self.apply_timeout) <= 0:
            raise ValueError("chunk service timeouts must be positive")
        if self.staging_bytes < CHUNK_SIZE:
            raise ValueError(f"staging_bytes must hold at least one chunk ({CHUNK_SIZE})")
        return self


class _ChunkLocks:
    """One trio.Lock per chunk, created on demand and dropped when unused,
    plus a per-chunk event set whenever the chunk's state changed."""

    def __init__(self) -> None:
        self._locks: dict[ChunkHandle, tuple[trio.Lock, int]] = {}
        self._changed: dict[ChunkHandle, trio.Event] = {}

    @asynccontextmanager
    async def hold(self, handle: ChunkHandle) -> AsyncIterator[None]:
        lock, users = self._locks.get(handle, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[handle] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[handle]
            if users == 1:
                del self._locks[handle]
            else:
                self._locks[handle] = (lock, users - 1)

    def changed(self, handle: ChunkHandle) -> trio.Event:
        """An event that will be set at the chunk's next state change."""
        return self._changed.setdefault(handle, trio.Event())

    def notify(self, handle: ChunkHandle) -> None:
        event = self._changed.pop(handle, None)
        if event is not None:
            event.set()


def _reject(r: Reject) -> RemoteError:
    return RemoteError(r.code, r.message)


def _handle(value: int) -> ChunkHandle:
    try:
        return check_handle(value)
    except ValueError as exc:
        raise RemoteError(p.BAD_ARGS, str(exc)) from None


def _check_range(offset: int, size: int) -> None:
    if offset < 0 or size < 0 or offset + size > CHUNK_SIZE:
        raise RemoteError(p.BAD_ARGS, f"range [{offset}, {offset + size}) is outside a chunk")


class ChunkService:
    """Serves `chunk.*`; `run` must be running (in a nursery) while it serves."""

    def __init__(self, config: ServiceConfig, store: ChunkStore, peers: RpcClient,
                 sink: HeartbeatSink) -> None:
        self.config = config.validate()
        self.store = store
        self.peers = peers  # our client to other chunk servers
        self.sink = sink
        self.gate = ChunkGate(store.fences())
        self.staging = StagingBuffer(config.staging_bytes, config.staging_ttl)
        self._locks = _ChunkLocks()
        # Per chunk: the token of the current lease and the secondaries that
        # failed an apply under it.  They have missed a serial, so every later
        # apply would only wait out `order_wait` there: report them at once.
        self._broken: dict[ChunkHandle, tuple[FencingToken, set[str]]] = {}
        # Bad replicas waiting to be reported (bounded: a flood is dropped, the
        # next read of the block reports it again).
        self._bad_send, self._bad_recv = trio.open_memory_channel[ChunkHandle](256)

    # -- background work ------------------------------------------------------

    async def run(self) -> None:
        """Report bad replicas and expire staged data, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._report_bad, name="bad-replica reporter")
            while True:
                await trio.sleep(min(5.0, self.config.staging_ttl / 2))
                self.staging.expire(trio.current_time())

    async def _report_bad(self) -> None:
        async for handle in self._bad_recv:
            for attempt in range(5):
                try:
                    with trio.fail_after(5):
                        await self.sink.bad_replica(self.config.server_id, handle)
                    break
                except Exception as exc:
                    log.info("reporting bad replica %d failed (%s), attempt %d",
                             handle, exc, attempt + 1)
                    await trio.sleep(0.5 * 2 ** attempt)

    def _corrupt(self, exc: CorruptBlock) -> RemoteError:
        log.warning("%s", exc)
        try:
            self._bad_send.send_nowait(exc.handle)
        except trio.WouldBlock:
            log.warning("bad-replica queue full; not reporting chunk %d now", exc.handle)
        return RemoteError(p.CHECKSUM, str(exc))

    async def _store(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking store call in a thread, translating its errors."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except CorruptBlock as exc:
            raise self._corrupt(exc) from None
        except NoReplica as exc:
            raise RemoteError(p.NO_CHUNK, str(exc)) from None
        except NoSpace as exc:
            raise RemoteError(p.ENOSPC, str(exc)) from None
        except StoreError as exc:
            raise RemoteError(p.EIO, str(exc)) from None
        except ValueError as exc:
            raise RemoteError(p.BAD_ARGS, str(exc)) from None

    # -- data push --------------------------------------------------------------

    @handles(p.ChunkPush)
    async def push(self, req: p.ChunkPush, ctx: CallContext) -> p.PushReply:
        origin = req.origin or ctx.peer.node_id
        _check_range(req.part_offset, len(req.data))
        key = DataKey(origin, req.data_id)
        if not self.staging.put(key, req.part_offset, req.data, trio.current_time()):
            raise RemoteError(p.STAGING_FULL, "staging buffer full; retry later")
        if not req.chain:
            return p.PushReply([])

        def make(rest: list[str]) -> p.ChunkPush:
            return p.ChunkPush(req.data_id, req.data, rest, req.part_offset, origin)

        deadline = pipeline.hop_deadline(ctx.deadline, self.config.forward_timeout)
        return p.PushReply(await pipeline.forward_push(self.peers, req.chain, make, deadline))

    def _take(self, key: DataKey) -> bytes | None:
        try:
            return self.staging.take(key, trio.current_time())
        except IncompleteData as exc:
            raise RemoteError(p.NO_DATA, str(exc)) from None

    # -- mutations at the primary -------------------------------------------------

    @handles(p.ChunkWrite)
    async def write(self, req: p.ChunkWrite, ctx: CallContext) -> p.WriteReply:
        handle = _handle(req.handle)
        async with self._locks.hold(handle):
            data = self._take(DataKey(ctx.peer.node_id, req.data_id))
            if data is None:
                raise RemoteError(p.NO_DATA, f"no staged data {req.data_id} from "
                                             f"{ctx.peer.node_id} (expired or never pushed)")
            _check_range(req.offset, len(data))
            d = self.gate.primary(self.store.state(handle), handle, req.version, req.token)
            if isinstance(d, Reject):
                raise _reject(d)
            await self._store(self.store.write, handle, Mutation(d.version, d.token, d.serial),
                              req.offset, data, req.sync)
            self._locks.notify(handle)
        apply = p.ChunkApply(handle, d.version, d.token, d.serial, req.data_id, req.offset,
                             ctx.peer.node_id, req.sync)
        failed = await self._fan_out(req.secondaries, apply, ctx)
        return p.WriteReply(d.serial, failed)

    async def _fan_out(self, secondaries: list[str], apply: p.ChunkApply,
                       ctx: CallContext) -> list[str]:
        token, broken = self._broken.get(apply.handle, (apply.token, set()))
        if token != apply.token:
            token, broken = apply.token, set()
        deadline = pipeline.hop_deadline(ctx.deadline, self.config.apply_timeout)
        failed = set(await pipeline.fan_out(
            self.peers, [a for a in secondaries if a not in broken], apply, deadline))
        broken |= failed
        if broken:
            current = self._broken.get(apply.handle)
            if current is None or current[0] <= token:
                self._broken[apply.handle] = (token, broken)
        return [a for a in secondaries if a in failed or a in broken]

    @handles(p.ChunkTruncate)
    async def truncate(self, req: p.ChunkTruncate, ctx: CallContext) -> p.TruncateReply:
        handle = _handle(req.handle)
        _check_range(req.length, 0)
        async with self._locks.hold(handle):
            d = self.gate.primary(self.store.state(handle), handle, req.version, req.token)
            if isinstance(d, Reject):
                raise _reject(d)
            await self._store(self.store.truncate, handle,
                              Mutation(d.version, d.token, d.serial), req.length, True)
            self._locks.notify(handle)
        apply = p.ChunkApply(handle, d.version, d.token, d.serial, 0, req.length,
                             ctx.peer.node_id, True, truncate=True)
        return p.TruncateReply(d.serial, await self._fan_out(req.secondaries, apply, ctx))

    @handles(p.ChunkSetVersion)
    async def set_version(self, req: p.ChunkSetVersion, ctx: CallContext) -> p.SetVersionReply:
        handle = _handle(req.handle)
        async with self._locks.hold(handle):
            state = self.store.state(handle)
            d = self.gate.set_version(state, handle, req.version, req.token)
            if isinstance(d, Reject):
                raise _reject(d)
            # The serial count keeps counting under the token it counts under.
            token = state.token if state is not None else d.token
            new = await self._store(self.store.set_version, handle,
                                    Mutation(d.version, token, d.serial))
            self._locks.notify(handle)
        return p.SetVersionReply(new.version)

    # -- mutations at a secondary -------------------------------------------------

    @handles(p.ChunkApply)
    async def apply(self, req: p.ChunkApply, ctx: CallContext) -> p.ApplyReply:
        handle = _handle(req.handle)
        data: bytes | None = None
        if not req.truncate:
            data = self._take(DataKey(req.origin, req.data_id))
        deadline = min(ctx.deadline, trio.current_time() + self.config.order_wait)
        with trio.move_on_at(deadline):
            while True:
                async with self._locks.hold(handle):
                    state = self.store.state(handle)
                    d = self.gate.secondary(state, handle, req.version, req.token, req.serial)
                    if not isinstance(d, Wait):
                        return await self._apply_admitted(req, handle, d, data, state)
                    changed = self._locks.changed(handle)
                await changed.wait()
        raise RemoteError(p.OUT_OF_ORDER, f"chunk {handle}: serial {req.serial} still waits "
                                          f"for an earlier one after {self.config.order_wait} s")

    async def _apply_admitted(self, req: p.ChunkApply, handle: ChunkHandle,
                              d: Admit | Reject | Duplicate, data: bytes | None,
                              state: ReplicaState | None) -> p.ApplyReply:
        """Called with the chunk's lock held."""
        if isinstance(d, Reject):
            raise _reject(d)
        if isinstance(d, Duplicate):
            assert state is not None
            return p.ApplyReply(d.serial, state.version)
        m = Mutation(d.version, d.token, d.serial)
        if req.truncate:
            new = await self._store(self.store.truncate, handle, m, req.offset, True)
        else:
            if data is None:
                raise RemoteError(p.NO_DATA, f"no staged data {req.data_id} from {req.origin}")
            _check_range(req.offset, len(data))
            new = await self._store(self.store.write, handle, m, req.offset, data, req.sync)
        self._locks.notify(handle)
        return p.ApplyReply(d.serial, new.version)

    # -- reads and administration ---------------------------------------------------

    @handles(p.ChunkRead)
    async def read(self, req: p.ChunkRead, ctx: CallContext) -> p.ReadReply:
        handle = _handle(req.handle)
        _check_range(req.offset, req.length)
        refused = self.gate.read(self.store.state(handle), handle, req.version)
        if refused is not None:
            raise _reject(refused)
        try:
            data = await trio.to_thread.run_sync(self.store.read, handle, req.offset, req.length)
        except (CorruptBlock, StoreError, ValueError):
            # Believe a mismatch only when no mutation can be half-way through.
            async with self._locks.hold(handle):
                refused = self.gate.read(self.store.state(handle), handle, req.version)
                if refused is not None:
                    raise _reject(refused) from None
                data = await self._store(self.store.read, handle, req.offset, req.length)
        return p.ReadReply(data)

    @handles(p.ChunkDelete)
    async def delete(self, req: p.ChunkDelete, ctx: CallContext) -> p.DeleteReply:
        deleted = []
        for value in req.handles:
            handle = _handle(value)
            async with self._locks.hold(handle):
                if await self._store(self.store.delete, handle):
                    deleted.append(handle)
                self._broken.pop(handle, None)
                self.gate.forget(handle)
                self._locks.notify(handle)
        return p.DeleteReply(deleted)

    async def delete_if_unchanged(self, handle: ChunkHandle,
                                  reported: ReplicaState | None) -> bool:
        """Delete the replica only if it is still exactly as `reported`."""
        async with self._locks.hold(handle):
            if reported is None or self.store.state(handle) != reported:
                return False
            done = await self._store(self.store.delete, handle)
            self._broken.pop(handle, None)
            self.gate.forget(handle)
            self._locks.notify(handle)
            return done

    @handles(p.ChunkStat)
    async def stat(self, req: p.ChunkStat, ctx: CallContext) -> p.StatReply:
        space = await self._store(self.store.space)
        return p.StatReply(self.config.server_id, space.capacity, space.free, space.used,
                           len(self.store.states()), self.staging.bytes_used,
                           len(self.staging))

    @handles(p.ChunkChecksum)
    async def checksum(self, req: p.ChunkChecksum, ctx: CallContext) -> p.ChecksumReply:
        handle = _handle(req.handle)
        async with self._locks.hold(handle):
            state = self.store.state(handle)
            if state is None:
                raise RemoteError(p.NO_CHUNK, f"no replica of chunk {handle} here")
            bad = await self._store(self.store.verify, handle)
        if bad:
            self._corrupt(CorruptBlock(handle, bad[0]))
        return p.ChecksumReply(state.version, state.length, bad)

    # -- heartbeat support ---------------------------------------------------------

    async def snapshot(self) -> tuple[int, int, dict[ChunkHandle, ReplicaState]]:
        """(capacity, free, replicas) for a heartbeat."""
        states = self.store.states()
        space = await self._store(self.store.space)
        return space.capacity, space.free, states
