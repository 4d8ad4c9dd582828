"""The chunk server's RPC handlers: pushes, reads and administration here; the
two-phase commit of mutations in fs/chunk/primary.py (the lease holder's
side) and fs/chunk/participant.py (every replica's side).

Invariants:

* Every state change of a chunk (prepare, decide, set_version, delete,
  checkpoint) runs under that chunk's lock from its admission decision
  until its store call returned (fs/chunk/runner.py), so a chunk's
  changes reach the store one at a time.  Store calls run in worker
  threads; store errors become protocol codes in `Runner.call` only.
* Staged data named by a write or prepare is taken out of the staging
  buffer before anything is decided, so it is consumed whatever the
  outcome.
* Reads never return prepared, undecided data: a read waits (bounded) for
  the decision on any undecided mutation it overlaps, then reads the
  committed state.  A read verifies its blocks without the lock (reads run
  concurrently with commits); a mismatch is re-checked under the lock
  before it is believed, because a read that overlapped a commit may have
  seen new checksums with old data.  A confirmed mismatch is reported to
  the metadata leader (in the background) and answered CHECKSUM.
* Committed data reaches the chunk file without a sync (the staged copy is
  durable); `run` checkpoints chunks with such data every
  `checkpoint_interval`, bounding the staged files kept on disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from coord.rpc import CallContext, RemoteError, RpcClient, handles
from fs.chunk import pipeline
from fs.chunk import protocol as p
from fs.chunk.heartbeat import HeartbeatSink
from fs.chunk.intent import IntentStatus
from fs.chunk.ordering import ChunkGate, Reject, ReplicaState
from fs.chunk.participant import Participant, check_range, reject
from fs.chunk.primary import ClientMutation, Primary
from fs.chunk.runner import Runner
from fs.chunk.staging import DataKey, IncompleteData, StagingBuffer
from fs.chunk.store import (
    ChunkStore,
    CorruptBlock,
    Mutation,
    StoreError,
    check_handle,
    older_undecided,
    position,
)
from fs.chunk.twopc import Finished
from fs.types import CHUNK_SIZE, ChunkHandle, ServerId

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    server_id: ServerId
    address: str  # advertised in heartbeats; how the primary names itself in a replica set
    staging_bytes: int = 256 << 20  # bound on pushed data held in memory
    staging_ttl: float = 60.0  # staged data unused this long is dropped
    order_wait: float = 5.0  # how long a decision waits for an earlier serial's
    forward_timeout: float = 30.0  # bound on a push forwarded down the chain
    apply_timeout: float = 10.0  # bound on one prepare/decide the primary sends
    decision_wait: float = 1.0  # how long a read waits for an overlapping mutation's decision
    checkpoint_interval: float = 0.5  # how often committed data is synced to the chunk files

    def validate(self) -> ServiceConfig:
        if min(self.staging_ttl, self.order_wait, self.forward_timeout, self.apply_timeout,
               self.decision_wait, self.checkpoint_interval) <= 0:
            raise ValueError("chunk service timeouts must be positive")
        if self.staging_bytes < CHUNK_SIZE:
            raise ValueError(f"staging_bytes must hold at least one chunk ({CHUNK_SIZE})")
        return self


def _handle(value: int) -> ChunkHandle:
    try:
        return check_handle(value)
    except ValueError as exc:
        raise RemoteError(p.BAD_ARGS, str(exc)) from None


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
        self.runner = Runner(store)
        self._locks = self.runner.locks
        self.participant = Participant(self.runner, self.gate, order_wait=config.order_wait,
                                       decision_wait=config.decision_wait)
        self.primary = Primary(config.address, self.runner, self.gate, self.participant, peers,
                               self._set_version, call_timeout=config.apply_timeout)

    # -- background work ------------------------------------------------------

    async def run(self) -> None:
        """Report bad replicas, checkpoint committed data and expire staged data,
        until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._report_bad, name="bad-replica reporter")
            nursery.start_soon(self._checkpoints, name="checkpoints")
            while True:
                await trio.sleep(min(5.0, self.config.staging_ttl / 2))
                self.staging.expire(trio.current_time())

    async def _report_bad(self) -> None:
        async for handle in self.runner.bad_recv:
            for attempt in range(5):
                try:
                    with trio.fail_after(5):
                        await self.sink.bad_replica(self.config.server_id, handle)
                    break
                except Exception as exc:
                    log.info("reporting bad replica %d failed (%s), attempt %d",
                             handle, exc, attempt + 1)
                    await trio.sleep(0.5 * 2 ** attempt)

    async def _checkpoints(self) -> None:
        while True:
            await trio.sleep(self.config.checkpoint_interval)
            await self.checkpoint_all()

    async def checkpoint_all(self) -> int:
        """Sync every chunk file holding committed data not yet synced."""
        done = 0
        for handle, intents in self._applied().items():
            async with self._locks.hold(handle):
                try:
                    done += await self.runner.change(handle, self.store.checkpoint, handle)
                except RemoteError as exc:  # recovery redoes it after a restart
                    log.warning("checkpoint of chunk %d (%d intents) failed: %s", handle,
                                intents, exc)
        return done

    def _applied(self) -> dict[ChunkHandle, int]:
        out: dict[ChunkHandle, int] = {}
        for handle in self.store.intent_handles():
            n = sum(1 for i in self.store.intents(handle) if i.status is IntentStatus.APPLIED)
            if n:
                out[handle] = n
        return out

    # -- data push --------------------------------------------------------------

    @handles(p.ChunkPush)
    async def push(self, req: p.ChunkPush, ctx: CallContext) -> p.PushReply:
        origin = req.origin or ctx.peer.node_id
        check_range(req.part_offset, len(req.data))
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
        data = self._take(DataKey(ctx.peer.node_id, req.data_id))
        if data is None:
            raise RemoteError(p.NO_DATA, f"no staged data {req.data_id} from "
                                         f"{ctx.peer.node_id} (expired or never pushed)")
        check_range(req.offset, len(data))
        reply = await self.primary.mutate(ClientMutation(
            handle, req.version, req.token, list(req.secondaries), req.offset, data,
            ctx.peer.node_id, req.data_id))
        if not isinstance(reply, Finished):
            raise RemoteError(reply.code, reply.message)
        return p.WriteReply(reply.serial, list(reply.failed), reply.committed)

    @handles(p.ChunkAppend)
    async def append(self, req: p.ChunkAppend, ctx: CallContext) -> p.AppendReply:
        handle = _handle(req.handle)
        data = self._take(DataKey(ctx.peer.node_id, req.data_id))
        if data is None:
            raise RemoteError(p.NO_DATA, f"no staged data {req.data_id} from "
                                         f"{ctx.peer.node_id} (expired or never pushed)")
        if not 0 < len(data) <= p.MAX_RECORD:
            raise RemoteError(p.BAD_ARGS, f"a record is 1 to {p.MAX_RECORD} bytes, "
                                          f"not {len(data)}")
        appended = await self.primary.append(ClientMutation(
            handle, req.version, req.token, list(req.secondaries), 0, data,
            ctx.peer.node_id, req.data_id))
        if appended.full:
            return p.AppendReply(appended.offset, True, 0, [])
        reply = appended.reply
        if not isinstance(reply, Finished):
            raise RemoteError(reply.code, reply.message)
        return p.AppendReply(appended.offset, False, reply.serial, list(reply.failed),
                             reply.committed)

    @handles(p.ChunkTruncate)
    async def truncate(self, req: p.ChunkTruncate, ctx: CallContext) -> p.TruncateReply:
        handle = _handle(req.handle)
        check_range(req.length, 0)
        reply = await self.primary.mutate(ClientMutation(
            handle, req.version, req.token, list(req.secondaries), req.length, None,
            ctx.peer.node_id, 0))
        if not isinstance(reply, Finished):
            raise RemoteError(reply.code, reply.message)
        return p.TruncateReply(reply.serial, list(reply.failed), reply.committed)

    @handles(p.ChunkBegin)
    async def begin(self, req: p.ChunkBegin, ctx: CallContext) -> p.BeginReply:
        _handle(req.handle)
        return await self.primary.begin(req)

    @handles(p.ChunkSetVersion)
    async def set_version(self, req: p.ChunkSetVersion, ctx: CallContext) -> p.SetVersionReply:
        return await self._set_version(req)

    async def _set_version(self, req: p.ChunkSetVersion) -> p.SetVersionReply:
        handle = _handle(req.handle)
        async with self._locks.hold(handle):
            intents = self.store.intents(handle)
            state = position(self.store.state(handle), intents)
            if older_undecided(intents, req.token):
                # Raising it would make it readable at the new version before the
                # new primary settled the old mutation.
                raise RemoteError(p.IN_DOUBT, f"chunk {handle}: a mutation of an older "
                                              "lease is undecided here")
            d = self.gate.set_version(state, handle, req.version, req.token)
            if isinstance(d, Reject):
                raise reject(d)
            # The serial count keeps counting under the token it counts under.
            token = state.token if state is not None else d.token
            new = await self.runner.change(handle, self.store.set_version, handle,
                                           Mutation(d.version, token, d.serial))
        return p.SetVersionReply(new.version)

    # -- the two-phase commit at a replica ------------------------------------------

    @handles(p.ChunkPrepare)
    async def prepare(self, req: p.ChunkPrepare, ctx: CallContext) -> p.PrepareReply:
        _handle(req.handle)
        data = None if req.truncate else self._take(DataKey(req.origin, req.data_id))
        return await self.participant.prepare(req, data, primary=False)

    @handles(p.ChunkDecide)
    async def decide(self, req: p.ChunkDecide, ctx: CallContext) -> p.DecideReply:
        _handle(req.handle)
        with trio.CancelScope(shield=True):  # once taken, a decision is answered
            reply = await self.participant.decide(req, ctx.deadline)
        return reply

    @handles(p.ChunkIntents)
    async def intents(self, req: p.ChunkIntents, ctx: CallContext) -> p.IntentsReply:
        _handle(req.handle)
        return await self.participant.inquire(req)

    # -- reads and administration ---------------------------------------------------

    @handles(p.ChunkRead)
    async def read(self, req: p.ChunkRead, ctx: CallContext) -> p.ReadReply:
        handle = _handle(req.handle)
        check_range(req.offset, req.length)
        refused = self.gate.read(self.store.state(handle), handle, req.version)
        if refused is not None:
            raise reject(refused)
        await self.participant.readable(handle, req.offset, req.length, ctx.deadline)
        try:
            data = await trio.to_thread.run_sync(self.store.read, handle, req.offset, req.length)
        except (CorruptBlock, StoreError, ValueError):
            # Believe a mismatch only when no mutation can be half-way through.
            async with self._locks.hold(handle):
                refused = self.gate.read(self.store.state(handle), handle, req.version)
                if refused is not None:
                    raise reject(refused) from None
                data = await self.runner.call(self.store.read, handle, req.offset, req.length)
        return p.ReadReply(data)

    @handles(p.ChunkDelete)
    async def delete(self, req: p.ChunkDelete, ctx: CallContext) -> p.DeleteReply:
        deleted = []
        for value in req.handles:
            handle = _handle(value)
            async with self._locks.hold(handle):
                if await self.runner.change(handle, self.store.delete, handle):
                    deleted.append(handle)
                self._forget(handle)
        return p.DeleteReply(deleted)

    def _forget(self, handle: ChunkHandle) -> None:
        self.gate.forget(handle)
        self.primary.forget(handle)
        self.participant.forget(handle)

    def reported(self, handle: ChunkHandle) -> ReplicaState | None:
        """The replica as heartbeats report it: a replica that exists only as a
        prepared first mutation counts too (at length 0), so that the leader can
        order it deleted if no chunk map lists it here."""
        state = self.store.state(handle)
        if state is not None:
            return state
        intents = self.store.intents(handle)
        if not intents:
            return None
        first = intents[0]
        return ReplicaState(handle, first.version, 0, first.token, 0)

    async def delete_if_unchanged(self, handle: ChunkHandle,
                                  reported: ReplicaState | None) -> bool:
        """Delete the replica only if it is still exactly as `reported`."""
        async with self._locks.hold(handle):
            if reported is None or self.reported(handle) != reported:
                return False
            done = await self.runner.change(handle, self.store.delete, handle)
            self._forget(handle)
            return done

    @handles(p.ChunkStat)
    async def stat(self, req: p.ChunkStat, ctx: CallContext) -> p.StatReply:
        space = await self.runner.call(self.store.space)
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
            bad = await self.runner.call(self.store.verify, handle)
        if bad:
            self.runner.corrupt(CorruptBlock(handle, bad[0]))
        return p.ChecksumReply(state.version, state.length, bad)

    # -- heartbeat support ---------------------------------------------------------

    async def snapshot(self) -> tuple[int, int, dict[ChunkHandle, ReplicaState]]:
        """(capacity, free, replicas) for a heartbeat."""
        states: dict[ChunkHandle, ReplicaState] = {}
        for handle in {*self.store.states(), *self.store.intent_handles()}:
            st = self.reported(handle)
            if st is not None:
                states[handle] = st
        space = await self.runner.call(self.store.space)
        return space.capacity, space.free, states
