"""The chunk service in-process: three servers on a memory network with
in-memory stores and a fake metadata leader.  The write protocol end to end:
push chain, primary ordering, secondaries in serial order, fencing,
versions, checksums, heartbeats."""

from __future__ import annotations

import random
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
from fs.chunk.heartbeat import FakeMeta, Reporter, beat_once
from fs.chunk.service import ChunkService, ServiceConfig
from fs.chunk.staging import DataKey
from fs.chunk.store import MemoryChunkStore
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion, ServerId

SECRET = b"chunk-service-test"
CLIENT_ID = 77
H = ChunkHandle(5)
V1, V2 = ChunkVersion(1), ChunkVersion(2)
T = FencingToken


@dataclass
class Node:
    address: str
    service: ChunkService
    store: MemoryChunkStore
    meta: FakeMeta


@dataclass
class Cluster:
    net: MemoryNetwork
    nodes: list[Node]
    client: RpcClient
    stack: AsyncExitStack
    nursery: trio.Nursery
    next_id: list[int] = field(default_factory=lambda: [0])

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    async def new_client(self, node_id: int) -> RpcClient:
        return await self.stack.enter_async_context(
            RpcClient(ClientConfig(node_id=node_id, secret=SECRET, default_timeout=10), self.net))

    async def push(self, data: bytes, client: RpcClient | None = None,
                   chain: list[str] | None = None) -> int:
        self.next_id[0] += 1
        data_id = self.next_id[0]
        chain = self.addresses if chain is None else chain
        reply = await (client or self.client).call(
            chain[0], p.ChunkPush(data_id, data, chain[1:]))
        assert reply.stored == chain[1:]
        return data_id

    async def write(self, offset: int, data: bytes, *, token: int = 10,
                    version: ChunkVersion = V1, client: RpcClient | None = None) -> p.WriteReply:
        data_id = await self.push(data, client)
        return await (client or self.client).call(self.addresses[0], p.ChunkWrite(
            H, version, T(token), data_id, offset, self.addresses[1:]))


async def _node(net: MemoryNetwork, stack: AsyncExitStack, nursery: trio.Nursery, i: int,
                order_wait: float, capacity: int) -> Node:
    peers = await stack.enter_async_context(
        RpcClient(ClientConfig(node_id=i, secret=SECRET, role="chunk", default_timeout=10), net))
    store, meta = MemoryChunkStore(capacity), FakeMeta()
    service = ChunkService(ServiceConfig(ServerId(i), f"c{i}", order_wait=order_wait),
                           store, peers, meta)
    server = RpcServer(ServerConfig(node_id=i, secret=SECRET, role="chunk"),
                       Router().include(service))
    await nursery.start(server.serve, [net.listen(f"c{i}")])
    nursery.start_soon(service.run)
    return Node(f"c{i}", service, store, meta)


@asynccontextmanager
async def cluster(n: int = 3, order_wait: float = 2.0,
                  capacity: int = 1 << 40) -> AsyncIterator[Cluster]:
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        try:
            # The clients' own tasks end (stack) before the servers' (nursery).
            async with AsyncExitStack() as stack:
                nodes = [await _node(net, stack, nursery, i, order_wait, capacity)
                         for i in range(1, n + 1)]
                client = await stack.enter_async_context(RpcClient(
                    ClientConfig(node_id=CLIENT_ID, secret=SECRET, default_timeout=10), net))
                yield Cluster(net, nodes, client, stack, nursery)
        finally:
            nursery.cancel_scope.cancel()


def content(node: Node, handle: ChunkHandle = H) -> bytes:
    st = node.store.state(handle)
    assert st is not None
    return node.store.read(handle, 0, st.length)


async def test_push_reaches_every_server_of_the_chain() -> None:
    async with cluster() as c:
        data_id = await c.push(b"payload")
        for node in c.nodes:
            assert DataKey(CLIENT_ID, data_id) in node.service.staging


