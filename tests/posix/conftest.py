"""The folders the POSIX conformance tests run in: every test runs three times,
in a fresh folder of

* `ddfs`: a mount of a real ddfs cluster (3 metadata members, 3 chunk servers),
  shared by the whole package; after each test `ddfs fsck` must find nothing;
* `memfs`: a mount of the in-memory backend, shared by the package;
* `ext4`: a folder on the local disk (under /tmp), the reference: a behaviour
  test that fails there is a wrong test.

Folders are 0755 under 0755 parents, so the tests' unprivileged processes
(uids 1000 and 1001) can reach them.  Needs root (other users, chown, mknod).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.cluster_support import assert_fsck_clean, cluster_mount, running_cluster
from tests.fuse.ddfs_mount import DdfsMount
from tests.support.fs_cluster import FsCluster

BACKENDS = ("ddfs", "memfs", "ext4")


@pytest.fixture(scope="package")
def posix_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsCluster]:
    with running_cluster(Path(tmp_path_factory.mktemp("posix-cluster"))) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def posix_ddfs(posix_cluster: FsCluster) -> Iterator[DdfsMount]:
    with cluster_mount(posix_cluster) as mount:
        yield mount


@pytest.fixture(scope="package")
def posix_memfs() -> Iterator[DdfsMount]:
    with DdfsMount() as mount:
        yield mount


@pytest.fixture(scope="package")
def posix_ext4() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ddfs-posix-", dir="/tmp"))
    try:
        root.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def d(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh 0755 folder, owned by root, on the backend of this run."""
    if os.geteuid() != 0:
        pytest.skip("the POSIX tests need root (other users, chown, mknod)")
    backend: str = request.param
    if backend == "ext4":
        parent: Path = request.getfixturevalue("posix_ext4")
    else:
        parent = request.getfixturevalue(f"posix_{backend}").mountpoint
    path = parent / request.node.name.replace("/", "_")
    path.mkdir()
    os.chmod(path, 0o755)
    yield path
    if backend == "ddfs":
        assert_fsck_clean(request.getfixturevalue("posix_cluster"))
