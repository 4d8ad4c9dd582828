"""The two-phase commit of chunk mutations in-process: three chunk services on a
memory network with in-memory stores.  A write commits on every replica or on
none; prepared data is never readable; decisions are taken in serial order;
a new (or restarted) primary settles what a dead one left undecided, the same
way on every replica, and fences the old one; a full disk aborts the write;
a write whose client went away still ends cleanly."""

from __future__ import annotations

import random
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from coord.lease import FencingToken
from coord.rpc import (
    ClientConfig,
    MemoryNetwork,
    RemoteError,
    Router,
    RpcClient,
    RpcServer,
    ServerConfig,
)
from fs.chunk import protocol as p
from fs.chunk.heartbeat import FakeMeta
from fs.chunk.intent import Intent
from fs.chunk.service import ChunkService, ServiceConfig
from fs.chunk.store import MemoryChunkStore, StoreIOError
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion, ServerId

SECRET = b"chunk-2pc-test"
CLIENT = 77
H = ChunkHandle(9)
V1, V2 = ChunkVersion(1), ChunkVersion(2)
T = FencingToken


class GatedStore(MemoryChunkStore):
    """A store whose prepares can be held up (a slow disk) or fail (a bad one)."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.gate = threading.Event()
        self.gate.set()
        self.broken = False

    def prepare(self, handle: ChunkHandle, intent: Intent, data: bytes) -> None:
        self.gate.wait(timeout=30)
        if self.broken:
            raise StoreIOError("the disk is gone")
        super().prepare(handle, intent, data)


@dataclass
class Node:
    address: str
    service: ChunkService
    store: GatedStore
    meta: FakeMeta


@dataclass
class Cluster:
    nodes: list[Node]
    client: RpcClient
    stack: AsyncExitStack
    net: MemoryNetwork
    next_id: list[int] = field(default_factory=lambda: [100])

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def node(self, address: str) -> Node:
        return next(n for n in self.nodes if n.address == address)

    async def push(self, data: bytes, chain: list[str] | None = None,
                   client: RpcClient | None = None) -> int:
        self.next_id[0] += 1
        data_id = self.next_id[0]
        chain = self.addresses if chain is None else chain
        await (client or self.client).call(chain[0], p.ChunkPush(data_id, data, chain[1:]))
        return data_id

    async def write(self, offset: int, data: bytes, *, token: int = 10,
                    version: ChunkVersion = V1, replicas: list[str] | None = None,
                    client: RpcClient | None = None) -> p.WriteReply:
        replicas = self.addresses if replicas is None else replicas
        data_id = await self.push(data, replicas, client)
        return await (client or self.client).call(replicas[0], p.ChunkWrite(
            H, version, T(token), data_id, offset, replicas[1:]))

    async def prepare_at(self, address: str, token: int, serial: int, offset: int,
                         data: bytes, version: ChunkVersion = V1, *,
                         primary: bool = False) -> None:
        """Act as an (old) primary: have one replica prepare a mutation (`primary`:
        the primary's own copy, which it prepares without a message)."""
        if primary:
            request = p.ChunkPrepare(H, version, T(token), serial, 0, offset, CLIENT)
            await self.node(address).service.participant.prepare(request, data, primary=True)
            return
        data_id = await self.push(data, [address])
        await self.client.call(address, p.ChunkPrepare(H, version, T(token), serial, data_id,
                                                       offset, CLIENT))

    async def decide_at(self, address: str, token: int, serial: int, commit: bool,
                        fence: int | None = None) -> p.DecideReply:
        return await self.client.call(address, p.ChunkDecide(
            H, T(token), serial, commit, T(fence or token), V1))


async def _node(net: MemoryNetwork, stack: AsyncExitStack, nursery: trio.Nursery, i: int,
                capacity: int) -> Node:
    peers = await stack.enter_async_context(
        RpcClient(ClientConfig(node_id=i, secret=SECRET, role="chunk", default_timeout=10), net))
    store, meta = GatedStore(capacity), FakeMeta()
    service = ChunkService(ServiceConfig(ServerId(i), f"c{i}", order_wait=0.5,
                                         decision_wait=0.3, apply_timeout=2.0),
                           store, peers, meta)
    server = RpcServer(ServerConfig(node_id=i, secret=SECRET, role="chunk"),
                       Router().include(service))
    await nursery.start(server.serve, [net.listen(f"c{i}")])
    nursery.start_soon(service.run)
    return Node(f"c{i}", service, store, meta)


@asynccontextmanager
async def cluster(capacities: tuple[int, ...] = (1 << 40,) * 3) -> AsyncIterator[Cluster]:
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        try:
            async with AsyncExitStack() as stack:
                nodes = [await _node(net, stack, nursery, i, cap)
                         for i, cap in enumerate(capacities, start=1)]
                client = await stack.enter_async_context(RpcClient(
                    ClientConfig(node_id=CLIENT, secret=SECRET, default_timeout=10), net))
                yield Cluster(nodes, client, stack, net)
        finally:
            for n in nodes:
                n.store.gate.set()
            nursery.cancel_scope.cancel()


def content(node: Node) -> bytes | None:
    st = node.store.state(H)
    return None if st is None else node.store.read(H, 0, st.length)


def undecided(node: Node) -> list[Intent]:
    return [i for i in node.store.intents(H) if i.undecided]


async def read(c: Cluster, address: str, offset: int, length: int,
               version: ChunkVersion = V1) -> bytes:
    return (await c.client.call(address, p.ChunkRead(H, version, offset, length))).data


# ---- one primary -------------------------------------------------------------------


async def test_a_write_commits_on_every_replica_and_leaves_nothing_prepared() -> None:
    async with cluster() as c:
        r1 = await c.write(0, b"hello world")
        r2 = await c.write(6, b"WORLD")
        assert (r1.serial, r1.failed, r1.committed) == (1, [], True)
        assert (r2.serial, r2.committed) == (2, True)
        for n in c.nodes:
            assert content(n) == b"hello WORLD"
            st = n.store.state(H)
            assert st is not None and (st.token, st.serial) == (10, 2)
            assert n.store.intents(H) == [] and n.service.staging.bytes_used == 0


async def test_a_replica_that_cannot_prepare_aborts_the_write_everywhere() -> None:
    async with cluster() as c:
        await c.write(0, b"before")
        c.node("c3").store.broken = True  # its disk fails
        reply = await c.write(0, b"during")
        assert (reply.serial, reply.failed, reply.committed) == (2, ["c3"], False)
        for n in c.nodes:  # nothing changed anywhere, nothing left undecided
            assert content(n) == b"before" and undecided(n) == []
        assert c.node("c2").store.aborted(H) == [2]
        # The client drops c3 and writes again without it.
        reply = await c.write(0, b"after!", replicas=["c1", "c2"])
        assert reply.committed and reply.failed == []
        assert content(c.node("c1")) == content(c.node("c2")) == b"after!"
        # c3 never heard of serial 3, so it cannot take serial 4 either: named again.
        c.node("c3").store.broken = False
        reply = await c.write(0, b"again", replicas=["c1", "c2", "c3"])
        assert (reply.failed, reply.committed) == (["c3"], True)
        assert content(c.node("c3")) == b"before"


async def test_a_replica_without_the_pushed_data_is_not_blamed() -> None:
    async with cluster() as c:
        data_id = await c.push(b"data", chain=["c1", "c2"])  # c3's copy expired, say
        with pytest.raises(RemoteError) as info:
            await c.client.call("c1", p.ChunkWrite(H, V1, T(10), data_id, 0, ["c2", "c3"]))
        assert info.value.code == p.NO_DATA  # push again; nobody is reported
        assert all(undecided(n) == [] and content(n) is None for n in c.nodes)
        assert (await c.write(0, b"data")).committed


async def test_a_full_disk_on_a_secondary_fails_the_write_with_enospc() -> None:
    async with cluster(capacities=(1 << 40, 1 << 40, 3000)) as c:
        await c.write(0, b"x" * 1000)
        with pytest.raises(RemoteError) as info:
            await c.write(1000, b"y" * 5000)
        assert info.value.code == p.ENOSPC
        for n in c.nodes:  # aborted: no replica has any of it
            assert content(n) == b"x" * 1000 and undecided(n) == []
        c.node("c3").store.capacity = 1 << 40  # space freed
        assert (await c.write(1000, b"y" * 5000)).committed
        assert all(content(n) == b"x" * 1000 + b"y" * 5000 for n in c.nodes)


async def test_concurrent_overlapping_writers_leave_identical_replicas() -> None:
    async with cluster() as c:
        clients = [c.client] + [
            await c.stack.enter_async_context(RpcClient(
                ClientConfig(node_id=78 + k, secret=SECRET, default_timeout=10), c.net))
            for k in range(2)]
        rng = random.Random(11)
        jobs = [(rng.randrange(0, 3 * BLOCK_SIZE), bytes([k]) * rng.randrange(1, 2 * BLOCK_SIZE),
                 clients[k % 3]) for k in range(1, 25)]
        serials: list[int] = []

        async def one(offset: int, data: bytes, client: RpcClient) -> None:
            reply = await c.write(offset, data, client=client)
            assert reply.committed and reply.failed == []
            serials.append(reply.serial)

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(one, *job)
        assert sorted(serials) == list(range(1, 25))
        first = content(c.nodes[0])
        assert all(content(n) == first for n in c.nodes[1:])
        assert all(n.store.verify(H) == [] and undecided(n) == [] for n in c.nodes)


async def test_truncate_is_committed_like_a_write() -> None:
    async with cluster() as c:
        await c.write(0, b"0123456789")
        reply = await c.client.call("c1", p.ChunkTruncate(H, V1, T(10), 4, ["c2", "c3"]))
        assert (reply.serial, reply.failed, reply.committed) == (2, [], True)
        assert all(content(n) == b"0123" for n in c.nodes)


async def test_a_write_abandoned_by_its_client_still_ends_cleanly() -> None:
    async with cluster() as c:
        await c.write(0, b"old")
        c.node("c3").store.gate.clear()  # c3's disk hangs in the prepare
        data_id = await c.push(b"new")
        with trio.move_on_after(0.3) as scope:  # the client gives up and goes away
            await c.client.call("c1", p.ChunkWrite(H, V1, T(10), data_id, 0, ["c2", "c3"]))
        assert scope.cancelled_caught
        c.node("c3").store.gate.set()
        with trio.fail_after(10):  # the primary finishes the round on its own
            while any(undecided(n) for n in c.nodes):
                await trio.sleep(0.02)
        assert len({content(n) for n in c.nodes}) == 1  # committed everywhere, or nowhere


# ---- reads ---------------------------------------------------------------------------


async def test_prepared_data_is_never_readable() -> None:
    async with cluster() as c:
        await c.write(0, b"A" * 100)
        await c.prepare_at("c2", 11, 1, 50, b"B" * 100)  # an old primary's prepare
        assert await read(c, "c2", 0, 50) == b"A" * 50  # not overlapping: at once
        with trio.fail_after(5), pytest.raises(RemoteError) as info:
            await read(c, "c2", 0, 100)  # overlapping: waits, then refuses
        assert info.value.code == p.IN_DOUBT
        assert p.IN_DOUBT in p.RETRY_ELSEWHERE
        await c.decide_at("c2", 11, 1, commit=True)
        assert await read(c, "c2", 0, 200) == b"A" * 50 + b"B" * 100


async def test_a_read_waits_for_the_decision_on_what_it_overlaps() -> None:
    async with cluster() as c:
        await c.write(0, b"A" * 100)
        await c.prepare_at("c2", 11, 1, 0, b"B" * 100)
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await read(c, "c2", 0, 100))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(0.05)
            assert got == []  # held back
            await c.decide_at("c2", 11, 1, commit=True)
        assert got == [b"B" * 100]  # the committed bytes, never the old ones after