async def test_push_skips_an_unreachable_server() -> None:
    async with cluster() as c:
        reply = await c.client.call("c1", p.ChunkPush(1, b"x", ["nowhere", "c3"]))
        assert reply.stored == ["c3"]
        assert DataKey(CLIENT_ID, 1) in c.nodes[2].service.staging


async def test_write_applies_on_all_replicas_with_serials() -> None:
    async with cluster() as c:
        r1 = await c.write(0, b"hello world")
        r2 = await c.write(6, b"WORLD", )
        assert (r1.serial, r2.serial) == (1, 2) and r1.failed == r2.failed == []
        for node in c.nodes:
            assert content(node) == b"hello WORLD"
            st = node.store.state(H)
            assert st is not None and (st.serial, st.token) == (2, 10)
            assert node.service.staging.bytes_used == 0  # consumed everywhere


async def test_concurrent_writers_leave_replicas_byte_identical() -> None:
    async with cluster() as c:
        clients = [c.client, await c.new_client(78), await c.new_client(79)]
        rng = random.Random(7)
        jobs = [(rng.randrange(0, 3 * BLOCK_SIZE), bytes([k]) * rng.randrange(1, 2 * BLOCK_SIZE),
                 clients[k % 3]) for k in range(1, 31)]
        serials: list[int] = []

        async def one(offset: int, data: bytes, client: RpcClient) -> None:
            reply = await c.write(offset, data, client=client)
            assert reply.failed == []
            serials.append(reply.serial)

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(one, *job)
        assert sorted(serials) == list(range(1, 31))
        first = content(c.nodes[0])
        assert all(content(n) == first for n in c.nodes[1:])
        assert all(n.store.verify(H) == [] for n in c.nodes)


async def test_stale_token_is_rejected_after_a_newer_one() -> None:
    async with cluster() as c:
        await c.write(0, b"new lease", token=8)
        with pytest.raises(RemoteError) as e:
            await c.write(0, b"deposed primary", token=7)
        assert e.value.code == p.STALE_TOKEN
        # A secondary fences the deposed primary too, even if asked directly.
        data_id = await c.push(b"sneaky")
        with pytest.raises(RemoteError) as e:
            await c.nodes[0].service.peers.call("c2", p.ChunkPrepare(
                H, V1, T(7), 2, data_id, 0, CLIENT_ID))
        assert e.value.code == p.STALE_TOKEN
        assert all(content(n) == b"new lease" for n in c.nodes)


async def test_version_adoption_and_stale_version() -> None:
    async with cluster() as c:
        await c.write(0, b"v1 data", version=V1, token=10)
        await c.write(0, b"V2", version=V2, token=11)  # a new lease bumped the version
        for node in c.nodes:
            st = node.store.state(H)
            assert st is not None and st.version == 2
        with pytest.raises(RemoteError) as e:
            await c.write(0, b"old", version=V1, token=11)
        assert e.value.code == p.STALE_VERSION
        reply = await c.client.call("c2", p.ChunkRead(H, V2, 0, 100))
        assert reply.data == b"V2 data"
        with pytest.raises(RemoteError) as e:
            await c.client.call("c2", p.ChunkRead(H, V1, 0, 100))
        assert e.value.code == p.STALE_VERSION and p.replica_version_of(e.value.message) == 2


async def test_stale_replica_read_refused() -> None:
    async with cluster() as c:
        await c.write(0, b"abc")
        # c3 misses the next lease's writes (the client dropped it).
        data_id = await c.push(b"xyz", chain=["c1", "c2"])
        reply = await c.client.call("c1", p.ChunkWrite(H, V2, T(11), data_id, 0, ["c2"]))
        assert reply.failed == []
        with pytest.raises(RemoteError) as e:
            await c.client.call("c3", p.ChunkRead(H, V2, 0, 3))
        assert e.value.code == p.STALE_VERSION
        assert (await c.client.call("c2", p.ChunkRead(H, V2, 0, 3))).data == b"xyz"


async def test_write_without_push_is_no_data() -> None:
    async with cluster() as c:
        with pytest.raises(RemoteError) as e:
            await c.client.call("c1", p.ChunkWrite(H, V1, T(10), 999, 0, []))
        assert e.value.code == p.NO_DATA


