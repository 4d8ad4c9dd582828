"""`ddfs status` and `ddfs fsck` against a real local cluster (`ddfs cluster up
--no-mount`), with files written through the metadata service and the chunk
servers the way a client does (create, allocate, lease, push, write, size).

fsck must find nothing on a fresh cluster and after clean writes, and must
find each planted problem: a replica file deleted on a chunk server (missing
replica), a replica file copied under an unused handle (garbage), a flipped
byte (checksum error, with --verify-checksums).  The cluster is shared by the
module's tests and stopped in the fixture's teardown whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from coord.lease import FencingToken
from coord.rpc import RpcClient
from fs.chunk import protocol as cp
from fs.fsck import Kind, Problem
from fs.meta.client import MetaClient
from fs.types import ROOT_CRED, ROOT_INODE, ChunkHandle, ServerId
from tests.integration.test_cluster_cmd import cluster_dir, ddfs, pids, up
from tools import clusterconf
from tools.clusterconf import ClusterConfig
from tools.common import rpc_client
from tools.fsck import FsckTarget, check_cluster, fsck_problems


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterConfig]:
    base = tmp_path_factory.mktemp("fsck") / "c"
    with cluster_dir(base) as seen:
        out = up(base, "--no-mount")
        seen.update(pids(base))
        assert out.returncode == 0, out.stdout + out.stderr
        yield clusterconf.load(base / clusterconf.CONFIG_NAME)


def target(config: ClusterConfig, *, local_meta: bool = True) -> FsckTarget:
    full = FsckTarget.from_config(config, clusterconf.read_secret(config))
    if local_meta:
        return full
    return FsckTarget(full.endpoints, full.secret, full.replicas, {}, full.chunk_data,
                      full.chunk_addresses)


async def write_file(rpc: RpcClient, config: ClusterConfig, name: bytes,
                     data: bytes) -> tuple[int, ChunkHandle]:
    """One single-chunk file written as a client does; (inode, chunk handle)."""
    async with MetaClient(rpc, config.endpoints, timeout=20.0) as meta:
        f = await meta.create(ROOT_INODE, name, 0o644, os.O_RDWR | os.O_CREAT, ROOT_CRED)
        await meta.alloc_chunk(f.inode, 0)
        lease = await meta.acquire_lease(f.inode, 0)
        chain = [address for _, address in lease.secondaries]
        await rpc.call(lease.primary_address, cp.ChunkPush(1, data, chain))
        done = await rpc.call(lease.primary_address, cp.ChunkWrite(
            lease.location.handle, lease.location.version, FencingToken(lease.token), 1, 0, chain))
        assert not done.failed
        await meta.set_size(f.inode, len(data), False, ROOT_CRED)
        await meta.release(f.inode)
        assert len(lease.location.replicas) == 3
        return f.inode, lease.location.handle


def replica_path(config: ClusterConfig, server: int, handle: int) -> Path:
    return config.chunk_member(server).data / "chunks" / f"{handle}.chunk"


def found(problems: list[Problem] | tuple[Problem, ...]) -> set[tuple[Kind, int | None,
                                                                     int | None]]:
    return {(p.kind, p.handle, p.server) for p in problems}


def test_status_shows_members_leader_and_chunk_servers(cluster: ClusterConfig) -> None:
    base = str(cluster.path.parent) if cluster.path else ""
    out = ddfs("status", "--dir", base, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    st = json.loads(out.stdout)
    assert st["healthy"] and st["leader"] in (1, 2, 3)
    members = st["members"]
    assert [m["id"] for m in members] == [1, 2, 3]
    assert [m["role"] for m in members].count("leader") == 1
    assert all(m["leader"] == st["leader"] and m["applied_index"] > 0 for m in members)
    assert all(abs(m["clock_offset_ms"]) < 1000 for m in members)  # one host: tiny skew
    servers = st["chunk_servers"]
    assert [s["id"] for s in servers] == [1, 2, 3]
    assert all(s["alive"] and s["capacity"] >= s["free"] > 0 for s in servers)
    assert st["under_replicated"] == 0
    text = ddfs("status", "--dir", base)
    assert text.returncode == 0
    assert "leader" in text.stdout and text.stdout.count("127.0.0.1:") >= 6


async def test_fsck_is_clean_then_finds_each_planted_problem(cluster: ClusterConfig) -> None:
    base = str(cluster.path.parent) if cluster.path else ""
    fresh = await check_cluster(target(cluster))
    assert fresh.report.clean, fresh.report.problems
    assert "member" in fresh.source and fresh.inodes == 1

    async with rpc_client(clusterconf.read_secret(cluster)) as rpc:
        _, a = await write_file(rpc, cluster, b"a", os.urandom(300_000))
        _, b = await write_file(rpc, cluster, b"b", os.urandom(100_000))
    written = await check_cluster(target(cluster))
    assert written.report.clean, written.report.problems
    assert (written.inodes, written.chunks, written.probes) == (3, 2, 6)
    cli = ddfs("fsck", "--dir", base)
    assert cli.returncode == 0 and "clean" in cli.stdout, cli.stdout + cli.stderr

    # Plant: a's replica file on server 2 deleted; a copy of it under an unused
    # handle on server 3; one byte of b's replica on server 1 flipped.
    replica_path(cluster, 2, a).unlink()
    stray = ChunkHandle(10_000_000)
    shutil.copy(replica_path(cluster, 1, a), replica_path(cluster, 3, stray))
    with replica_path(cluster, 1, b).open("r+b") as f:
        f.seek(70_000)  # block 1: the 1-byte probe of block 0 cannot see it
        byte = f.read(1)
        f.seek(70_000)
        f.write(bytes([byte[0] ^ 0x40]))

    report = (await check_cluster(target(cluster))).report
    assert found(report.problems) == {
        (Kind.MISSING_REPLICA, a, ServerId(2)), (Kind.GARBAGE, stray, ServerId(3))}

    cli = ddfs("fsck", "--dir", base, "--verify-checksums", "--json")
    assert cli.returncode == 1, cli.stdout + cli.stderr
    verified = json.loads(cli.stdout)
    assert not verified["clean"]
    assert {(p["kind"], p.get("handle"), p.get("server")) for p in verified["problems"]} >= {
        ("missing-replica", a, 2), ("garbage", stray, 3), ("checksum", b, 1)}

    # Without a metadata data folder fsck walks the tree over RPC: it still sees
    # the missing replica, and says that garbage needs the data folder.
    walked = await check_cluster(target(cluster, local_meta=False))
    assert "walk" in walked.source
    assert (Kind.MISSING_REPLICA, a, ServerId(2)) in found(walked.report.problems)
    assert any("garbage not checked" in n for n in walked.report.notes)


def test_fsck_problems_is_usable_outside_trio(cluster: ClusterConfig) -> None:
    problems = fsck_problems(target(cluster))
    assert all(isinstance(p, Problem) for p in problems)
    # Whatever the other tests planted, each problem names its kind and says why.
    assert all(str(p).startswith(str(p.kind)) for p in problems)
