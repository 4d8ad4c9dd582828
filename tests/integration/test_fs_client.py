"""NetworkFs on a real cluster (3 `ddfs meta` + 3 `ddfs chunk` on loopback): data
across chunk boundaries and holes, concurrent readers and writers, reads that
fall back from a corrupt replica, orphans reclaimed when a session ends."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from coord.kv.commands import EndSession, encode_body
from coord.kv.remote import LeaderRouter
from coord.kv.types import ClientId
from fs.client import NetworkFs
from fs.meta.protocol import FsSubmit
from fs.types import CHUNK_SIZE, ROOT_CRED, ROOT_INODE, FsError, InodeId
from tests.support.fs_cluster import FsCluster, fs_cluster

MiB = 1 << 20
R = ROOT_CRED
CREAT = os.O_CREAT | os.O_RDWR


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsCluster]:
    with fs_cluster(Path(tmp_path_factory.mktemp("client"))) as c:
        yield c


async def ready(cluster: FsCluster) -> None:
    async with cluster.client() as rpc:
        await cluster.wait_ready(rpc)


async def read_all(fs: NetworkFs, inode: InodeId, size: int, step: int = 3 * MiB) -> bytes:
    fh = await fs.open(inode, os.O_RDONLY, R)
    try:
        parts = [await fs.read(fh, offset, step) for offset in range(0, size, step)]
        assert await fs.read(fh, size, step) == b""  # EOF
        return b"".join(parts)
    finally:
        await fs.release(fh)


async def test_sparse_data_across_chunk_boundaries_and_holes(cluster: FsCluster) -> None:
    await ready(cluster)
    rng = random.Random(1)
    writes = [  # (offset, length): the end of chunk 0, straddling 0/1, inside 1 and 3
        (CHUNK_SIZE - MiB, MiB // 2),
        (CHUNK_SIZE - MiB // 4, MiB),
        (CHUNK_SIZE + 5 * MiB, MiB),
        (3 * CHUNK_SIZE + 7, MiB + 3),
    ]
    end = max(o + n for o, n in writes)
    expected = bytearray()
    async with cluster.connect() as fs:
        fh, attr = await fs.create(ROOT_INODE, b"sparse", 0o644, CREAT, R)
        for offset, length in writes:
            data = rng.randbytes(length)
            assert await fs.write(fh, offset, data) == length
            if len(expected) < offset + length:
                expected.extend(bytes(offset + length - len(expected)))
            expected[offset:offset + length] = data
        await fs.release(fh)
        assert (await fs.getattr(attr.inode, R)).size == end
        locations = await fs.meta.chunk_locations(attr.inode, 0, 8)
        assert [loc.index for loc in locations] == [0, 1, 3]  # chunk 2 is a hole
        assert all(len(loc.replicas) == 3 for loc in locations)
    async with cluster.connect() as other:  # another client, cold caches
        # Only the written ranges and a little around them: the holes are zeros.
        fh = await other.open(attr.inode, os.O_RDONLY, R)
        for offset, length in [*writes, (2 * CHUNK_SIZE + 100, MiB), (0, MiB)]:
            lo, hi = max(0, offset - 4096), min(end, offset + length + 4096)
            got = await other.read(fh, lo, hi - lo)
            assert got == bytes(expected[lo:hi]), f"bytes {lo}..{hi} differ"
        assert await other.read(fh, end - 10, 100) == bytes(expected[end - 10:])
        await other.release(fh)


async def test_concurrent_writers_and_readers_of_different_files(cluster: FsCluster) -> None:
    await ready(cluster)
    contents = {i: random.Random(i).randbytes(3 * MiB + i * 4097) for i in range(4)}
    inodes: dict[int, InodeId] = {}
    async with cluster.connect(write_buffer=2 * MiB) as writer, cluster.connect() as reader:

        async def write_file(i: int) -> None:
            fh, attr = await writer.create(ROOT_INODE, b"conc%d" % i, 0o644, CREAT, R)
            inodes[i] = attr.inode
            data = contents[i]
            for offset in range(0, len(data), 256 * 1024):
                await writer.write(fh, offset, data[offset:offset + 256 * 1024])
            await writer.release(fh)

        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(write_file, i)
        async with trio.open_nursery() as nursery:  # new writers while others read
            for i in range(2, 4):
                nursery.start_soon(write_file, i)
            for i in range(2):
                async def check(i: int = i) -> None:
                    assert await read_all(reader, inodes[i], len(contents[i])) == contents[i]
                nursery.start_soon(check)
        for i in range(4):
            assert await read_all(reader, inodes[i], len(contents[i])) == contents[i]


async def test_read_falls_back_from_a_corrupt_replica(cluster: FsCluster) -> None:
    await ready(cluster)
    data = random.Random(7).randbytes(MiB)
    async with cluster.connect() as fs:
        fh, attr = await fs.create(ROOT_INODE, b"corrupt", 0o644, CREAT, R)
        await fs.write(fh, 0, data)
        await fs.release(fh)
        (location,) = await fs.meta.chunk_locations(attr.inode, 0, 1)
    first = location.replicas[0][0]  # the replica a reader on this host tries first
    path = cluster.base / f"chunk{first}" / "chunks" / f"{location.handle}.chunk"
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 0xFF
    path.write_bytes(bytes(raw))
    async with cluster.connect() as fs:
        assert await read_all(fs, attr.inode, len(data)) == data
        # It was tried first and refused (CHECKSUM): now it is tried last.
        bad_address = dict(location.replicas)[first]
        assert bad_address in fs.io.suspects.current(trio.current_time())


async def test_ending_a_session_reclaims_its_orphans(cluster: FsCluster) -> None:
    await ready(cluster)
    async with cluster.connect() as a:
        fh, attr = await a.create(ROOT_INODE, b"orphan", 0o644, CREAT, R)
        await a.write(fh, 0, b"x" * 1000)
        await a.flush(fh)
        await a.unlink(ROOT_INODE, b"orphan", R)
        async with cluster.connect() as b:
            assert (await b.getattr(attr.inode, R)).nlink == 0  # kept: open in a's session
        # `a` ends without releasing: its session's end releases the file.
    async with cluster.connect() as b:
        with pytest.raises(FsError) as info:
            await b.getattr(attr.inode, R)
        assert info.value.errno == errno.ENOENT


async def _end_session(cluster: FsCluster, client_id: int) -> None:
    """End a client's metadata session behind its back (as its expiry would)."""
    body = encode_body(EndSession(ClientId(client_id)))
    router = LeaderRouter(cluster.endpoints, timeout=10.0)
    async with cluster.client() as rpc:
        await router.call(lambda address: rpc.call(address, FsSubmit(body), timeout=2.0))


