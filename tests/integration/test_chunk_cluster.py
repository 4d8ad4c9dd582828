"""Real `ddfs chunk` processes on loopback: the push chain, ordered writes from
concurrent clients, a secondary killed mid-write, fencing across a restart,
and the two figures the design asks for (push MB/s over a 3-server chain,
write+fsync latency), printed with -s."""

from __future__ import annotations

import os
import signal
import statistics
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from coord.lease import FencingToken
from coord.rpc import ClientConfig, RemoteError, RpcClient, TcpConnector
from fs.chunk import protocol as p
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion
from tests.support.processes import Proc, ProcessGroup, ddfs_argv, free_ports

SECRET = b"chunk-integration-secret"
V1 = ChunkVersion(1)
T = FencingToken


def chunk_argv(*args: str) -> list[str]:
    """`ddfs -v chunk ...` (-v is the global option: it goes before the command)."""
    return ddfs_argv("-v", *(a for a in args if a != "-v"))


class ChunkCluster:
    def __init__(self, base: Path, n: int = 3) -> None:
        self.base = base
        secret_file = base / "secret"
        secret_file.write_bytes(SECRET + b"\n")
        ports = free_ports(n + 1)
        dead_meta = f"127.0.0.1:{ports[-1]}"  # nobody listens: heartbeats fail quietly
        self.addresses = [f"127.0.0.1:{port}" for port in ports[:n]]
        self.group = ProcessGroup()
        self.procs = [
            self.group.add(Proc(
                f"chunk{i}",
                chunk_argv("chunk", "-v", "--id", str(i), "--listen", address,
                           "--data", str(base / f"chunk{i}"), "--meta", dead_meta,
                           "--secret-file", str(secret_file)),
                base / f"chunk{i}.log"))
            for i, address in enumerate(self.addresses, start=1)
        ]

    def start(self) -> None:
        for proc in self.procs:
            proc.launch("ready on")


@pytest.fixture
def chunks(tmp_path: Path) -> Iterator[ChunkCluster]:
    c = ChunkCluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.group.close()


@asynccontextmanager
async def client(node_id: int = 500) -> AsyncIterator[RpcClient]:
    config = ClientConfig(node_id=node_id, secret=SECRET, default_timeout=20,
                          attempt_timeout=10)
    async with RpcClient(config, TcpConnector()) as rpc:
        yield rpc


async def write(rpc: RpcClient, addresses: list[str], handle: ChunkHandle, data_id: int,
                offset: int, data: bytes, token: int = 10) -> p.WriteReply:
    pushed = await rpc.call(addresses[0], p.ChunkPush(data_id, data, addresses[1:]))
    assert pushed.stored == addresses[1:]
    return await rpc.call(addresses[0], p.ChunkWrite(
        handle, V1, T(token), data_id, offset, addresses[1:]))


async def read_all(rpc: RpcClient, address: str, handle: ChunkHandle) -> bytes:
    return (await rpc.call(address, p.ChunkRead(handle, V1, 0, 1 << 24))).data


async def test_push_chain_reaches_all_three(chunks: ChunkCluster) -> None:
    a = chunks.addresses
    data = os.urandom(3 * BLOCK_SIZE + 5)
    async with client() as rpc:
        reply = await rpc.call(a[0], p.ChunkPush(1, data, a[1:]))
        assert reply.stored == a[1:]
        for address in a:
            stat = await rpc.call(address, p.ChunkStat())
            assert (stat.staged_bytes, stat.staged_entries) == (len(data), 1)
        done = await rpc.call(a[0], p.ChunkWrite(ChunkHandle(1), V1, T(3), 1, 0, a[1:]))
        assert done.failed == []
        for address in a:
            assert await read_all(rpc, address, ChunkHandle(1)) == data
            assert (await rpc.call(address, p.ChunkStat())).staged_bytes == 0