async def test_decisions_are_taken_in_serial_order() -> None:
    async with cluster() as c:
        await c.prepare_at("c2", 11, 1, 0, b"AAAA")
        await c.prepare_at("c2", 11, 2, 0, b"BB")  # prepares may come in any order
        order: list[int] = []

        async def decide(serial: int, delay: float) -> None:
            await trio.sleep(delay)
            await c.decide_at("c2", 11, serial, commit=True)
            order.append(serial)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(decide, 2, 0.0)  # arrives first, waits for 1
            nursery.start_soon(decide, 1, 0.1)
        assert order == [1, 2] and content(c.node("c2")) == b"BBAA"
        with pytest.raises(RemoteError) as info:  # serial 3 never comes: 4 gives up
            await c.decide_at("c2", 11, 4, commit=False)
        assert info.value.code == p.OUT_OF_ORDER


# ---- a new primary settles what the old one left ----------------------------------------


async def _dead_primary(c: Cluster, committed_at: list[str]) -> None:
    """c1 (token 10) wrote "old", prepared "new" everywhere, committed it only at
    `committed_at`, and died."""
    await c.write(0, b"old", token=10)
    for n in c.addresses:
        await c.prepare_at(n, 10, 2, 0, b"new", primary=n == "c1")
    for n in committed_at:
        await c.decide_at(n, 10, 2, commit=True)


