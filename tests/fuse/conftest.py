"""Fixtures for tests on real FUSE mounts: the lossyfs crash-testing file
system, and one real ddfs cluster (3 metadata members, 3 chunk servers) with
a mount of it, shared by the package's cluster tests (tests/fuse/test_cluster_*.py).

`cluster_dir` is a fresh folder in that mount for one test; after the test
`ddfs fsck` (tools/fsck.py, complete: every data folder is local) must find
nothing, or the test errors in its teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.cluster_support import assert_fsck_clean, cluster_mount, running_cluster
from tests.fuse.ddfs_mount import DdfsMount
from tests.lossyfs.fixtures import lossy_mount, lossy_mount_factory
from tests.support.fs_cluster import FsCluster

__all__ = ["cluster_dir", "cluster_mnt", "ddfs_cluster", "lossy_mount", "lossy_mount_factory"]


@pytest.fixture(scope="package")
def ddfs_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsCluster]:
    with running_cluster(Path(tmp_path_factory.mktemp("ddfs-cluster"))) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def cluster_mnt(ddfs_cluster: FsCluster) -> Iterator[DdfsMount]:
    # test_cluster_timeout stops the metadata servers for a few seconds: a
    # keep-alive of this mount's session may fail meanwhile (and is retried).
    with cluster_mount(ddfs_cluster, allowed_warnings=(
            "keeping the metadata session alive failed",)) as mount:
        yield mount


@pytest.fixture
def cluster_dir(
    ddfs_cluster: FsCluster, cluster_mnt: DdfsMount, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """A fresh 0755 folder in the shared cluster mount; fsck-clean after the test."""
    path: Path = cluster_mnt.mountpoint / request.node.name
    path.mkdir()
    yield path
    assert_fsck_clean(ddfs_cluster)
