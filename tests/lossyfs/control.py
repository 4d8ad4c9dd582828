"""Start, crash and stop a lossyfs process from a test.

A crash is: SIGKILL the file-system process (its overlays, i.e. everything
not fsynced, die with it), lazily unmount the dead mount, and mount a fresh
process over the same backing folder.  Why not drop the overlays inside a
live process and invalidate the kernel's caches instead:

* dirty pages of shared writable mmaps (LMDB's lock file, writemap) that the
  kernel has not yet written back would be written back *after* the drop and
  resurrect data that a real crash loses;
* the kernel's page cache, attribute cache (file sizes) and dentries of the
  old mount must all go; a new mount is a new superblock, so they all do,
  with no call that could block on writeback (`invalidate_inode` can);
* a process that dies cannot half-keep anything.

Invariants: at most one file-system process per `LossyMount`; after
`kill()`, `stop()` or `close()` returns nothing is mounted at the mountpoint
and the process has been reaped; `start()` first removes whatever is left
mounted there (a stale mount from an earlier, killed run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0  # seconds for a fresh process to mount (2 busy cores)
STOP_TIMEOUT = 10.0  # seconds for a clean unmount before we kill instead
UNMOUNT_ATTEMPTS = 5


class LossyFSError(RuntimeError):
    """The file-system process failed to start or to go away."""


def is_mounted(mountpoint: Path) -> bool:
    """True if anything is mounted exactly at `mountpoint` (even a dead FUSE mount).

    os.path.ismount cannot tell: stat on a dead FUSE mount fails with ENOTCONN.
    """
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return True
    return False


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def unmount_lazily(mountpoint: Path) -> None:
    """Detach whatever is mounted at `mountpoint`; bounded retries, then raise."""
    for _ in range(UNMOUNT_ATTEMPTS):
        if not is_mounted(mountpoint):
            return
        done = subprocess.run(
            ["fusermount3", "-u", "-z", str(mountpoint)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
    if is_mounted(mountpoint):
        raise LossyFSError(f"cannot unmount {mountpoint}")


class LossyMount:
    """One lossyfs process serving `backing` at `mountpoint`."""

    def __init__(
        self, backing: Path, mountpoint: Path, log_path: Path, *, debug: bool = False
    ) -> None:
        self.backing = backing  # the durable contents: read it to see what a crash keeps
        self.mountpoint = mountpoint  # run the program under test here
        self.log_path = log_path  # the file-system process's stderr, appended across restarts
        self.crashes = 0  # how many times crash() ran
        self._debug = debug
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Mount a fresh process; returns once the mount answers."""
        if self._proc is not None:
            raise LossyFSError("already started")
        # Detach a stale mount first: stat (inside mkdir) fails on a dead one.
        unmount_lazily(self.mountpoint)
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        read_end, write_end = os.pipe()
        try:
            self._proc = self._spawn(write_end)
            os.close(write_end)
            write_end = -1
            self._await_ready(read_end)
        except BaseException:
            self.kill()
            raise
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)

    def crash(self) -> None:
        """Lose everything not fsynced, then mount again over the backing folder.

        Kill the program under test first: its open files die with the old
        mount (they fail with ENOTCONN).
        """
        self.kill()
        self.crashes += 1
        self.start()

    def kill(self) -> None:
        """SIGKILL the file system (no flushing) and detach its mount."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        unmount_lazily(self.mountpoint)

    def stop(self) -> None:
        """Clean unmount: the process flushes every overlay, then unmounts."""
        proc = self._proc
        if proc is None:
            unmount_lazily(self.mountpoint)
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("lossyfs %d ignored SIGTERM; killing it", proc.pid)
        self.kill()

    def close(self) -> None:
        """Teardown for fixtures: never leaves a process or a mount behind."""
        self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> LossyMount:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _spawn(self, ready_fd: int) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "tests.lossyfs", str(self.backing), str(self.mountpoint)]
        argv += ["--ready-fd", str(ready_fd), "--watch-parent"]
        if self._debug:
            argv.append("--debug")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with open(self.log_path, "ab") as log_file:
            return subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                pass_fds=(ready_fd,),
                start_new_session=True,  # a Ctrl-C at the terminal must not crash it by accident
            )

    def _await_ready(self, read_end: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([read_end], [], [], min(left, 0.5))
            if readable:
                if os.read(read_end, 64).startswith(b"ready"):
                    return
                break  # EOF: the process exited before mounting
            if not self.running:
                break
        raise LossyFSError(
            f"lossyfs did not mount {self.mountpoint}; its log:\n{self.log_text()[-4000:]}"
        )
