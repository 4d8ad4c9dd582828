"""FsService on three in-process Raft members (memory stores and transport), its
handlers called directly: redirects, refusals, the leader's placement decisions,
heartbeat garbage, bad replicas and the recording of dead chunk servers.

Real trio clock: the driver applies entries in worker threads, and a mock
clock that jumps while a thread works would fire elections and liveness
timeouts that real time never would."""

from __future__ import annotations

import errno
import math
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio

from coord.kv.commands import (
    ClientRequest,
    ExtCommand,
    LeaderCommand,
    RegisterClient,
    encode_body,
)
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.results import ExtResult, RegisterResult, decode_result
from coord.kv.service import KvService, KvSubmit
from coord.kv.types import ClientId, SeqNo
from coord.lease.types import FencingToken
from coord.raft.config import RaftConfig
from coord.raft.driver import RaftDriver, RaftUnavailable
from coord.raft.messages import Message
from coord.raft.storage import MemoryRaftStorage
from coord.raft.types import NodeId
from coord.rpc import (
    CallContext,
    MemoryNetwork,
    PeerInfo,
    RemoteError,
    Router,
    RpcClient,
    RpcServer,
)
from fs.chunk.protocol import ChunkSetVersion, SetVersionReply
from fs.meta import commands as c
from fs.meta.client import MetaClient
from fs.meta.liveness import LivenessConfig
from fs.meta.machine import memory_meta_store, meta_machine
from fs.meta.protocol import (
    BUSY,
    FS_SPACE,
    NOT_LEADER,
    OK,
    BadReplica,
    ChunkServers,
    FsRead,
    FsSubmit,
    Heartbeat,
)
from fs.meta.results import AttrResult, ChunkResult, ChunksResult, LeaseResult, ServersResult
from fs.meta.results import decode_result as decode_fs
from fs.meta.service import FsService
from fs.types import (
    ROOT_CRED,
    ROOT_INODE,
    ChunkHandle,
    ChunkVersion,
    FsError,
    InodeId,
    ServerId,
)
from tests.unit.test_rpc_common import client_config, server_config

RAFT = RaftConfig(election_timeout_min=0.3, election_timeout_max=0.6, heartbeat_interval=0.05)
IDS = [NodeId(1), NodeId(2), NodeId(3)]
ADDRESSES = {i: f"meta{i}:1" for i in IDS}
CTX = CallContext(PeerInfo(99, "test"), "test", 1, 0, None, math.inf)
GiB = 1 << 30


class _Link:
    def __init__(self, drivers: dict[NodeId, RaftDriver[Applied]], me: NodeId) -> None:
        self.drivers, self.me = drivers, me

    async def send(self, peer: NodeId, messages: Sequence[Message]) -> None:
        await trio.sleep(0.001)
        self.drivers[peer].deliver(messages)


class Member:
    def __init__(
        self, node: NodeId, drivers: dict[NodeId, RaftDriver[Applied]], rpc: RpcClient
    ) -> None:
        self.fsm: KVStateMachine = meta_machine(memory_meta_store())
        self.driver: RaftDriver[Applied] = RaftDriver(
            node, IDS, RAFT, MemoryRaftStorage(), self.fsm, _Link(drivers, node),
            rng=random.Random(node),
        )
        drivers[node] = self.driver
        self.fs = FsService(self.driver, self.fsm, ADDRESSES, liveness=LivenessConfig(
            detector="timeout", suspect_after=0.5, dead_after=1.0, grace=0.5), rpc=rpc)


class ChunkServersTwin:
    """Pretend chunk servers cs1..cs3 that record the chunk.set_version calls they get."""

    def __init__(self) -> None:
        self.net = MemoryNetwork()
        self.set_versions: list[tuple[str, ChunkSetVersion]] = []

    def router(self, address: str) -> Router:
        router = Router()

        def set_version(req: ChunkSetVersion, ctx: CallContext) -> SetVersionReply:
            self.set_versions.append((address, req))
            return SetVersionReply(req.version)

        router.add(ChunkSetVersion, set_version)
        return router


