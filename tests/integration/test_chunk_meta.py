"""A real `ddfs chunk` heartbeating to a real 3-member `ddfs meta` cluster:
the leader learns the server (address, space) through redirects from any
member and orders garbage replicas deleted; `MetaLink.bad_replica` reaches
the leader."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from coord.kv.remote import LeaderRouter
from coord.lease import FencingToken
from coord.rpc import RpcClient
from fs.chunk import protocol as p
from fs.chunk.metalink import MetaLink
from fs.meta.protocol import ChunkServers, ChunkServersReply
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion, ServerId
from tests.integration.test_chunk_cluster import chunk_argv
from tests.support.meta_cluster import meta_cluster
from tests.support.processes import Proc, free_ports

H = ChunkHandle(424242)


async def _servers(rpc: RpcClient, router: LeaderRouter) -> ChunkServersReply:
    async def attempt(address: str) -> ChunkServersReply:
        return await rpc.call(address, ChunkServers(), timeout=2.0)
    return await router.call(attempt)


async def test_heartbeats_reach_the_leader_and_garbage_is_deleted(tmp_path: Path) -> None:
    with meta_cluster(tmp_path, 3) as cluster:
        address = f"127.0.0.1:{free_ports(1)[0]}"
        # List the members backwards so that the first one tried is likely a follower.
        meta = ",".join(reversed(cluster.endpoints))
        chunk = cluster.group.add(Proc("chunk1", chunk_argv(
            "chunk", "-v", "--id", "1", "--listen", address, "--data", str(tmp_path / "c1"),
            "--meta", meta, "--secret-file", str(cluster.secret_file),
            "--heartbeat-interval", "0.2"), tmp_path / "chunk1.log"))
        chunk.launch("ready on")
        async with cluster.client() as rpc:
            await cluster.wait_leader(rpc)
            router = LeaderRouter(cluster.endpoints, timeout=15.0)
            with trio.fail_after(20):
                while True:
                    reply = await _servers(rpc, router)
                    mine = [s for s in reply.servers if s.server == 1 and s.alive]
                    if mine:
                        break
                    await trio.sleep(0.1)
            assert mine[0].address == address and 0 < mine[0].free <= mine[0].capacity

            # A replica no chunk map references is garbage: the leader says so
            # in a heartbeat reply and the server deletes it.
            data = os.urandom(2 * BLOCK_SIZE)
            await rpc.call(address, p.ChunkPush(1, data, []))
            await rpc.call(address, p.ChunkWrite(H, ChunkVersion(1), FencingToken(1), 1, 0, []))
            with trio.fail_after(20):
                while (await rpc.call(address, p.ChunkStat())).chunks:
                    await trio.sleep(0.1)
            assert not (tmp_path / "c1" / "chunks" / f"{H}.chunk").exists()

            # The real sink reaches the leader from any member (redirects
            # followed); the read -> CHECKSUM -> report path itself is tested
            # in-process (a replica outside any chunk map is deleted too soon
            # to be read here).
            link = MetaLink(rpc, list(reversed(cluster.endpoints)))
            await link.bad_replica(ServerId(1), ChunkHandle(H + 1))
            assert link.leader in cluster.endpoints
            with trio.fail_after(10):
                while f"chunk {H + 1} on server 1 reported bad" not in cluster.logs():
                    await trio.sleep(0.1)
