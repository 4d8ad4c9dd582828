"""`ddfs mount` / `ddfs umount` as commands: background mount, clear errors."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.ddfs_mount import REPO_ROOT
from tests.lossyfs.control import is_mounted, unmount_lazily
from tools import umount
from tools.cli import UserError


def mount_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.mount", *args], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=60, check=False,
    )


def pids_serving(mountpoint: Path) -> list[int]:
    """Mount processes whose command line names `mountpoint`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"tools.mount" in argv and str(mountpoint).encode() in argv:
                found.append(int(entry))
    return found


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        yield path
    finally:
        unmount_lazily(path)
        for pid in pids_serving(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_background_mount_then_umount(mountpoint: Path, tmp_path: Path) -> None:
    log = tmp_path / "mount.log"
    done = mount_command("--backend", "memfs", "--log-file", str(log), str(mountpoint))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"mounted at {mountpoint}\n"
    (mountpoint / "f").write_text("served by a detached process")
    assert (mountpoint / "f").read_text() == "served by a detached process"
    [daemon] = pids_serving(mountpoint)
    assert umount.run(argparse.Namespace(mountpoint=str(mountpoint), lazy=False)) == 0
    assert not is_mounted(mountpoint)
    deadline = time.monotonic() + 20
    while pids_serving(mountpoint):
        assert time.monotonic() < deadline, "the mount process outlived its mount"
        time.sleep(0.05)
    assert "unmounted" in log.read_text()
    assert daemon not in pids_serving(mountpoint)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--backend", "cluster"), "--meta"),
        (("--backend", "cluster", "--meta", "127.0.0.1:1", "--op-timeout", "1"), "secret"),
        (("--backend", "memfs", "-o", "max_read=4096"), "max_read"),
        (("--backend", "memfs", "-o", "no_such_option"), "fuse_session_new"),
        (("--backend", "memfs", "--op-timeout", "0"), "op_timeout"),
        (("--backend", "memfs", "--memfs-populate", "bad"), "NAME=N"),
    ],
)
def test_bad_requests_fail_with_one_line(
    mountpoint: Path, args: tuple[str, ...], message: str
) -> None:
    done = mount_command(*args, "--foreground", str(mountpoint))
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not is_mounted(mountpoint)


def test_a_missing_mountpoint_is_reported(tmp_path: Path) -> None:
    for foreground in ((), ("--foreground",)):
        done = mount_command("--backend", "memfs", *foreground, str(tmp_path / "nowhere"))
        assert done.returncode == 2 and "not a directory" in done.stderr


def test_umount_of_something_not_mounted_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        umount.run(argparse.Namespace(mountpoint=str(tmp_path), lazy=True))
