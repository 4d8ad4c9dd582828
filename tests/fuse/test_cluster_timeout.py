"""The acceptance suite on the cluster backend, part 4: with every metadata
server stopped (SIGSTOP: connections open, nothing answers - the worst case,
worse than refused connections), calls on the mount answer ETIMEDOUT within
the mount's operation timeout and never hang; once the servers resume, the
mount works again, and fsck finds nothing.

A `write` itself succeeds: the client buffers writes (write-behind, as NFS
does) and reports the failure to store them at the next fsync or close -
so the test checks write-then-fsync; the fsync answers ETIMEDOUT.

The calls run in threads with a generous bound (3 x the operation timeout +
10 s) so that a hang fails the test instead of stopping the run; the bound
is a hang detector, not a performance figure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.fuse.cluster_support import cluster_mount, meta_stopped
from tests.support.fs_cluster import FsCluster

MiB = 1024 * 1024
OP_TIMEOUT = 2.0
BOUND = 3 * OP_TIMEOUT + 10
EXPECTED_WARNINGS = (
    "no answer within",  # the mount's edge, if the client's own bound is not first
    "buffered data of inode",  # the fsync'd data could not be written
    "keeping the metadata session alive failed",
)


def _outcome(call: Callable[[], object]) -> tuple[str, float]:
    """(errno name or "ok", seconds taken), or ("hang", BOUND) past the bound."""
    result: list[tuple[str, float]] = []

    def run() -> None:
        started = time.monotonic()
        try:
            call()
            name = "ok"
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        result.append((name, time.monotonic() - started))

    worker = threading.Thread(target=run, daemon=True)  # a hung one dies with the mount
    worker.start()
    worker.join(BOUND)
    return result[0] if result else ("hang", BOUND)


def test_calls_answer_etimedout_while_the_metadata_servers_are_stopped(
    ddfs_cluster: FsCluster, cluster_dir: Path
) -> None:
    (cluster_dir / "existing").write_bytes(b"x" * 100_000)
    mount = cluster_mount(ddfs_cluster, "--op-timeout", str(OP_TIMEOUT),
                          allowed_warnings=EXPECTED_WARNINGS)
    with mount:
        here = mount.mountpoint / cluster_dir.name
        # Opened while the servers answer; an open drops the file's cached chunk
        # locations (close-to-open), so the first read must ask the metadata service.
        reader = os.open(here / "existing", os.O_RDONLY)
        writer = os.open(here / "new", os.O_CREAT | os.O_WRONLY, 0o644)
        other = os.open(here / "other", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            with meta_stopped(ddfs_cluster):
                outcomes = {
                    "stat of a new name": _outcome(lambda: os.stat(here / "absent")),
                    "read": _outcome(lambda: os.pread(reader, 100, 0)),
                    # Write-behind (NFS-like): a write is accepted into the client's
                    # buffer; the failure to store it is reported by fsync (or close).
                    "write": _outcome(lambda: os.write(writer, b"data")),
                    "fsync": _outcome(lambda: os.fsync(writer)),
                    # 40 MiB, past the 16 MiB buffer: flushes start (and fail) meanwhile.
                    "big write": _outcome(lambda: os.write(other, bytes(40 * MiB))),
                    "its fsync": _outcome(lambda: os.fsync(other)),
                    "mkdir": _outcome(lambda: os.mkdir(here / "dir")),
                }
            print(outcomes)
            names = {what: name for what, (name, _) in outcomes.items()}
            assert names.pop("write") == "ok"
            assert names.pop("big write") in ("ok", "ETIMEDOUT")
            assert names == dict.fromkeys(names, "ETIMEDOUT")
            assert all(taken < BOUND for _, taken in outcomes.values())
            # The servers are back: the same mount works again.
            assert os.pread(reader, 100, 0) == b"x" * 100
            (here / "after").write_bytes(b"written after the stop")
            assert (here / "after").read_bytes() == b"written after the stop"
        finally:
            os.close(reader)
            for fd in (writer, other):
                with contextlib.suppress(OSError):  # the failed data may be reported again
                    os.close(fd)