async def test_a_lost_session_is_replaced_and_its_open_files_refuse_writes(
    cluster: FsCluster,
) -> None:
    await ready(cluster)
    async with cluster.connect(keepalive_interval=100.0) as fs:
        fh, attr = await fs.create(ROOT_INODE, b"session", 0o644, CREAT, R)
        await fs.write(fh, 0, b"before")
        await fs.flush(fh)
        await _end_session(cluster, fs.meta.client_id)
        with pytest.raises(FsError) as info:  # the next command finds it gone
            await fs.mkdir(ROOT_INODE, b"in-new-session", 0o755, R)
        assert info.value.errno == errno.EIO
        with trio.fail_after(10):
            while fs.generation < 2:
                await trio.sleep(0.02)
        await fs.mkdir(ROOT_INODE, b"in-new-session", 0o755, R)
        with pytest.raises(FsError) as info:
            await fs.write(fh, 0, b"lost")
        assert info.value.errno == errno.EIO
        assert await fs.read(fh, 0, 100) == b"before"  # reading needs no session
        await fs.release(fh)
        fh = await fs.open(attr.inode, os.O_RDWR, R)
        await fs.write(fh, 6, b" and after")
        await fs.release(fh)
        fh = await fs.open(attr.inode, os.O_RDONLY, R)
        assert await fs.read(fh, 0, 100) == b"before and after"
        await fs.release(fh)
