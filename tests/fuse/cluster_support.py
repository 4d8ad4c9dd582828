"""A real ddfs cluster with real mounts, shared by many tests, each ending in fsck.

    with running_cluster(base) as cluster:                 # 3 meta + 3 chunk processes
        with cluster_mount(cluster) as mount:              # `ddfs mount --backend cluster`
            ...
            assert_fsck_clean(cluster)                     # `ddfs fsck` finds nothing

Used by the fixtures of tests/fuse/conftest.py and tests/posix/conftest.py.

Invariants: every process started here is stopped and reaped when its
context manager exits, also when a test fails; the fsck is the complete
one (`tools.fsck.check_cluster` with every data folder local: the
namespace from a member's own state after a read barrier, every replica
probed, the replica files on disk listed), so it judges orphans and
garbage too.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from fs.fsck import Problem
from tests.fuse.ddfs_mount import UNPRIVILEGED_PYTHON, DdfsMount
from tests.support.fs_cluster import FsCluster, fs_cluster
from tools.fsck import FsckTarget, fsck_problems

OP_TIMEOUT = 20.0  # the shared mounts' --op-timeout (seconds)


@contextmanager
def running_cluster(base: Path) -> Iterator[FsCluster]:
    """A 3 + 3 cluster under `base`, with a leader that sees every chunk server."""
    with fs_cluster(base) as cluster:
        trio.run(_ready, cluster)
        yield cluster


async def _ready(cluster: FsCluster) -> None:
    async with cluster.client() as rpc:
        await cluster.wait_ready(rpc)


def cluster_backend(cluster: FsCluster) -> tuple[str, ...]:
    return ("--backend", "cluster", "--meta", ",".join(cluster.endpoints),
            "--secret-file", str(cluster.secret_file))


def cluster_mount(cluster: FsCluster, *extra: str,
                  allowed_warnings: tuple[str, ...] = ()) -> DdfsMount:
    """A mount of `cluster` (not started: use it as a context manager)."""
    args = extra if "--op-timeout" in extra else ("--op-timeout", str(OP_TIMEOUT), *extra)
    return DdfsMount(*args, backend=cluster_backend(cluster), allowed_warnings=allowed_warnings)


def fsck_target(cluster: FsCluster) -> FsckTarget:
    """Everything local: metadata state folders, chunk folders and addresses."""
    return FsckTarget(
        endpoints=tuple(cluster.endpoints), secret=cluster.secret, replicas=3,
        meta_data={i: cluster.base / f"meta{i}" for i in cluster.meta.ids},
        chunk_data={i: cluster.base / f"chunk{i}" for i in cluster.chunks},
        chunk_addresses=dict(cluster.chunk_addresses),
    )


def fsck(cluster: FsCluster) -> list[Problem]:
    return fsck_problems(fsck_target(cluster))


def assert_fsck_clean(cluster: FsCluster) -> None:
    problems = fsck(cluster)
    assert not problems, "ddfs fsck found:\n" + "\n".join(str(p) for p in problems[:20])


@contextmanager
def meta_stopped(cluster: FsCluster) -> Iterator[None]:
    """Every metadata member stopped (SIGSTOP: connections hang, nothing answers),
    resumed on exit, and a leader again before the block's caller goes on."""
    stopped = [m for m in cluster.meta.members.values() if m.running]
    try:
        for member in stopped:
            os.kill(member.pid, signal.SIGSTOP)
        yield
    finally:
        for member in stopped:
            os.kill(member.pid, signal.SIGCONT)
        trio.run(_ready, cluster)


def run_code_as(uid: int, gid: int, groups: list[int], code: str, timeout: float = 60.0) -> str:
    """Run Python `code` as another user (the system interpreter: the venv's is
    under /root); its stdout, or "E<NAME>" if it raised OSError."""
    wrapped = ("import errno, os, sys\ntry:\n"
               + "".join(f"    {line}\n" for line in code.splitlines())
               + "except OSError as exc:\n    print(errno.errorcode[exc.errno], end='')\n")
    done = subprocess.run(
        [UNPRIVILEGED_PYTHON, "-c", wrapped], user=uid, group=gid, extra_groups=groups,
        cwd="/", capture_output=True, text=True, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return done.stdout
