"""A real Raft KV cluster of `ddfs meta` processes on loopback, for tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from coord.raft.rpc import RaftStatus
from coord.rpc import RpcClient, RpcError
from tests.support.processes import Proc, ProcessGroup, ddfs_argv, free_ports
from tools.common import rpc_client

SECRET = b"integration-test-secret"


class MetaCluster:
    def __init__(self, base: Path, n: int, *, election_timeout: float = 0.4,
                 data_dirs: dict[int, Path] | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.base = base
        self.secret_file = base / "secret"
        self.secret_file.write_bytes(SECRET + b"\n")
        ports = free_ports(n)
        self.ids = list(range(1, n + 1))
        self.addresses = {i: f"127.0.0.1:{p}" for i, p in zip(self.ids, ports, strict=True)}
        members = ",".join(f"{i}={a}" for i, a in self.addresses.items())
        self.group = ProcessGroup()
        self.members: dict[int, Proc] = {}
        for i in self.ids:
            data = (data_dirs or {}).get(i, base / f"meta{i}")
            self.members[i] = self.group.add(Proc(
                f"meta{i}",
                ddfs_argv("-v", "meta", "--id", str(i), "--members", members, "--data", str(data),
                          "--secret-file", str(self.secret_file),
                          "--election-timeout", str(election_timeout), *extra_args),
                base / f"meta{i}.log",
            ))

    @property
    def endpoints(self) -> list[str]:
        return list(self.addresses.values())

    def start(self, i: int) -> None:
        self.members[i].launch("ready on")

    def start_all(self) -> None:
        for i in self.ids:
            self.start(i)

    def close(self) -> None:
        self.group.close()

    def client(self) -> RpcClient:
        return rpc_client(SECRET, role="test")

    async def statuses(self, rpc: RpcClient) -> dict[int, dict[str, object]]:
        out: dict[int, dict[str, object]] = {}
        for i, address in self.addresses.items():
            if not self.members[i].running:
                continue
            try:
                reply = await rpc.call(address, RaftStatus(), timeout=0.5)
            except RpcError:
                continue
            out[i] = json.loads(reply.json)
        return out

    async def wait_leader(self, rpc: RpcClient, timeout: float = 15.0,
                          exclude: int | None = None) -> int:
        """The id of a leader that a majority of running members agree on."""
        with trio.move_on_after(timeout):
            while True:
                st = await self.statuses(rpc)
                leaders = [i for i, s in st.items() if s["role"] == "leader" and i != exclude]
                if len(leaders) == 1:
                    lead = leaders[0]
                    agree = sum(1 for s in st.values() if s["leader"] == lead)
                    if agree > len(self.ids) // 2:
                        return lead
                await trio.sleep(0.1)
        raise AssertionError(f"no leader within {timeout} s: {await self.statuses(rpc)}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_text()[-4000:]}" for p in self.group.procs)


@contextmanager
def meta_cluster(base: Path, n: int, **kw: object) -> Iterator[MetaCluster]:
    cluster = MetaCluster(base, n, **kw)  # type: ignore[arg-type]
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()