@asynccontextmanager
async def cluster(
    chunk_servers: ChunkServersTwin | None = None,
) -> AsyncIterator[dict[NodeId, Member]]:
    twin = chunk_servers or ChunkServersTwin()
    drivers: dict[NodeId, RaftDriver[Applied]] = {}
    async with trio.open_nursery() as nursery, RpcClient(client_config(), twin.net) as rpc:
        for sid in (1, 2, 3):
            server = RpcServer(server_config(), twin.router(f"cs{sid}:1"))
            await nursery.start(server.serve, [twin.net.listen(f"cs{sid}:1")])
        members = {i: Member(i, drivers, rpc) for i in IDS}
        for m in members.values():
            await nursery.start(m.driver.run)
            await nursery.start(m.fs.run)
        yield members
        nursery.cancel_scope.cancel()


async def _leader(members: dict[NodeId, Member]) -> Member:
    with trio.fail_after(10):
        while True:
            leaders = [m for m in members.values() if m.driver.is_leader]
            if len(leaders) == 1:
                try:
                    await leaders[0].driver.read_barrier()  # its term's entry is applied
                    return leaders[0]
                except RaftUnavailable:
                    pass  # it has only just noticed its own election: ask again
            await trio.sleep(0.02)


async def _session(m: Member) -> ClientId:
    reply = await m.fs.submit(FsSubmit(encode_body(RegisterClient())), CTX)
    result = decode_result(reply.result)
    assert isinstance(result, RegisterResult)
    return result.client_id


async def _run(m: Member, cid: ClientId, seq: int, command: c.FsCommand) -> object:
    body = ClientRequest(cid, SeqNo(seq), SeqNo(seq - 1),
                         ExtCommand(FS_SPACE, c.encode_command(command)))
    reply = await m.fs.submit(FsSubmit(encode_body(body)), CTX)
    if reply.status != OK:
        return reply.status
    result = decode_result(reply.result)
    assert isinstance(result, ExtResult), result
    return decode_fs(result.payload)


async def _create(m: Member, cid: ClientId) -> InodeId:
    """Create and open /f as request 1 of the session."""
    result = await _run(m, cid, 1, c.Create(ROOT_INODE, b"f", 0o644, 2, ROOT_CRED))
    assert isinstance(result, AttrResult)
    return result.attr.inode


def _hb(sid: int, free: int, chunks: tuple[tuple[int, int], ...] = ()) -> Heartbeat:
    return Heartbeat(ServerId(sid), f"cs{sid}:1", 100 * GiB, free * GiB,
                     tuple((ChunkHandle(h), ChunkVersion(v)) for h, v in chunks), True)


async def test_followers_redirect_and_the_leader_refuses_its_own_commands() -> None:
    async with cluster() as members:
        leader = await _leader(members)
        follower = next(m for m in members.values() if m is not leader)
        reply = await follower.fs.submit(FsSubmit(encode_body(RegisterClient())), CTX)
        assert reply.status == NOT_LEADER and reply.leader == ADDRESSES[leader.driver.id]
        hb = await follower.fs.heartbeat(_hb(1, 5), CTX)
        assert hb.status == NOT_LEADER and hb.leader == ADDRESSES[leader.driver.id]
        state = c.ServerState(ServerId(1), "x:1", 1, 1, True)
        forged = LeaderCommand(ExtCommand(FS_SPACE, c.encode_command(state)))
        with pytest.raises(RemoteError):
            await leader.fs.submit(FsSubmit(encode_body(forged)), CTX)
        cid = await _session(leader)
        with pytest.raises(RemoteError):
            await _run(leader, cid, 1, state)
        kv = KvService(leader.driver, leader.fsm, ADDRESSES)
        ext = ClientRequest(cid, SeqNo(1), SeqNo(0), ExtCommand(FS_SPACE, b""))
        with pytest.raises(RemoteError):
            await kv.submit(KvSubmit(encode_body(ext)), CTX)


