"""Real programs on a real mount: tar round trip, git, cp -a, mv, rm -r.

Every test compares trees byte for byte and attribute for attribute
(type, mode, owner, size, mtime, link target, device number, user xattrs,
hard-link grouping) and ends with the mount's inode count back where it was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.ddfs_mount import DdfsMount

ALICE, STAFF = 1000, 2001


@pytest.fixture(scope="module")
def mount() -> Iterator[DdfsMount]:
    with DdfsMount() as m:
        yield m


def run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def make_tree(root: Path) -> None:
    """Every file type, odd modes and owners, sparse and large files, hard links, xattrs."""
    root.mkdir()
    (root / "dir").mkdir(mode=0o750)
    (root / "setgid").mkdir()
    os.chmod(root / "setgid", 0o2775)
    (root / "empty").write_bytes(b"")
    (root / "small").write_bytes(b"small\n")
    (root / "dir" / "random").write_bytes(os.urandom(300_000))
    (root / "name with spaces and ünïcode").write_text("x")
    (root / ("L" * 255)).write_text("long name")
    with open(root / "sparse", "wb") as sparse:
        sparse.seek(10 * 1024 * 1024)
        sparse.write(b"end")
    os.link(root / "small", root / "dir" / "hardlink")
    os.symlink("small", root / "rel-link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.mkfifo(root / "fifo", 0o620)
    os.mknod(root / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 7))
    os.mknod(root / "blk", stat.S_IFBLK | 0o640, os.makedev(7, 3))
    os.chmod(root / "small", 0o4755)
    os.chown(root / "dir" / "random", ALICE, STAFF)
    os.chown(root / "rel-link", ALICE, ALICE, follow_symlinks=False)
    os.setxattr(root / "small", "user.comment", b"tagged")
    os.setxattr(root / "dir", "user.dirattr", b"\x00\x01binary")
    for i, path in enumerate(sorted(root.rglob("*"))):
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_500_000_000_123_456_789 + i * 1000),
                 follow_symlinks=False)
    os.utime(root, ns=(1_600_000_000_000_000_000, 1_500_000_000_000_000_000))


def contents(root: Path) -> dict[str, object]:
    """Path -> content digest (files) or target (symlinks): what git keeps."""
    return {rel: attrs[6] for rel, attrs in describe(root).items() if attrs[6] is not None}


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Path -> attributes and content digest; hard links become a group number."""
    out: dict[str, tuple[object, ...]] = {}
    groups: dict[tuple[int, int], int] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        if stat.S_ISREG(st.st_mode):
            content: object = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        else:
            content = None
        xattrs = () if stat.S_ISLNK(st.st_mode) else tuple(
            sorted((n, os.getxattr(path, n)) for n in os.listxattr(path) if n.startswith("user."))
        )
        group = groups.setdefault((st.st_dev, st.st_ino), len(groups)) if st.st_nlink > 1 else -1
        size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0  # directory sizes are fs-specific
        mtime = st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else 0  # symlinks: not kept by all
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, size, mtime, st.st_rdev, content,
                    xattrs, group, st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0)
    return out


def inodes_in_use(mount: DdfsMount) -> int:
    sv = os.statvfs(mount.mountpoint)
    return sv.f_files - sv.f_ffree


def test_tar_round_trip(mount: DdfsMount, tmp_path: Path) -> None:
    baseline = inodes_in_use(mount)
    src, out = tmp_path / "src", tmp_path / "out"
    make_tree(src)
    inside = mount.mountpoint / "tar"
    inside.mkdir()
    flags = ["--xattrs", "--xattrs-include=user.*", "--format=posix", "--numeric-owner",
             "--sparse"]
    run("tar", *flags, "-C", src, "-cf", tmp_path / "a.tar", ".")
    run("tar", *flags, "-C", inside, "-xpf", tmp_path / "a.tar")
    assert describe(inside) == describe(src)
    run("tar", *flags, "-C", inside, "-cf", tmp_path / "b.tar", ".")
    out.mkdir()
    run("tar", *flags, "-C", out, "-xpf", tmp_path / "b.tar")
    assert describe(out) == describe(src)
    shutil.rmtree(inside)
    assert inodes_in_use(mount) == baseline


def test_cp_a_mv_and_rm_r(mount: DdfsMount, tmp_path: Path) -> None:
    baseline = inodes_in_use(mount)
    src = tmp_path / "src"
    make_tree(src)
    copy = mount.mountpoint / "copy"
    run("cp", "-a", src, copy)
    assert describe(copy) == describe(src)
    elsewhere = mount.mountpoint / "elsewhere"
    elsewhere.mkdir()
    moved_before = describe(copy / "dir")
    run("mv", copy / "dir", elsewhere / "dir")  # a rename inside the mount
    assert describe(elsewhere / "dir") == moved_before
    assert not (copy / "dir").exists()
    run("mv", copy, tmp_path / "back")  # across file systems: copy + remove
    assert not copy.exists()
    run("rm", "-r", elsewhere, tmp_path / "back")
    assert os.listdir(mount.mountpoint).count("elsewhere") == 0
    assert inodes_in_use(mount) == baseline


def test_git_init_commit_clone_and_fsck(mount: DdfsMount, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = {
        "HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    origin = tmp_path / "origin"
    run("git", "init", "-q", "-b", "main", origin, env=env)
    make_tree(origin / "tree")
    for path in ("tree/fifo", "tree/chr", "tree/blk"):
        os.unlink(origin / path)  # git tracks files and links only
    run("git", "add", "-A", cwd=origin, env=env)
    run("git", "commit", "-q", "-m", "first", cwd=origin, env=env)
    repo = mount.mountpoint / "repo"
    run("git", "init", "-q", "-b", "main", repo, env=env)
    for i in range(30):
        (repo / f"file{i}.txt").write_text(f"content {i}\n" * (i + 1))
    run("git", "add", ".", cwd=repo, env=env)
    run("git", "commit", "-q", "-m", "in the mount", cwd=repo, env=env)
    (repo / "file0.txt").write_text("changed\n")
    run("git", "commit", "-q", "-am", "second", cwd=repo, env=env)
    run("git", "gc", "-q", cwd=repo, env=env)
    run("git", "fsck", "--full", "--strict", cwd=repo, env=env)
    clone = mount.mountpoint / "clone"
    run("git", "clone", "-q", origin, clone, env=env)  # from the local disk
    run("git", "fsck", "--full", cwd=clone, env=env)
    assert contents(clone / "tree") == contents(origin / "tree")
    local = mount.mountpoint / "local-clone"
    run("git", "clone", "-q", repo, local, env=env)  # inside the mount: hard links
    run("git", "fsck", "--full", cwd=local, env=env)
    assert run("git", "log", "--format=%s", cwd=local, env=env).split() == ["second", "in", "the",
                                                                           "mount"]
    assert run("git", "status", "--porcelain", cwd=local, env=env) == ""
    shutil.rmtree(repo)
    shutil.rmtree(clone)
    shutil.rmtree(local)