async def test_checksum_mismatch_reported_and_refused() -> None:
    async with cluster() as c:
        await c.write(0, bytes(3 * BLOCK_SIZE))
        c.nodes[1].store.corrupt(H, 2 * BLOCK_SIZE + 1)
        with pytest.raises(RemoteError) as e:
            await c.client.call("c2", p.ChunkRead(H, V1, 0, 3 * BLOCK_SIZE))
        assert e.value.code == p.CHECKSUM and p.bad_block_of(e.value.message) == 2
        assert (await c.client.call("c3", p.ChunkRead(H, V1, 0, 10))).data == bytes(10)
        with trio.fail_after(5):
            while not c.nodes[1].meta.bad:
                await trio.sleep(0.01)
        assert c.nodes[1].meta.bad == [(2, H)]
        check = await c.client.call("c2", p.ChunkChecksum(H))
        assert check.bad_blocks == [2] and check.length == 3 * BLOCK_SIZE
        assert (await c.client.call("c1", p.ChunkChecksum(H))).bad_blocks == []


async def test_enospc_is_a_clear_error_and_drops_staged_data() -> None:
    async with cluster(capacity=1000) as c:
        with pytest.raises(RemoteError) as e:
            await c.write(0, b"x" * 2000)
        assert e.value.code == p.ENOSPC
        assert c.nodes[0].service.staging.bytes_used == 0
        assert c.nodes[0].store.state(H) is None
        await c.write(0, b"y" * 500)  # what fits still works


async def test_truncate_goes_through_the_primary_to_all() -> None:
    async with cluster() as c:
        await c.write(0, b"0123456789")
        reply = await c.client.call("c1", p.ChunkTruncate(H, V1, T(10), 4, ["c2", "c3"]))
        assert reply.serial == 2 and reply.failed == []
        assert all(content(n) == b"0123" for n in c.nodes)


async def test_set_version_makes_replicas_readable_at_the_new_version() -> None:
    async with cluster() as c:
        await c.write(0, b"abc")
        for a in c.addresses:
            assert (await c.client.call(a, p.ChunkSetVersion(H, V2, T(11)))).version == 2
        assert (await c.client.call("c3", p.ChunkRead(H, V2, 0, 3))).data == b"abc"
        reply = await c.write(3, b"d", version=V2, token=11)  # serials restart per token
        assert reply.serial == 1
        with pytest.raises(RemoteError) as e:
            await c.client.call("c1", p.ChunkSetVersion(H, V1, T(11)))
        assert e.value.code == p.STALE_VERSION


async def test_delete_and_stat() -> None:
    async with cluster() as c:
        await c.write(0, b"abc")
        stat = await c.client.call("c1", p.ChunkStat())
        assert (stat.server_id, stat.chunks, stat.used) == (1, 1, 3)
        reply = await c.client.call("c1", p.ChunkDelete([H, ChunkHandle(99)]))
        assert reply.deleted == [H]
        assert (await c.client.call("c1", p.ChunkStat())).chunks == 0
        with pytest.raises(RemoteError) as e:
            await c.client.call("c1", p.ChunkDelete([-1]))  # type: ignore[list-item]
        assert e.value.code == p.BAD_ARGS


async def test_heartbeat_deletes_only_unchanged_replicas() -> None:
    async with cluster() as c:
        await c.write(0, b"abc")
        # A replica written after the snapshot is kept.
        _, _, snap = await c.nodes[0].service.snapshot()
        await c.write(0, b"changed")
        assert not await c.nodes[0].service.delete_if_unchanged(H, snap.get(H))
        assert c.nodes[0].store.state(H) is not None

        node = c.nodes[1]
        reporter = Reporter(ServerId(2), "c2")
        node.meta.to_delete = {H}
        deleted = await beat_once(node.meta, reporter, node.service.snapshot,
                                  node.service.delete_if_unchanged, 1.0)
        assert deleted == [H] and node.store.state(H) is None
        report = node.meta.reports[-1]
        assert report.full and report.chunks == [(H, V1)]
