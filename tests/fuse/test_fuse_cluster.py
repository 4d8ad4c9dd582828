"""Real mounts of a real cluster (3 metadata members, 3 chunk servers on
loopback) through the networked client: data across chunk boundaries, a tar
round trip, an unlinked open file, and close-to-open between two mounts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.fuse.ddfs_mount import DdfsMount
from tests.fuse.test_fuse_tools import describe, make_tree, run
from tests.support.fs_cluster import FsCluster, fs_cluster

CHUNK = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsCluster]:
    with fs_cluster(Path(tmp_path_factory.mktemp("fuse-cluster"))) as c:

        async def ready() -> None:
            async with c.client() as rpc:
                await c.wait_ready(rpc)

        trio.run(ready)
        yield c


def cluster_mount(cluster: FsCluster) -> DdfsMount:
    backend = ("--backend", "cluster", "--meta", ",".join(cluster.endpoints),
               "--secret-file", str(cluster.secret_file))
    return DdfsMount("--op-timeout", "20", backend=backend)


@pytest.fixture(scope="module")
def mount(cluster: FsCluster) -> Iterator[DdfsMount]:
    with cluster_mount(cluster) as m:
        yield m


@pytest.fixture
def d(mount: DdfsMount, request: pytest.FixtureRequest) -> Path:
    path: Path = mount.mountpoint / request.node.name
    path.mkdir()
    return path


def test_data_across_chunk_boundaries(d: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    (d / "f").write_bytes(data)
    assert (d / "f").read_bytes() == data
    fd = os.open(d / "sparse", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"A" * 1000, CHUNK - 500)  # straddles chunks 0 and 1
        os.fsync(fd)
        assert os.fstat(fd).st_size == CHUNK + 500
        assert os.pread(fd, 1010, CHUNK - 505) == bytes(5) + b"A" * 1000 + bytes(0)
        assert os.pread(fd, 10, 1000) == bytes(10)  # a hole reads as zeros
    finally:
        os.close(fd)


def test_tar_round_trip(d: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    run("tar", "--xattrs", "--xattrs-include=user.*", "--format=posix", "--numeric-owner",
        "-C", src, "-cf", tmp_path / "a.tar", ".")
    run("tar", "--xattrs", "--xattrs-include=user.*", "--numeric-owner", "-C", d,
        "-xpf", tmp_path / "a.tar")
    assert describe(d) == describe(src)


def test_utimes_before_close_survives_the_flush(d: Path) -> None:
    with open(d / "f", "wb") as f:
        f.write(b"data written, then the time set, then closed (tar, cp -p, rsync)")
        f.flush()
        os.utime(d / "f", ns=(1_000_000_000, 2_000_000_000))
    assert (d / "f").stat().st_mtime_ns == 2_000_000_000


def test_unlinked_open_file_and_rename(d: Path) -> None:
    fd = os.open(d / "orphan", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"kept")
        os.unlink(d / "orphan")
        assert os.pread(fd, 10, 0) == b"kept"
    finally:
        os.close(fd)
    (d / "a").write_text("x")
    os.rename(d / "a", d / "b")
    os.link(d / "b", d / "c")
    assert (d / "c").stat().st_nlink == 2 and not (d / "a").exists()


def test_close_to_open_between_two_mounts(cluster: FsCluster, mount: DdfsMount) -> None:
    with cluster_mount(cluster) as other:
        here, there = mount.mountpoint / "shared", other.mountpoint / "shared"
        here.write_bytes(b"first version")
        assert there.read_bytes() == b"first version"
        with open(there, "rb") as reader:  # caches the first version's pages
            assert reader.read() == b"first version"
        here.write_bytes(b"second, longer version")  # closed: flushed
        assert there.read_bytes() == b"second, longer version"  # a new open sees it
