"""A ddfs mount in its own process, for tests on real mounts.

`DdfsMount` runs `python -m tools.mount --backend memfs --foreground
--watch-parent ... MOUNTPOINT` (or another backend) and waits for
"mounted at".  The mountpoint
lives in a fresh 0755 folder under /tmp (not under pytest's 0700 tmp_path),
so unprivileged test processes can reach it.

Invariants: `start()` first detaches whatever is mounted at the mountpoint
(a stale mount of an earlier, killed run); after `close()` nothing is
mounted there, the process is reaped, and the folder is removed (only once
nothing is mounted in it).  `--watch-parent` makes the mount go away by
itself if the test runner dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.lossyfs.control import is_mounted, unmount_lazily

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0  # seconds to mount (2 busy cores)
STOP_TIMEOUT = 10.0  # seconds for a clean unmount before we kill
UNPRIVILEGED_PYTHON = "/usr/bin/python3"  # the venv's interpreter lives under /root (0700)


class DdfsMount:
    """One mount process; `.mountpoint`, `.pid`, `.rss_kb()`, `.signal()`."""

    def __init__(
        self, *extra_args: str, backend: tuple[str, ...] = ("--backend", "memfs"),
        allowed_warnings: tuple[str, ...] = (),
    ) -> None:
        self.extra_args = extra_args  # e.g. ("--op-timeout", "1", "--memfs-test-hooks")
        self.backend = backend  # e.g. ("--backend", "cluster", "--meta", ...)
        self.allowed_warnings = allowed_warnings  # log lines a test expects
        self.root = Path(tempfile.mkdtemp(prefix="ddfs-fuse-", dir="/tmp"))
        self.root.chmod(0o755)
        self.mountpoint = self.root / "mnt"
        self.log_path = self.root / "mount.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def start(self) -> None:
        unmount_lazily(self.mountpoint)
        self.mountpoint.mkdir(exist_ok=True)
        argv = [
            sys.executable, "-m", "tools.mount", *self.backend, "--foreground",
            "--watch-parent", *self.extra_args, str(self.mountpoint),
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=log_file, start_new_session=True,
            )
        try:
            self._await_ready()
        except BaseException:
            self.close()
            raise

    def _await_ready(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._proc.stdout], [], [], min(left, 0.5))
            if readable:
                line = self._proc.stdout.readline()
                if line.startswith(b"mounted at"):
                    return
                break  # EOF: the process exited
            if self._proc.poll() is not None:
                break
        raise RuntimeError(f"ddfs mount did not come up; log:\n{self.log_text()[-4000:]}")

    def signal(self, signum: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(signum)

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def problems(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """Log lines at WARNING or worse (and tracebacks) not matching `allowed`."""
        bad = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")
        return [
            line for line in self.log_text().splitlines()
            if any(word in line for word in bad) and not any(a in line for a in allowed)
        ]

    def stop(self) -> int | None:
        """Clean unmount via SIGTERM (kill after STOP_TIMEOUT); the exit status."""
        proc, self._proc = self._proc, None
        status = None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                status = proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        unmount_lazily(self.mountpoint)
        return status

    def close(self) -> None:
        self.stop()
        if not is_mounted(self.mountpoint):
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> DdfsMount:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Unmount cleanly; a clean exit also demands a log without warnings."""
        try:
            status = self.stop()
            if exc_type is None:
                assert status == 0, f"mount exited with {status}:\n{self.log_text()[-4000:]}"
                problems = self.problems(self.allowed_warnings)
                assert not problems, "the mount logged:\n" + "\n".join(problems[:20])
        finally:
            self.close()


# A tiny interpreter run as another user: it applies os-level operations and
# reports each outcome as "ok" (with a JSON-able result) or an errno name.
_RUNNER = r"""
import errno, json, os, sys

def touch(path, mode=0o644):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, mode))

def write(path, data):
    with open(path, "w") as f:
        f.write(data)

def read(path):
    with open(path) as f:
        return f.read()

def groups():
    return sorted(os.getgroups())

def utime(path, atime, mtime):
    os.utime(path, (atime, mtime))

extra = {"touch": touch, "write": write, "read": read, "groups": groups, "utime": utime}
results = []
for op, *args in json.loads(sys.argv[1]):
    try:
        out = extra[op](*args) if op in extra else getattr(os, op)(*args)
        results.append("ok" if out is None else out)
    except OSError as exc:
        results.append(errno.errorcode.get(exc.errno, str(exc.errno)))
print(json.dumps(results))
"""


def run_as(
    uid: int, gid: int, groups: list[int], ops: list[list[object]], timeout: float = 60.0
) -> list[object]:
    """Run `ops` ([name, *args], os functions or touch/write/read/groups) as another user."""
    if not os.path.exists(UNPRIVILEGED_PYTHON):
        raise RuntimeError(f"{UNPRIVILEGED_PYTHON} is needed to run code as another user")
    done = subprocess.run(
        [UNPRIVILEGED_PYTHON, "-c", _RUNNER, json.dumps(ops)],
        user=uid, group=gid, extra_groups=groups, cwd="/", capture_output=True,
        timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace"))
    results: list[object] = json.loads(done.stdout)
    return results
