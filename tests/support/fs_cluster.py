"""A whole ddfs cluster of real processes on loopback: `ddfs meta` members and
`ddfs chunk` servers (3 + 3 by default), for tests and the local launcher.

    with fs_cluster(tmp_path) as cluster:           # processes started
        async with cluster.client() as rpc:
            await cluster.wait_ready(rpc)           # a leader that sees every chunk server
        async with cluster.connect() as fs:         # a NetworkFs on it
            ...

Invariant: every process started here belongs to `cluster.group` and is
killed and reaped by `close()` (the context manager calls it, also when the
test fails).  Data lives under `base`: `meta<i>/`, `chunk<i>/`, one log per
process (`*.log`, shown by `logs()` when a test wants to explain a failure).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import trio

from coord.kv.remote import LeaderRouter
from coord.rpc import RpcClient
from fs.client import FsClientConfig, NetworkFs, connect
from fs.meta.protocol import ChunkServers, ChunkServersReply
from tests.support.meta_cluster import SECRET, MetaCluster
from tests.support.processes import Proc, ddfs_argv, free_ports


class FsCluster:
    def __init__(
        self, base: Path, *, metas: int = 3, chunks: int = 3, election_timeout: float = 0.4,
        heartbeat_interval: float = 0.3,
    ) -> None:
        self.base = base
        self.meta = MetaCluster(base, metas, election_timeout=election_timeout)
        self.secret = SECRET
        self.secret_file = self.meta.secret_file
        self.group = self.meta.group
        meta_list = ",".join(self.meta.endpoints)
        self.chunk_addresses = {
            i: f"127.0.0.1:{port}" for i, port in enumerate(free_ports(chunks), start=1)
        }
        self.chunks: dict[int, Proc] = {}
        for i, address in self.chunk_addresses.items():
            self.chunks[i] = self.group.add(Proc(
                f"chunk{i}",
                ddfs_argv("-v", "chunk", "--id", str(i), "--listen", address,
                          "--data", str(base / f"chunk{i}"), "--meta", meta_list,
                          "--secret-file", str(self.secret_file),
                          "--heartbeat-interval", str(heartbeat_interval)),
                base / f"chunk{i}.log",
            ))

    @property
    def endpoints(self) -> list[str]:
        return self.meta.endpoints

    def start(self) -> None:
        self.meta.start_all()
        for proc in self.chunks.values():
            proc.launch("ready on")

    def close(self) -> None:
        self.group.close()

    def client(self) -> RpcClient:
        """A plain RPC client with the cluster secret (for status calls in tests)."""
        return self.meta.client()

    def config(self, **overrides: object) -> FsClientConfig:
        """A client configuration for this cluster (`overrides`: FsClientConfig fields)."""
        fields: dict[str, object] = {"meta_endpoints": tuple(self.endpoints), "op_timeout": 10.0,
                                     "local_hosts": ("127.0.0.1",)}
        fields.update(overrides)
        return FsClientConfig(**fields)  # type: ignore[arg-type]

    @asynccontextmanager
    async def connect(self, **overrides: object) -> AsyncIterator[NetworkFs]:
        async with connect(self.config(**overrides), self.secret) as fs:
            yield fs

    async def servers(self, rpc: RpcClient, timeout: float = 10.0) -> ChunkServersReply:
        """The metadata leader's view of the chunk servers (`meta.servers`)."""
        router = LeaderRouter(self.endpoints, timeout=timeout)

        async def attempt(address: str) -> ChunkServersReply:
            return await rpc.call(address, ChunkServers(), timeout=2.0)

        return await router.call(attempt)

    async def wait_ready(self, rpc: RpcClient, timeout: float = 30.0) -> None:
        """Until a leader is elected and has heard every running chunk server."""
        await self.meta.wait_leader(rpc, timeout=timeout)
        running = {i for i, proc in self.chunks.items() if proc.running}
        with trio.move_on_after(timeout):
            while True:
                reply = await self.servers(rpc, timeout=timeout)
                alive = {int(s.server) for s in reply.servers if s.alive}
                if running <= alive:
                    return
                await trio.sleep(0.1)
        raise AssertionError(f"chunk servers {running} not all alive after {timeout} s\n"
                             + self.logs())

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_text()[-3000:]}" for p in self.group.procs)


@contextmanager
def fs_cluster(base: Path, **kw: object) -> Iterator[FsCluster]:
    """Start a cluster under `base`; stop every process on exit."""
    cluster = FsCluster(base, **kw)  # type: ignore[arg-type]
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
