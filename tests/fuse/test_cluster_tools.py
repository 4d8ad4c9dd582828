"""The acceptance suite on the cluster backend, part 2: real programs on a real
mount of a real cluster - `git clone` of a local repository and `git fsck`,
a `tar` round trip compared byte for byte and attribute for attribute, and
close-to-open consistency between two mounts of the same cluster.

Every test ends with `ddfs fsck` finding nothing (`cluster_dir`'s teardown).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.fuse.cluster_support import cluster_mount
from tests.fuse.ddfs_mount import DdfsMount
from tests.fuse.test_fuse_tools import describe, make_tree, run
from tests.support.fs_cluster import FsCluster


def _git_env(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
    }


def _origin(path: Path, env: dict[str, str]) -> None:
    """A small repository on the local disk: 3 commits, 12 files in nested
    folders, an executable, a symlink, a binary file."""
    run("git", "init", "-q", "-b", "main", path, env=env)
    for commit in range(3):
        for i in range(12):
            f = path / f"d{i % 3}" / f"sub{i % 2}" / f"file{i}.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"commit {commit} file {i}\n" * (i * 20 + 1))
        (path / "bin.dat").write_bytes(os.urandom(200_000 + commit))
        run("git", "add", "-A", cwd=path, env=env)
        run("git", "commit", "-q", "-m", f"commit {commit}", cwd=path, env=env)
    (path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(path / "run.sh", 0o755)
    os.symlink("d0/sub0/file0.txt", path / "link")
    run("git", "add", "-A", cwd=path, env=env)
    run("git", "commit", "-q", "-m", "executable and link", cwd=path, env=env)


def test_git_clone_of_a_local_repository_and_git_fsck(cluster_dir: Path, tmp_path: Path) -> None:
    """A repository on the local disk cloned into the mount (over file://: one
    pack, then the checkout), checked, committed to, repacked and checked again.
    (Small on purpose: each small file costs one flush through the chunk
    servers and several metadata commits, ~50-300 ms on this 2-core machine.)"""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    env = _git_env(tmp_path)
    origin = tmp_path / "origin"
    _origin(origin, env)
    clone = cluster_dir / "clone"
    # No template: git's sample hooks would be a dozen more files to write.
    run("git", "clone", "-q", "--template=", f"file://{origin}", clone, env=env)
    run("git", "fsck", "--full", "--strict", cwd=clone, env=env)
    tree = ["git", "rev-parse", "HEAD^{tree}"]
    assert run(*tree, cwd=clone, env=env) == run(*tree, cwd=origin, env=env)
    # Every checked-out file matches the index (git rehashes each file's bytes).
    run("git", "update-index", "--really-refresh", cwd=clone, env=env)
    assert run("git", "status", "--porcelain", cwd=clone, env=env) == ""
    assert os.access(clone / "run.sh", os.X_OK) and os.readlink(clone / "link")
    (clone / "NEW.txt").write_text("a commit made in the mount\n")
    run("git", "add", "NEW.txt", cwd=clone, env=env)
    run("git", "commit", "-q", "-m", "in the mount", cwd=clone, env=env)
    run("git", "gc", "-q", cwd=clone, env=env)  # repacks: big files written, renamed, removed
    run("git", "fsck", "--full", "--strict", cwd=clone, env=env)
    assert run("git", "log", "--format=%s", cwd=clone, env=env).splitlines() == [
        "in the mount", "executable and link", "commit 2", "commit 1", "commit 0"]


def test_tar_round_trip_byte_for_byte(cluster_dir: Path, tmp_path: Path) -> None:
    """Every file type, odd modes, owners, sparse and large files, hard links,
    xattrs and times: extracted into the mount, archived again, extracted out;
    `describe` compares every file's bytes (SHA-256) and attributes.  (The two
    archives themselves differ: atime/ctime headers, and the mount reports no
    holes, so the sparse file is archived whole.)"""
    src, out = tmp_path / "src", tmp_path / "out"
    make_tree(src)
    flags = ["--xattrs", "--xattrs-include=user.*", "--format=posix", "--numeric-owner",
             "--sparse"]
    run("tar", *flags, "-C", src, "-cf", tmp_path / "a.tar", ".")
    run("tar", *flags, "-C", cluster_dir, "-xpf", tmp_path / "a.tar")
    assert describe(cluster_dir) == describe(src)
    run("tar", *flags, "-C", cluster_dir, "-cf", tmp_path / "b.tar", ".")
    out.mkdir()
    run("tar", *flags, "-C", out, "-xpf", tmp_path / "b.tar")
    assert describe(out) == describe(src)


def test_close_to_open_between_two_mounts(
    ddfs_cluster: FsCluster, cluster_mnt: DdfsMount, cluster_dir: Path
) -> None:
    with cluster_mount(ddfs_cluster) as other:
        there_dir = other.mountpoint / cluster_dir.name
        here, there = cluster_dir / "shared", there_dir / "shared"
        here.write_bytes(b"first version")
        assert there.read_bytes() == b"first version"
        with open(there, "rb") as reader:  # the other mount caches the first version
            assert reader.read() == b"first version"
            here.write_bytes(b"second, longer version")  # closed here: flushed
            assert there.read_bytes() == b"second, longer version"  # a new open sees it
        data = os.urandom(2 * 1024 * 1024)
        with open(there_dir / "back", "wb") as writer:  # and the other way round
            writer.write(data)
        assert (cluster_dir / "back").read_bytes() == data
        os.rename(there_dir / "back", there_dir / "renamed")
        os.unlink(there)
        # readdir is never answered from the kernel's cache (no cache_readdir)
        assert sorted(os.listdir(cluster_dir)) == ["renamed"]
        assert (cluster_dir / "renamed").read_bytes() == data
