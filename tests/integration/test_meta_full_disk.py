"""A `ddfs meta` member whose disk fills up: it stops with one clear line (a
member that cannot make its state durable must not go on answering), and
every write it acknowledged is there once it has room again."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from coord.kv.remote import KvClient
from tests.support.meta_cluster import MetaCluster, meta_cluster


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, unmounted afterwards whatever happens."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def _fill(cluster: MetaCluster) -> dict[bytes, bytes]:
    """Put 16 KiB values until the member stops answering; what was acknowledged."""
    acked: dict[bytes, bytes] = {}
    async with cluster.client() as rpc:
        await cluster.wait_leader(rpc)
        kv = KvClient(rpc, cluster.endpoints, timeout=3.0, attempt_timeout=1.0)
        await kv.open()
        for n in range(2000):  # 32 MiB at most: far more than the disk holds
            key, value = b"k%05d" % n, bytes([n % 251]) * (16 << 10)
            try:
                await kv.put(key, value)
            except Exception:  # the member stopped: the write was not acknowledged
                break
            acked[key] = value
    return acked


async def _read_all(cluster: MetaCluster, keys: list[bytes]) -> dict[bytes, bytes | None]:
    async with cluster.client() as rpc:
        await cluster.wait_leader(rpc)
        kv = KvClient(rpc, cluster.endpoints, timeout=10.0)
        await kv.open()
        out: dict[bytes, bytes | None] = {}
        for key in keys:
            kv_pair = await kv.get(key)
            out[key] = None if kv_pair is None else kv_pair.value
        return out


def test_a_full_disk_stops_the_member_with_one_line_and_loses_nothing(
    tmp_path: Path, tiny_fs: Path
) -> None:
    with meta_cluster(tmp_path, 1, data_dirs={1: tiny_fs / "m1"}) as cluster:
        acked = trio.run(_fill, cluster)
        member = cluster.members[1]
        assert member.popen is not None
        assert member.popen.wait(timeout=30) == 2, cluster.logs()
        out = member.output()
        assert "stopped, its storage failed" in out and "disk full?" in out, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        assert 10 < len(acked) < 2000  # some writes went in, and the disk did fill

        subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_fs)], check=True)
        cluster.start(1)
        seen = trio.run(_read_all, cluster, list(acked))
        assert seen == acked
