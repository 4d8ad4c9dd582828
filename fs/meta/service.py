"""The file system's RPC edge on a metadata server: fs.submit, fs.read, meta.*.

Mirrors coord.kv.service: `fs.submit` carries a session body (the leader
stamps it with its wall clock and proposes it), `fs.read` a query served
after a ReadIndex barrier on any member, and every reply says where to go
when this member cannot serve (NOT_LEADER + leader, BUSY, LOST, UNAVAILABLE).

The leader's own decisions enter the log here and only here:

* placement and primary choice: before proposing `AllocChunk` or
  `AcquireLease`, the leader replaces the command's `placement`/`live` with
  its view of the live chunk servers (`Liveness`); while that view is still
  empty right after an election it answers BUSY instead of a false ENOSPC;
* chunk-server records: `ServerState` leader commands, proposed by the
  background task (`run`) when `Liveness.updates` finds a difference, and at
  once by a heartbeat from a server the state does not know yet;
* `meta.bad_replica` becomes a `DropReplica` leader command; the leader
  then raises the remaining replicas to the bumped version with
  `chunk.set_version` (best effort, fenced with the chunk's last token), so
  they stay readable at the map's version before the next write.

Heartbeat deletions are computed after a read barrier, so a handle whose
chunk was allocated (committed) before the report is never called garbage
by a leader that has not applied that allocation yet.

Invariant: a reply with status OK for `fs.submit` means the body was
committed and applied; any other status means it may or may not have been
(the client retries the same (client, seq), executed at most once).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Mapping
from dataclasses import replace

import trio

from coord.kv.codec import CodecError
from coord.kv.commands import (
    Body,
    ClientRequest,
    EndSession,
    ExtCommand,
    KeepAlive,
    LeaderCommand,
    RegisterClient,
    decode_body,
    stamp,
)
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.results import ExtResult, encode_result
from coord.lease.types import FencingToken
from coord.raft.driver import Busy, ProposalLost, RaftDriver, RaftUnavailable
from coord.raft.types import NodeId
from coord.rpc import CallContext, RemoteError, Router, RpcClient, RpcError
from fs.chunk.protocol import ChunkSetVersion
from fs.meta.commands import (
    LEADER_ONLY,
    AcquireLease,
    AllocChunk,
    ChunkInfo,
    DropReplica,
    FsCommand,
    FsQuery,
    Garbage,
    ListServers,
    ServerState,
    UnderReplicated,
    decode_command,
    decode_query,
    encode_command,
    encode_query,
)
from fs.meta.context import FsConfig
from fs.meta.liveness import Liveness, LivenessConfig
from fs.meta.protocol import (
    BUSY,
    FS_SPACE,
    LOST,
    NOT_LEADER,
    OK,
    UNAVAILABLE,
    BadReplica,
    BadReplicaReply,
    ChunkServers,
    ChunkServersReply,
    FsRead,
    FsReply,
    FsSubmit,
    Heartbeat,
    HeartbeatReply,
)
from fs.meta.results import (
    ChunkResult,
    CountResult,
    FsErr,
    FsResult,
    HandlesResult,
    LeaseResult,
    ServersResult,
    decode_result,
)
from fs.meta.state import ServerRec
from fs.types import ChunkHandle, ServerId

log = logging.getLogger(__name__)

_GARBAGE_BATCH = 4096  # handles judged per read transaction
_TICK = 0.5  # seconds between the leader's ServerState reconciliations
_SET_VERSION_TIMEOUT = 2.0  # seconds the leader spends telling replicas a new version


class _Redirect(Exception):
    def __init__(self, status: str, leader: str) -> None:
        super().__init__(status)
        self.status, self.leader = status, leader


class FsService:
    def __init__(
        self,
        driver: RaftDriver[Applied],
        fsm: KVStateMachine,
        client_addresses: Mapping[NodeId, str],
        *,
        fs_config: FsConfig | None = None,
        liveness: LivenessConfig | None = None,
        rpc: RpcClient | None = None,
    ) -> None:
        self._rpc = rpc  # for chunk.set_version after a drop; None: skip it
        self._driver = driver
        self._fsm = fsm
        self._addresses = dict(client_addresses)
        self._fs_config = (fs_config or FsConfig()).validate()
        self.liveness = Liveness(liveness)

    def routes(self, router: Router) -> None:
        router.add(FsSubmit, self.submit)
        router.add(FsRead, self.read)
        router.add(Heartbeat, self.heartbeat)
        router.add(BadReplica, self.bad_replica)
        router.add(ChunkServers, self.servers)

    # ------------------------------------------------------------------ helpers
    def _hint(self, leader: NodeId | None) -> str:
        return self._addresses.get(leader, "") if leader is not None else ""

    def _redirect(self, exc: RaftUnavailable) -> _Redirect:
        hint = self._hint(exc.leader)
        if isinstance(exc, Busy):
            return _Redirect(BUSY, hint)
        if isinstance(exc, ProposalLost):
            return _Redirect(LOST, hint)
        return _Redirect(NOT_LEADER if hint else UNAVAILABLE, hint)

    def _require_leader(self) -> None:
        if not self._driver.is_leader:
            hint = self._hint(self._driver.leader)
            raise _Redirect(NOT_LEADER if hint else UNAVAILABLE, hint)
        self.liveness.lead(trio.current_time())

    async def _propose(self, body: Body) -> Applied:
        try:
            applied = await self._driver.propose(stamp(body, time.time_ns() // 1_000_000))
        except RaftUnavailable as exc:
            raise self._redirect(exc) from None
        if applied.result is None:
            raise RemoteError("INTERNAL", f"entry {applied.index} produced no result")
        return applied

    async def _leader_command(self, command: FsCommand) -> FsResult:
        applied = await self._propose(LeaderCommand(ExtCommand(FS_SPACE, encode_command(command))))
        if not isinstance(applied.result, ExtResult):
            raise RemoteError("INTERNAL", f"leader command gave {applied.result}")
        return decode_result(applied.result.payload)

    def _ask(self, query: FsQuery) -> FsResult:
        # Synchronous LMDB read on the trio thread: opens and closes without an await.
        return decode_result(self._fsm.read_ext(FS_SPACE, encode_query(query)))

    async def _barrier(self) -> None:
        try:
            await self._driver.read_barrier()
        except RaftUnavailable as exc:
            raise self._redirect(exc) from None

    def _recorded(self) -> dict[ServerId, ServerRec]:
        result = self._ask(ListServers())
        assert isinstance(result, ServersResult)
        return {s.server: ServerRec(s.server, s.address, s.capacity, s.free, s.alive)
                for s in result.servers}

    # ------------------------------------------------------------------ fs.*
    def _with_decisions(self, body: Body) -> Body:
        """Check a client's body; fill in the leader's placement decisions."""
        if isinstance(body, RegisterClient | KeepAlive | EndSession):
            return body
        if not isinstance(body, ClientRequest) or not isinstance(body.command, ExtCommand) or (
            body.command.space != FS_SPACE
        ):
            raise RemoteError("BAD_COMMAND", "fs.submit takes session bodies with FS commands")
        try:
            command = decode_command(body.command.payload)
        except CodecError as exc:
            raise RemoteError("BAD_COMMAND", str(exc)) from None
        if isinstance(command, LEADER_ONLY):
            raise RemoteError("BAD_COMMAND", f"{type(command).__name__} is the leader's")
        if not isinstance(command, AllocChunk | AcquireLease) or not self._driver.is_leader:
            return body  # a follower's proposal fails with NOT_LEADER anyway
        now = trio.current_time()
        self.liveness.lead(now)
        if self.liveness.warming_up(now):
            raise _Redirect(BUSY, self._hint(self._driver.id))
        if isinstance(command, AllocChunk):
            decided: FsCommand = replace(
                command, placement=self.liveness.placement(now, self._fs_config.replicas))
        else:
            decided = replace(command, live=self.liveness.live(now))
        return replace(body, command=ExtCommand(FS_SPACE, encode_command(decided)))

    async def submit(self, req: FsSubmit, ctx: CallContext) -> FsReply:
        try:
            body = decode_body(req.body)
        except (CodecError, ValueError) as exc:
            raise RemoteError("BAD_COMMAND", str(exc)) from None
        try:
            applied = await self._propose(self._with_decisions(body))
        except _Redirect as r:
            return FsReply(r.status, leader=r.leader)
        assert applied.result is not None
        return FsReply(OK, encode_result(applied.result))

    async def read(self, req: FsRead, ctx: CallContext) -> FsReply:
        try:
            decode_query(req.query)
        except CodecError as exc:
            raise RemoteError("BAD_COMMAND", str(exc)) from None
        try:
            await self._barrier()
        except _Redirect as r:
            return FsReply(r.status, leader=r.leader)
        # The barrier returned once the index was applied; this read opens and
        # closes its LMDB transaction without an await.
        return FsReply(OK, self._fsm.read_ext(FS_SPACE, req.query))

    # ------------------------------------------------------------------ meta.*
    async def heartbeat(self, req: Heartbeat, ctx: CallContext) -> HeartbeatReply:
        try:
            self._require_leader()
            want_full = self.liveness.heartbeat(trio.current_time(), req)
            recorded = self._recorded().get(req.server)
            if recorded is None or recorded.address != req.address:
                # Record it now: chunk locations need its address from the next entry on.
                await self._leader_command(
                    ServerState(req.server, req.address, req.capacity, req.free, True))
            doomed = await self._garbage(req.server, tuple(h for h, _ in req.chunks))
        except _Redirect as r:
            return HeartbeatReply(r.status, r.leader)
        return HeartbeatReply(OK, delete=doomed, send_full=want_full)

    async def _garbage(
        self, server: ServerId, handles: tuple[ChunkHandle, ...]
    ) -> tuple[ChunkHandle, ...]:
        if not handles:
            return ()
        await self._barrier()
        doomed: list[ChunkHandle] = []
        for start in range(0, len(handles), _GARBAGE_BATCH):
            result = self._ask(Garbage(server, handles[start : start + _GARBAGE_BATCH]))
            assert isinstance(result, HandlesResult)
            doomed.extend(result.handles)
            await trio.lowlevel.checkpoint()  # let other calls run between batches
        return tuple(doomed)

    async def bad_replica(self, req: BadReplica, ctx: CallContext) -> BadReplicaReply:
        try:
            self._require_leader()
            log.warning("replica of chunk %d on server %d reported bad: %s",
                        req.handle, req.server, req.reason)
            result = await self._leader_command(DropReplica(req.handle, req.server))
        except _Redirect as r:
            return BadReplicaReply(r.status, r.leader)
        if isinstance(result, FsErr) and result.errno != errno.ENOENT:
            return BadReplicaReply(OK, errno=result.errno)
        if isinstance(result, ChunkResult):
            await self._push_version(req.handle)
        return BadReplicaReply(OK)

    async def _push_version(self, handle: ChunkHandle) -> None:
        """Tell the remaining replicas of `handle` its new version (bounded, best effort)."""
        info = self._ask(ChunkInfo(handle))
        if self._rpc is None or not isinstance(info, LeaseResult) or info.token == 0:
            return  # never leased: never written, nothing to read at any version
        rpc, loc = self._rpc, info.location
        msg = ChunkSetVersion(handle, loc.version, FencingToken(info.token))

        async def one(address: str) -> None:
            try:
                await rpc.call(address, msg, timeout=_SET_VERSION_TIMEOUT)
            except RpcError as exc:
                log.info("set_version %d on %s failed: %s", handle, address, exc)

        with trio.move_on_after(_SET_VERSION_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for _, address in loc.replicas:
                    if address:
                        nursery.start_soon(one, address)

    async def servers(self, req: ChunkServers, ctx: CallContext) -> ChunkServersReply:
        try:
            self._require_leader()
        except _Redirect as r:
            return ChunkServersReply(r.status, r.leader)
        now = trio.current_time()
        result = self._ask(UnderReplicated(self.liveness.live(now), self._fs_config.replicas))
        count = result.count if isinstance(result, CountResult) else 0
        return ChunkServersReply(OK, servers=tuple(self.liveness.info(now, self._recorded())),
                                 under_replicated=count)

    # ------------------------------------------------------------------ background
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow leadership; as leader, write chunk-server changes into the state."""
        task_status.started()
        while True:
            await trio.sleep(_TICK)
            if not self._driver.is_leader:
                if self.liveness.leading:
                    self.liveness.step_down()
                continue
            now = trio.current_time()
            self.liveness.lead(now)
            for update in self.liveness.updates(now, self._recorded()):
                try:
                    await self._leader_command(update)
                except (_Redirect, RemoteError) as exc:
                    log.info("recording chunk server %d failed: %s", update.server, exc)
                    break
