"""The file-system metadata service on a real 3-member `ddfs meta` cluster.

MetaClient drives namespace operations, open files and chunk maps while the
leader is SIGKILLed: calls in flight are retried with the same (client,
seq) and executed exactly once (a retried mkdir never answers EEXIST), and
the state every member serves afterwards is the same.  Chunk servers are
played by the test: it sends their heartbeats itself.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import trio

from coord.kv.remote import LeaderRouter
from coord.rpc import RpcClient
from fs.meta.client import MetaClient
from fs.meta.protocol import (
    BadReplica,
    ChunkServers,
    Heartbeat,
    HeartbeatReply,
)
from fs.types import (
    CHUNK_SIZE,
    ROOT_CRED,
    ROOT_INODE,
    ChunkHandle,
    ChunkVersion,
    FsError,
    InodeId,
    ServerId,
)
from tests.support.meta_cluster import MetaCluster, meta_cluster

GiB = 1 << 30


async def _heartbeats(
    rpc: RpcClient, router: LeaderRouter, chunks: dict[int, list[tuple[int, int]]]
) -> dict[int, HeartbeatReply]:
    """One heartbeat from each of three pretend chunk servers (ids 1..3)."""
    replies = {}
    for sid in (1, 2, 3):
        hb = Heartbeat(
            ServerId(sid), f"127.0.0.1:{9000 + sid}", 100 * GiB, (100 - sid) * GiB,
            tuple((ChunkHandle(h), ChunkVersion(v)) for h, v in chunks.get(sid, [])), True,
        )
        replies[sid] = await router.call(
            lambda addr, hb=hb: rpc.call(addr, hb, timeout=2.0)  # type: ignore[misc]
        )
    return replies


async def _namespace_and_chunks(cluster: MetaCluster, rpc: RpcClient, meta: MetaClient) -> int:
    """Build a small tree and one chunk; returns the open file's inode."""
    d = await meta.mkdir(ROOT_INODE, b"a", 0o755, ROOT_CRED)
    f = await meta.create(d.inode, b"f", 0o644, os.O_RDWR | os.O_CREAT, ROOT_CRED)
    await meta.setxattr(f.inode, b"user.k", b"v", 0, ROOT_CRED)
    await meta.symlink(d.inode, b"l", b"f", ROOT_CRED)
    router = LeaderRouter(cluster.endpoints, timeout=15.0)
    await _heartbeats(rpc, router, {})
    loc = await meta.alloc_chunk(f.inode, 0)
    assert [s for s, _ in loc.replicas] == [1, 2, 3]  # most free space first
    assert loc.replicas[0][1] == "127.0.0.1:9001"
    lease = await meta.acquire_lease(f.inode, 0)
    assert lease.primary == 1 and lease.location.version == 2 and lease.token > 0
    size = await meta.set_size(f.inode, CHUNK_SIZE // 2, False, ROOT_CRED)
    assert size.size == CHUNK_SIZE // 2
    return f.inode


async def _mkdirs_across_a_kill(cluster: MetaCluster, rpc: RpcClient, meta: MetaClient) -> None:
    """20 mkdirs while the leader dies: all succeed exactly once."""
    leader = await cluster.wait_leader(rpc)
    d = await meta.lookup(ROOT_INODE, b"a", ROOT_CRED)

    async def kill_soon() -> None:
        await trio.sleep(0.3)
        cluster.members[leader].kill()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_soon)
        for i in range(20):
            await meta.mkdir(d.inode, b"sub%02d" % i, 0o700, ROOT_CRED)
    entries, more = await meta.readdir(d.inode, 0, 100, ROOT_CRED)
    names = sorted(e.name for e in entries)
    assert not more
    assert names == sorted([b"f", b"l"] + [b"sub%02d" % i for i in range(20)])
    assert (await meta.getattr(d.inode)).nlink == 22
    cluster.start(leader)


async def _orphan_and_garbage(cluster: MetaCluster, rpc: RpcClient, meta: MetaClient,
                              ino: int) -> None:
    d = await meta.lookup(ROOT_INODE, b"a", ROOT_CRED)
    loc = (await meta.chunk_locations(InodeId(ino), 0, 4))[0]
    await meta.unlink(d.inode, b"f", ROOT_CRED)
    with pytest.raises(FsError) as gone:
        await meta.lookup(d.inode, b"f", ROOT_CRED)
    assert gone.value.errno == errno.ENOENT
    orphan = await meta.getattr(InodeId(ino))
    assert orphan.nlink == 0 and stat.S_ISREG(orphan.mode)  # still readable while open
    router = LeaderRouter(cluster.endpoints, timeout=15.0)
    replies = await _heartbeats(rpc, router, {1: [(loc.handle, 2), (999_999, 1)]})
    assert replies[1].delete == (999_999,)  # the live chunk is kept, the unknown one goes
    await meta.release(InodeId(ino))  # last close: the orphan and its chunk go
    with pytest.raises(FsError) as reclaimed:
        await meta.getattr(InodeId(ino))
    assert reclaimed.value.errno == errno.ENOENT
    replies = await _heartbeats(rpc, router, {1: [(loc.handle, 2)], 2: [(loc.handle, 2)]})
    assert replies[1].delete == (loc.handle,) and replies[2].delete == (loc.handle,)
    bad = await router.call(lambda a: rpc.call(a, BadReplica(ChunkHandle(12345), ServerId(1)),
                                               timeout=2.0))
    assert bad.errno == 0  # an unknown handle is "already gone"
    servers = await router.call(lambda a: rpc.call(a, ChunkServers(), timeout=2.0))
    assert sorted(s.server for s in servers.servers if s.alive) == [1, 2, 3]


async def _members_agree(cluster: MetaCluster, rpc: RpcClient) -> None:
    """Every member serves the same listing (reads go through ReadIndex anywhere)."""
    listings = []
    for address in cluster.endpoints:
        async with MetaClient(rpc, [address], timeout=15.0) as one:
            d = await one.lookup(ROOT_INODE, b"a", ROOT_CRED)
            listings.append(await one.readdir(d.inode, 0, 100, ROOT_CRED))
    assert listings[0] == listings[1] == listings[2]


async def test_meta_cluster_survives_a_leader_kill(tmp_path: Path) -> None:
    with meta_cluster(tmp_path, 3) as cluster:
        try:
            async with cluster.client() as rpc:
                await cluster.wait_leader(rpc)
                async with MetaClient(rpc, cluster.endpoints, timeout=20.0) as meta:
                    ino = await _namespace_and_chunks(cluster, rpc, meta)
                    await _mkdirs_across_a_kill(cluster, rpc, meta)
                    await _orphan_and_garbage(cluster, rpc, meta, ino)
                    assert meta.retries > 0  # the kill was felt and retried through
                await _members_agree(cluster, rpc)
        except BaseException:
            print(cluster.logs())
            raise