async def test_concurrent_writers_all_replicas_identical(chunks: ChunkCluster) -> None:
    a, handle = chunks.addresses, ChunkHandle(2)
    async with client(501) as c1, client(502) as c2:
        serials: list[int] = []

        async def writer(rpc: RpcClient, k: int) -> None:
            for j in range(6):
                offset = ((k * 7 + j * 3) % 10) * (BLOCK_SIZE // 3)
                body = bytes([k * 16 + j]) * (BLOCK_SIZE + 1000 * j)
                reply = await write(rpc, a, handle, k * 100 + j, offset, body)
                assert reply.failed == []
                serials.append(reply.serial)

        async with trio.open_nursery() as nursery:
            for k, rpc in enumerate([c1, c2, c1, c2], start=1):
                nursery.start_soon(writer, rpc, k)
        assert sorted(serials) == list(range(1, 25))
        replicas = [await read_all(c1, address, handle) for address in a]
        assert replicas[0] == replicas[1] == replicas[2]
        for address in a:
            assert (await c1.call(address, p.ChunkChecksum(handle))).bad_blocks == []


async def test_secondary_killed_mid_write(chunks: ChunkCluster) -> None:
    a, handle = chunks.addresses, ChunkHandle(3)
    async with client() as rpc:
        assert (await write(rpc, a, handle, 1, 0, b"before")).failed == []
        await rpc.call(a[0], p.ChunkPush(2, b"during", a[1:]))
        chunks.procs[2].signal(signal.SIGSTOP)  # the apply to it hangs ...
        async with trio.open_nursery() as nursery:
            result: list[p.WriteReply] = []

            async def do_write() -> None:
                result.append(await rpc.call(a[0], p.ChunkWrite(handle, V1, T(10), 2, 0, a[1:])))

            nursery.start_soon(do_write)
            await trio.sleep(0.5)
            chunks.procs[2].kill()  # ... and dies in the middle of it
        # Two-phase commit: a replica that could not prepare aborts the write
        # everywhere; no live replica shows it, and the client drops the dead
        # replica and writes again to the survivors.
        assert result[0].failed == [a[2]] and not result[0].committed
        assert await read_all(rpc, a[0], handle) == b"before"
        assert await read_all(rpc, a[1], handle) == b"before"
        await rpc.call(a[0], p.ChunkPush(3, b"during", a[1:2]))
        retry = await rpc.call(a[0], p.ChunkWrite(handle, V1, T(10), 3, 0, a[1:2]))
        assert retry.committed and retry.failed == []
        assert await read_all(rpc, a[0], handle) == b"during"
        assert await read_all(rpc, a[1], handle) == b"during"


async def test_flipped_byte_on_disk_is_refused_with_checksum(chunks: ChunkCluster) -> None:
    a, handle = chunks.addresses, ChunkHandle(5)
    data = os.urandom(4 * BLOCK_SIZE)
    async with client() as rpc:
        assert (await write(rpc, a, handle, 1, 0, data)).failed == []
        path = chunks.base / "chunk2" / "chunks" / f"{handle}.chunk"
        raw = bytearray(path.read_bytes())
        raw[3 * BLOCK_SIZE + 17] ^= 0x01
        path.write_bytes(bytes(raw))
        with pytest.raises(RemoteError) as e:
            await rpc.call(a[1], p.ChunkRead(handle, V1, 0, 4 * BLOCK_SIZE))
        assert e.value.code == p.CHECKSUM and p.bad_block_of(e.value.message) == 3
        # Blocks before it still read; another replica serves the whole range.
        assert (await rpc.call(a[1], p.ChunkRead(handle, V1, 0, 3 * BLOCK_SIZE))).data \
            == data[:3 * BLOCK_SIZE]
        assert (await rpc.call(a[2], p.ChunkRead(handle, V1, 0, 4 * BLOCK_SIZE))).data == data


async def test_fencing_survives_crash_and_clean_restart(chunks: ChunkCluster) -> None:
    a, handle = chunks.addresses, ChunkHandle(4)
    async with client() as rpc:
        await write(rpc, a, handle, 1, 0, b"token 8", token=8)
    chunks.procs[0].kill()  # a crash, not a clean stop
    chunks.procs[0].launch("ready on")
    async with client(503) as rpc:
        with pytest.raises(RemoteError) as e:
            await write(rpc, a, handle, 2, 0, b"token 7", token=7)
        assert e.value.code == p.STALE_TOKEN
        assert await read_all(rpc, a[0], handle) == b"token 8"
        stale = await rpc.call(a[0], p.ChunkRead(handle, ChunkVersion(1), 0, 7))
        assert stale.data == b"token 8"
        with pytest.raises(RemoteError) as e:
            await rpc.call(a[0], p.ChunkRead(handle, ChunkVersion(2), 0, 7))
        assert e.value.code == p.STALE_VERSION
    # SIGTERM is a clean stop (exit status 0), and the data is there afterwards.
    proc = chunks.procs[0]
    proc.stop()
    assert proc.popen is not None and proc.popen.returncode == 0
    assert "SIGTERM, stopping" in proc.log_text()
    proc.launch("ready on")
    async with client(504) as rpc:
        assert await read_all(rpc, a[0], handle) == b"token 8"


async def test_figures_push_throughput_and_write_latency(chunks: ChunkCluster) -> None:
    """Not a timing assertion: measures and prints (run with -s)."""
    a = chunks.addresses
    part, parts, window = 1 << 20, 32, 4
    async with client() as rpc:
        payload = os.urandom(part)
        sem = trio.Semaphore(window)

        async def push_part(k: int) -> None:
            async with sem:
                reply = await rpc.call(a[0], p.ChunkPush(1000 + k // 16, payload, a[1:],
                                                         part_offset=(k % 16) * part))
                assert reply.stored == a[1:]

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for k in range(parts):
                nursery.start_soon(push_part, k)
        elapsed = trio.current_time() - start
        mbps = parts * part / elapsed / 1e6
        for k in range(parts // 16):
            reply = await rpc.call(a[0], p.ChunkWrite(ChunkHandle(50 + k), V1, T(1), 1000 + k,
                                                      0, a[1:]))
            assert reply.failed == []
        latencies = []
        for k in range(20):
            data_id = 2000 + k
            await rpc.call(a[0], p.ChunkPush(data_id, b"x" * 4096, a[1:]))
            t0 = trio.current_time()
            await rpc.call(a[0], p.ChunkWrite(ChunkHandle(60), V1, T(1), data_id,
                                              k * 4096, a[1:]))
            latencies.append(trio.current_time() - t0)
        print(f"\npush over a 3-server chain: {mbps:.0f} MB/s "
              f"({parts} x 1 MiB parts, {window} in flight)")
        print(f"4 KiB write+fsync on 3 replicas: median {statistics.median(latencies)*1e3:.1f} ms,"
              f" max {max(latencies)*1e3:.1f} ms")
        assert mbps > 0
