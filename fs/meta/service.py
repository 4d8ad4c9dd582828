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
* failure detection: every `meta.heartbeat` feeds the leader's detector
  (`Liveness`, coord.failure); the background task polls it every tick.
  Each suspicion and death is logged as a WARNING and each recovery as
  INFO, with the detector's reason; a suspected server gets no new chunks
  and no lease renewals, and is recorded dead only after `dead_after`
  seconds of silence (docs/fs-meta.md, "Failure detection");
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
from fs.meta.liveness import Died, Liveness, LivenessConfig, Recovered, Suspected
from fs.meta.liveness_protocol import LivenessQuery, LivenessReply
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
        self._addresses = client_addresses  # live: the member updates it on changes
        self._fs_config = (fs_config or FsConfig()).validate()
        self.liveness = Liveness(liveness)

    def routes(self, router: Router) -> None:
        router.add(FsSubmit, self.submit)
        router.add(FsRead, self.read)
        router.add(Heartbeat, self.heartbeat)
        router.add(BadReplica, self.bad_replica)
        router.add(ChunkServers, self.servers)
        router.add(LivenessQuery, self.liveness_view)

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
        self._lead(trio.current_time())

    def _lead(self, now: float) -> None:
        if self.liveness.lead(now):
            log.info("leading: chunk-server liveness starts empty; no server is suspected "
                     "for the first %.1f s (grace period)", self.liveness.config.grace)

    def _log_liveness(self) -> None:
        """Log what the failure detector concluded since the last call, with its reasons."""
        for event in self.liveness.take_events():
            if isinstance(event, Suspected):
                log.warning("chunk server %d suspected: %s", event.server, event.reason)
            elif isinstance(event, Died):
                log.warning("chunk server %d declared dead: %s", event.server, event.reason)
            elif isinstance(event, Recovered):
                log.info("chunk server %d recovered%s: %s", event.server,
                         " from dead" if event.was_dead else "", event.reason)

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
        self._lead(now)
        if self.liveness.grace_left(now) > 0:  # only then can a recorded server be waited for
            self.liveness.watch(self._recorded())
        if self.liveness.warming_up(now):
            self._log_liveness()
            raise _Redirect(BUSY, self._hint(self._driver.id))
        if isinstance(command, AllocChunk):
            decided: FsCommand = replace(
                command, placement=self.liveness.placement(now, self._fs_config.replicas))
        else:
            decided = replace(command, live=self.liveness.live(now))
        self._log_liveness()
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
            self._log_liveness()
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

    def _under_replicated(self, live: tuple[ServerId, ...]) -> int:
        result = self._ask(UnderReplicated(live, self._fs_config.replicas))
        return result.count if isinstance(result, CountResult) else 0

    async def servers(self, req: ChunkServers, ctx: CallContext) -> ChunkServersReply:
        try:
            self._require_leader()
        except _Redirect as r:
            return ChunkServersReply(r.status, r.leader)
        now, recorded = trio.current_time(), self._recorded()
        # Under-replicated means "a replica is on a server declared dead": a merely
        # suspected server still holds its replicas (they are at risk, not lost).
        count = self._under_replicated(self.liveness.holders(now, recorded))
        infos = tuple(self.liveness.info(now, recorded))
        self._log_liveness()
        return ChunkServersReply(OK, servers=infos, under_replicated=count)

    async def liveness_view(self, req: LivenessQuery, ctx: CallContext) -> LivenessReply:
        try:
            self._require_leader()
        except _Redirect as r:
            return LivenessReply(r.status, r.leader)
        now, recorded = trio.current_time(), self._recorded()
        config = self.liveness.config
        threshold = config.phi_threshold if config.detector == "phi" else config.suspect_after
        reply = LivenessReply(
            OK, detector=config.detector, threshold=threshold, dead_after=config.dead_after,
            grace_left=self.liveness.grace_left(now),
            servers=tuple(self.liveness.view(now, recorded)),
            under_replicated=self._under_replicated(self.liveness.holders(now, recorded)),
            at_risk=self._under_replicated(self.liveness.live(now)),
        )
        self._log_liveness()
        return reply

    # ------------------------------------------------------------------ background
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow leadership; as leader, poll the failure detector every tick and write
        chunk-server changes (new, dead, restored, free space) into the state."""
        task_status.started()
        while True:
            await trio.sleep(_TICK)
            if not self._driver.is_leader:
                if self.liveness.leading:
                    log.info("no longer the leader: chunk-server liveness view dropped")
                    self.liveness.step_down()
                continue
            now = trio.current_time()
            self._lead(now)
            recorded = self._recorded()
            updates = self.liveness.updates(now, recorded)
            self._log_liveness()
            await self._record(updates, recorded)

    async def _record(self, updates: list[ServerState],
                      recorded: Mapping[ServerId, ServerRec]) -> None:
        for update in updates:
            try:
                await self._leader_command(update)
            except (_Redirect, RemoteError) as exc:
                log.info("recording chunk server %d failed: %s", update.server, exc)
                return
            before = recorded.get(update.server)
            if before is not None and before.alive and not update.alive:
                log.warning("chunk server %d recorded dead; its replicas no longer count",
                            update.server)
            elif before is not None and not before.alive and update.alive:
                log.info("chunk server %d recorded alive again (restored)", update.server)
