"""Limits of a real mount: a 100,000-entry directory lists in bounded memory,
and a hung backend is answered with ETIMEDOUT instead of hanging the caller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

from fs.types import Attr, DirEntry, InodeId
from tests.fuse.ddfs_mount import DdfsMount

ENTRIES = 100_000


def materialized_bytes(count: int) -> int:
    """What holding a whole listing as DirEntry objects costs (a lower bound for
    any layer that reads a directory completely before answering)."""
    tracemalloc.start()
    try:
        held = [
            DirEntry(b"f%d" % i, Attr(InodeId(7), 0o100644, 1, 0, 0, 0, 1, 2, 3), i + 1)
            for i in range(count)
        ]
        size = tracemalloc.get_traced_memory()[0]
        del held
    finally:
        tracemalloc.stop()
    return size


def test_listing_100k_entries_returns_each_once_in_bounded_memory() -> None:
    with DdfsMount("--memfs-populate", f"big={ENTRIES}") as mount:
        before_kb = mount.rss_kb()
        seen: set[str] = set()
        count = 0
        with os.scandir(mount.mountpoint / "big") as entries:
            for entry in entries:
                seen.add(entry.name)
                count += 1
        grown = (mount.rss_kb() - before_kb) * 1024
        assert count == ENTRIES and seen == {f"f{i}" for i in range(ENTRIES)}
        bound = materialized_bytes(ENTRIES) // 4
        assert grown < bound, f"the mount grew by {grown} bytes (bound {bound})"


def _wait_for_log(mount: DdfsMount, text: str) -> None:
    deadline = time.monotonic() + 20
    while text not in mount.log_text():
        assert time.monotonic() < deadline, f"the mount never logged {text!r}"
        time.sleep(0.05)


_PROBE = r"""
import errno, json, os, sys
out = []
def attempt(fn, *args):
    try:
        fn(*args)
        out.append("ok")
    except OSError as exc:
        out.append(errno.errorcode.get(exc.errno, str(exc.errno)))
mnt = sys.argv[1]
attempt(os.stat, os.path.join(mnt, "never-looked-up"))
fd = int(sys.argv[2])
attempt(os.pwrite, fd, b"more", 0)
attempt(os.pread, fd, 10, 0)
print(json.dumps(out))
"""


def test_a_hung_backend_is_answered_with_etimedout() -> None:
    allowed = ("no answer within", "test hook", "FsApi.forget", "Traceback")
    with DdfsMount("--op-timeout", "1", "--memfs-test-hooks",
                   allowed_warnings=allowed) as mount:
        path = mount.mountpoint / "f"
        path.write_bytes(b"data")
        fd = os.open(path, os.O_RDWR)
        try:
            mount.signal(signal.SIGUSR1)
            _wait_for_log(mount, "file-system calls hang")
            # A child process: if the mount did hang, the timeout kills the
            # child (FUSE waits are killable) and the test fails instead of hanging.
            probe = subprocess.run(
                [sys.executable, "-c", _PROBE, str(mount.mountpoint), str(fd)],
                pass_fds=(fd,), capture_output=True, text=True, timeout=60, check=True,
            )
            stat_result, write_result, read_result = json.loads(probe.stdout)
            assert stat_result == "ETIMEDOUT"
            assert write_result == "ETIMEDOUT"
            assert read_result == "ETIMEDOUT"
            mount.signal(signal.SIGUSR2)
            _wait_for_log(mount, "file-system calls resume")
            os.pwrite(fd, b"DATA", 0)
        finally:
            os.close(fd)
        assert path.read_bytes() == b"DATA"