async def test_a_new_primary_commits_what_the_dead_one_committed_somewhere() -> None:
    async with cluster() as c:
        await _dead_primary(c, committed_at=["c3"])
        # c2 is granted a new lease (token 11, version 2) and begins it.
        reply = await c.client.call("c2", p.ChunkBegin(H, V2, T(11), ["c1", "c3"]))
        assert (reply.failed, reply.resolved, reply.version) == ([], 1, 2)
        for n in c.nodes:
            assert content(n) == b"new" and undecided(n) == []
            assert await read(c, n.address, 0, 10, V2) == b"new"
        # The dead primary's messages are fenced everywhere from now on.
        for a in c.addresses:
            with pytest.raises(RemoteError) as info:
                await c.decide_at(a, 10, 3, commit=False)
            assert info.value.code == p.STALE_TOKEN
        assert (await c.write(0, b"NEW", token=11, version=V2,
                              replicas=["c2", "c1", "c3"])).serial == 1


async def test_a_new_primary_aborts_what_nobody_committed() -> None:
    async with cluster() as c:
        await _dead_primary(c, committed_at=[])
        for n in c.addresses:  # every replica holds it undecided: reads wait
            with pytest.raises(RemoteError) as info:
                await read(c, n, 0, 3)
            assert info.value.code == p.IN_DOUBT
        # A write under the new token settles first, even without `begin`.
        reply = await c.write(3, b"+", token=11, version=V2, replicas=["c2", "c1", "c3"])
        assert reply.committed and reply.failed == []
        assert all(content(n) == b"old+" and undecided(n) == [] for n in c.nodes)


