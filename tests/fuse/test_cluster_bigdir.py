"""The acceptance suite on the cluster backend, part 3: a directory of 100,000
entries, listed, looked up and changed through a real mount.

Creating the entries through the mount is too slow for the suite: measured
at 37-88 creates per second (`open(O_CREAT)`+`close`, each a Create and a
Release through Raft, fsynced on three members) on this 2-core machine,
busy to quiet - 100,000 would take 19 to 45 minutes, far over 60 s.  So the
entries are created through the metadata client directly
(`MetaClient.mknod`, 256 in flight in one session: 1,300-3,400 per second,
30-80 s) and everything else goes through the mount: listing (2.8-4.8 s),
lookups, a write, a rename, an unlink, a create.  The test prints the rates
it saw (`pytest -s`).

This module has its own cluster (not the package's shared one): every
`ddfs fsck` reads the whole namespace, and 100,000 more entries would slow
every later test's check.  It ends, like the others, with fsck finding
nothing.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fs.meta.client import MetaClient
from fs.types import ROOT_CRED, ROOT_INODE, InodeId
from tests.fuse.cluster_support import assert_fsck_clean, cluster_mount, running_cluster
from tests.fuse.ddfs_mount import DdfsMount
from tests.support.fs_cluster import FsCluster

ENTRIES = 100_000
IN_FLIGHT = 256
THROUGH_MOUNT = 300  # creates timed through the mount


@pytest.fixture(scope="module")
def big_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsCluster]:
    with running_cluster(Path(tmp_path_factory.mktemp("bigdir-cluster"))) as cluster:
        yield cluster


def _name(i: int) -> str:
    return f"entry-{i:06d}"


async def _populate(cluster: FsCluster, folder: bytes) -> None:
    """`ENTRIES` empty files in /`folder`, `IN_FLIGHT` mknods at a time."""
    async with cluster.client() as rpc, MetaClient(rpc, cluster.endpoints, timeout=60) as meta:
        parent = (await meta.mkdir(ROOT_INODE, folder, 0o755, ROOT_CRED)).inode

        async def worker(first: int) -> None:
            for i in range(first, ENTRIES, IN_FLIGHT):
                await meta.mknod(InodeId(parent), _name(i).encode(), stat.S_IFREG | 0o644, 0,
                                 ROOT_CRED)

        async with trio.open_nursery() as nursery:
            for first in range(IN_FLIGHT):
                nursery.start_soon(worker, first)


def _creates_per_second(folder: Path) -> float:
    started = time.perf_counter()
    for i in range(THROUGH_MOUNT):
        os.close(os.open(folder / f"timed-{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    return THROUGH_MOUNT / (time.perf_counter() - started)


def test_a_directory_of_100000_entries(big_cluster: FsCluster) -> None:
    with cluster_mount(big_cluster) as mount:
        _check_big_directory(big_cluster, mount)
    assert_fsck_clean(big_cluster)


def _check_big_directory(cluster: FsCluster, mount: DdfsMount) -> None:
    timed = mount.mountpoint / "timed"
    timed.mkdir()
    rate = _creates_per_second(timed)
    started = time.perf_counter()
    trio.run(_populate, cluster, b"big")
    made = time.perf_counter() - started
    print(f"\ncreates through the mount: {rate:.0f}/s ({ENTRIES / rate:.0f} s for {ENTRIES}); "
          f"through MetaClient, {IN_FLIGHT} in flight: {ENTRIES / made:.0f}/s ({made:.0f} s)")
    big = mount.mountpoint / "big"
    started = time.perf_counter()
    names = os.listdir(big)
    print(f"listing {len(names)} entries through the mount: {time.perf_counter() - started:.1f} s")
    assert len(names) == ENTRIES and set(names) == {_name(i) for i in range(ENTRIES)}
    for i in (0, 1, ENTRIES // 2, ENTRIES - 1):  # lookups among 100,000 names
        assert (big / _name(i)).stat().st_size == 0
    assert not (big / "entry-100000").exists()
    (big / _name(7)).write_bytes(b"changed through the mount")
    os.rename(big / _name(8), big / "renamed")
    os.unlink(big / _name(9))
    (big / "new").write_bytes(b"")
    after = set(os.listdir(big))
    assert len(after) == ENTRIES and {"renamed", "new"} <= after
    assert not {_name(8), _name(9)} & after
    assert (big / _name(7)).read_bytes() == b"changed through the mount"
    with os.scandir(big) as it:  # readdir with attributes: each entry's type
        assert sum(1 for e in it if e.is_file(follow_symlinks=False)) == ENTRIES