async def test_placement_waits_for_heartbeats_then_follows_free_space() -> None:
    async with cluster() as members:
        leader = await _leader(members)
        cid = await _session(leader)
        ino = await _create(leader, cid)
        assert await _run(leader, cid, 2, c.AllocChunk(ino, 0)) == BUSY  # warming up
        for sid, free in ((1, 10), (2, 30), (3, 20), (4, 5)):
            assert (await leader.fs.heartbeat(_hb(sid, free), CTX)).status == OK
        loc = await _run(leader, cid, 2, c.AllocChunk(ino, 0, (ServerId(4),)))  # overridden
        assert isinstance(loc, ChunkResult)
        assert [s for s, _ in loc.location.replicas] == [2, 3, 1]
        assert loc.location.replicas[0] == (ServerId(2), "cs2:1")
        follower = next(m for m in members.values() if m is not leader)
        read = await follower.fs.read(FsRead(c.encode_query(c.ChunkLocations(ino, 0, 1))), CTX)
        assert read.status == OK and decode_fs(read.result) == ChunksResult((loc.location,))


async def test_heartbeats_get_garbage_and_bad_replicas_are_dropped() -> None:
    twin = ChunkServersTwin()
    async with cluster(twin) as members:
        leader = await _leader(members)
        cid = await _session(leader)
        ino = await _create(leader, cid)
        for sid in (1, 2):
            await leader.fs.heartbeat(_hb(sid, 10), CTX)
        loc = await _run(leader, cid, 2, c.AllocChunk(ino, 0))
        assert isinstance(loc, ChunkResult)
        handle = loc.location.handle
        reply = await leader.fs.heartbeat(_hb(1, 10, ((handle, 1), (4242, 1))), CTX)
        assert reply.delete == (ChunkHandle(4242),) and not reply.send_full
        lease = await _run(leader, cid, 3, c.AcquireLease(ino, 0))
        assert isinstance(lease, LeaseResult) and lease.location.version == 2
        bad = await leader.fs.bad_replica(BadReplica(handle, ServerId(2), "crc"), CTX)
        assert (bad.status, bad.errno) == (OK, 0)
        # The survivor is raised to the bumped version, fenced with the lease's token.
        assert twin.set_versions == [
            ("cs1:1", ChunkSetVersion(handle, ChunkVersion(3), FencingToken(lease.token)))]
        last = await leader.fs.bad_replica(BadReplica(handle, ServerId(1), "crc"), CTX)
        assert (last.status, last.errno) == (OK, 5)  # EIO: the last replica stays
        reply = await leader.fs.heartbeat(_hb(2, 10, ((handle, 1),)), CTX)
        assert reply.delete == (handle,)  # dropped: its copy is garbage now


async def test_the_leader_records_silent_servers_as_dead() -> None:
    async with cluster() as members:
        leader = await _leader(members)
        await leader.fs.heartbeat(_hb(1, 10), CTX)
        await leader.fs.heartbeat(_hb(2, 10), CTX)
        for _ in range(20):  # 2 s: server 2 is silent for twice its dead timeout
            await leader.fs.heartbeat(_hb(1, 10), CTX)
            await trio.sleep(0.1)
        recorded = decode_fs(leader.fsm.read_ext(FS_SPACE, c.encode_query(c.ListServers())))
        assert isinstance(recorded, ServersResult)
        assert [(s.server, s.alive) for s in recorded.servers] == [(1, True), (2, False)]
        view = await leader.fs.servers(ChunkServers(), CTX)
        assert [(s.server, s.alive) for s in view.servers] == [(1, True), (2, False)]


async def test_meta_client_fails_with_etimedout_when_no_member_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()  # nobody listens: every connect is refused
    async with RpcClient(client_config(), net) as rpc:
        meta = MetaClient(rpc, ["meta1:1", "meta2:1"], timeout=3.0)
        start = trio.current_time()
        with pytest.raises(FsError) as failed:
            await meta.open()
        assert failed.value.errno == errno.ETIMEDOUT
        assert trio.current_time() - start <= 3.0 + 0.5  # within the bound, never hangs
        with pytest.raises(FsError) as no_session:
            await meta.mkdir(ROOT_INODE, b"d", 0o755, ROOT_CRED)
        assert no_session.value.errno == errno.EIO
        assert meta.retries > 3