async def test_settling_needs_every_replica_and_reports_a_silent_one() -> None:
    async with cluster() as c:
        await _dead_primary(c, committed_at=[])
        reply = await c.client.call("c2", p.ChunkBegin(H, V2, T(11), ["c1", "nowhere:1"]))
        assert reply.failed == ["nowhere:1"] and reply.resolved == 0
        assert all(undecided(c.node(a)) for a in ("c1", "c2"))  # nothing decided yet
        # Without it (the client dropped it), the settling goes through.
        reply = await c.client.call("c2", p.ChunkBegin(H, V2, T(11), ["c1"]))
        assert (reply.failed, reply.resolved) == ([], 1)
        assert content(c.node("c1")) == content(c.node("c2")) == b"old"


async def test_a_restarted_primary_settles_its_own_token_first() -> None:
    async with cluster() as c:
        await c.write(0, b"old", token=10)
        c.node("c1").service.primary.forget(H)  # as after a restart: its book is gone
        for a in ("c2", "c3"):  # serial 2 reached the secondaries, never its own disk
            await c.prepare_at(a, 10, 2, 0, b"lost")
        reply = await c.write(0, b"kept", token=10)
        assert (reply.serial, reply.committed) == (3, True)
        for node in c.nodes:
            assert content(node) == b"kept" and undecided(node) == []
            assert node.store.aborted(H) == [2]


async def test_a_replica_raises_its_version_only_once_settled() -> None:
    async with cluster() as c:
        await c.write(0, b"old")
        await c.prepare_at("c2", 10, 2, 0, b"new")
        with pytest.raises(RemoteError) as info:
            await c.client.call("c2", p.ChunkSetVersion(H, V2, T(11)))
        assert info.value.code == p.IN_DOUBT  # it would become readable, undecided


async def test_a_replica_known_only_by_its_prepare_is_reported_for_garbage() -> None:
    async with cluster() as c:
        await c.prepare_at("c3", 10, 1, 0, b"first write, never decided")
        node = c.node("c3")
        _, _, states = await node.service.snapshot()
        assert states[H].length == 0 and states[H].version == 1
        assert await node.service.delete_if_unchanged(H, states[H])
        assert node.store.intents(H) == [] and node.store.state(H) is None
