"""NetworkFs under failures of real processes: chunk servers killed during and
between writes, the metadata leader killed during creates and writes, every
metadata server stopped (calls end with ETIMEDOUT, never hang)."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
import trio

from fs.client import NetworkFs
from fs.types import ROOT_CRED, ROOT_INODE, ChunkLocation, FsError, InodeId
from tests.support.fs_cluster import FsCluster, fs_cluster

MiB = 1 << 20
R = ROOT_CRED
CREAT = os.O_CREAT | os.O_RDWR


async def ready(cluster: FsCluster) -> None:
    async with cluster.client() as rpc:
        await cluster.wait_ready(rpc)


async def content(fs: NetworkFs, inode: InodeId) -> bytes:
    size = (await fs.getattr(inode, R)).size
    fh = await fs.open(inode, os.O_RDONLY, R)
    try:
        return await fs.read(fh, 0, size + 1)
    finally:
        await fs.release(fh)


async def chunk0(fs: NetworkFs, inode: InodeId) -> ChunkLocation:
    (location,) = await fs.meta.chunk_locations(inode, 0, 1)
    return location


def server_of(cluster: FsCluster, address: str) -> int:
    return next(i for i, a in cluster.chunk_addresses.items() if a == address)


async def test_chunk_servers_killed_during_and_between_writes(tmp_path: Path) -> None:
    rng = random.Random(3)
    data = rng.randbytes(24 * MiB)
    with fs_cluster(tmp_path) as cluster:
        await ready(cluster)
        async with cluster.connect(write_buffer=4 * MiB, op_timeout=20.0) as fs:
            fh, attr = await fs.create(ROOT_INODE, b"f", 0o644, CREAT, R)
            await fs.write(fh, 0, data[:MiB])
            await fs.flush(fh)
            lease = fs.io.leases.get(attr.inode, 0, trio.current_time())
            assert lease is not None
            before = await chunk0(fs, attr.inode)
            victim = server_of(cluster, lease.secondaries[0][1])

            # 1. A secondary dies while the rest of the data is being written:
            # killed when half of it has been handed over (background flushes
            # of the 4 MiB buffer are in flight then), so the kill always lands
            # before the last flush, however fast the machine is.
            half = len(data) // 2
            for offset in range(MiB, len(data), 256 * 1024):
                if offset == half:
                    cluster.chunks[victim].kill()
                await fs.write(fh, offset, data[offset:offset + 256 * 1024])
            await fs.flush(fh)
            after = await chunk0(fs, attr.inode)
            assert [s for s, _ in after.replicas] == [
                s for s, _ in before.replicas if s != victim]
            assert after.version > before.version and fs.io.drops >= 1
            assert await content(fs, attr.inode) == data

            # 2. The primary dies between writes: the cached lease names it.
            lease = fs.io.leases.get(attr.inode, 0, trio.current_time())
            assert lease is not None
            primary = server_of(cluster, lease.primary_address)
            cluster.chunks[primary].kill()
            await fs.write(fh, 5, b"after the primary died")
            await fs.release(fh)
            last = await chunk0(fs, attr.inode)
            assert len(last.replicas) == 1 and last.replicas[0][0] not in (victim, primary)
            assert last.version > after.version
            expected = data[:5] + b"after the primary died" + data[27:]
            assert await content(fs, attr.inode) == expected
            async with cluster.connect() as reader:  # cold caches
                assert await content(reader, attr.inode) == expected

            # 3. No chunk server left.
            for proc in cluster.chunks.values():
                proc.kill()
            await _failed_flush_is_reported_by_the_next_write(fs, data[:4 * MiB])


async def _failed_flush_is_reported_by_the_next_write(fs: NetworkFs, data: bytes) -> None:
    fh, _ = await fs.create(ROOT_INODE, b"g", 0o644, CREAT, R)
    await fs.write(fh, 0, data)  # fills the buffer: a background flush starts and fails
    with trio.fail_after(30):
        while fs.writeback.busy():
            await trio.sleep(0.05)
    with pytest.raises(FsError) as info:
        await fs.write(fh, len(data), b"more")
    assert info.value.errno in (errno.EIO, errno.ENOSPC)
    await fs.flush(fh)  # reported once: already
    await fs.release(fh)


async def test_leader_killed_during_creates_and_writes_then_all_stopped(tmp_path: Path) -> None:
    with fs_cluster(tmp_path) as cluster:
        await ready(cluster)
        names = [b"file%02d" % i for i in range(16)]
        async with cluster.connect(op_timeout=15.0) as fs:
            d = await fs.mkdir(ROOT_INODE, b"d", 0o755, R)
            async with cluster.client() as rpc:
                leader = await cluster.meta.wait_leader(rpc)

            async def kill_leader_soon() -> None:
                await trio.sleep(0.5)
                cluster.meta.members[leader].kill()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_leader_soon)
                for name in names:
                    fh, _ = await fs.create(d.inode, name, 0o644, CREAT | os.O_EXCL, R)
                    await fs.write(fh, 0, name * 1000)
                    await fs.release(fh)
            assert not cluster.meta.members[leader].running
            entries = await fs.readdir(d.inode, 0, 100, R)
            assert sorted(e.name for e in entries) == names  # none missing, none twice
            for entry in entries:
                assert await content(fs, entry.attr.inode) == entry.name * 1000

        # Every metadata server stopped: calls fail within the bound, never hang.
        for member in cluster.meta.members.values():
            member.kill()
        op_timeout = 2.0
        with trio.fail_after(4 * op_timeout + 10), pytest.raises(FsError) as info:
            async with cluster.connect(op_timeout=op_timeout):
                pass
        assert info.value.errno == errno.ETIMEDOUT
        await _everything_times_out(cluster, d.inode, op_timeout)


async def _everything_times_out(cluster: FsCluster, directory: InodeId, op_timeout: float) -> None:
    """A client whose metadata servers all go away answers ETIMEDOUT (or EIO) in time."""
    for i in (1, 2):  # a quorum again, to register a session
        cluster.meta.members[i].launch("ready on")
    async with cluster.client() as rpc:
        await cluster.meta.wait_leader(rpc)
    async with cluster.connect(op_timeout=op_timeout) as fs:
        for i in (1, 2):
            cluster.meta.members[i].kill()
        calls = [
            fs.getattr(directory, R),
            fs.mkdir(directory, b"new", 0o755, R),
            fs.create(directory, b"new", 0o644, CREAT, R),
        ]
        for call in calls:
            with trio.fail_after(2 * op_timeout + 5), pytest.raises(FsError) as info:
                await call
            assert info.value.errno in (errno.ETIMEDOUT, errno.EIO)
