"""Detached processes with pid files, and FUSE mount points, for `ddfs cluster`
and the tests that drive it.

A daemon is started in its own session (setsid: no controlling terminal, so
closing the terminal or Ctrl-C in it does not reach it), with stdin from
/dev/null and stdout/stderr appended to its log file, and a pid file that
records the pid *and the process's start time* (/proc/PID/stat field 22).

Invariants:

* A pid file names a live daemon only if a process with that pid exists, is
  not a zombie, and started at the recorded time: a pid reused by an
  unrelated process after a crash is never mistaken for the daemon, and is
  never signalled.
* `stop` signals only processes named by such a verified record, and
  removes the pid file once the process is gone; it never matches
  processes by name.
* A mount point is "dead" when it is still in the mount table but statvfs()
  fails (ENOTCONN: its FUSE server died); only a lazy unmount clears it.

Linux only (/proc, fusermount3).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class DaemonSpec:
    name: str  # "meta1", "chunk2", "mount": names the pid and log files
    argv: tuple[str, ...]
    run_dir: Path  # pid files
    log_dir: Path
    cwd: Path | None = None

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"


# --- pid files ---------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live, non-zombie process, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(")") + 2:].split()
    state, started = fields[0], fields[19]
    return None if state in ("Z", "X") else int(started)


def read_record(pid_file: Path) -> tuple[int, int] | None:
    """(pid, start time) from a pid file, None if absent or malformed."""
    try:
        words = pid_file.read_text().split()
        return int(words[0]), int(words[1])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(pid_file: Path) -> int | None:
    """The pid of the live daemon the file names (see the module invariants), else None."""
    record = read_record(pid_file)
    if record is None:
        return None
    pid, started = record
    return pid if start_time(pid) == started else None


def _write_pid_file(path: Path, pid: int, started: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid} {started}\n")
    os.replace(tmp, path)


def remove_pid_file(spec: DaemonSpec) -> None:
    with contextlib.suppress(FileNotFoundError):
        spec.pid_file.unlink()


# --- starting and stopping ---------------------------------------------------------------------


# Runs in a short-lived intermediate process: starts the daemon in a new session
# and exits at once, so the daemon is re-parented (to init or a subreaper) and
# never becomes a zombie, nor a Popen object, of the process that asked for it.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,\n"
    "                     stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)\n"
    "print(p.pid, flush=True)\n"
    "os._exit(0)\n"
)


def start(spec: DaemonSpec, env: dict[str, str] | None = None) -> int:
    """Start `spec` detached; write its pid file; return the pid."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    with spec.log_file.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                  f"{' '.join(spec.argv)}\n".encode())
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(spec.log_file), *spec.argv],
        capture_output=True, text=True, timeout=60, check=False, cwd=spec.cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    if launched.returncode != 0 or not launched.stdout.strip().isdigit():
        raise OSError(f"cannot start {spec.name}: {launched.stderr.strip() or 'no pid'}")
    pid = int(launched.stdout)
    started = start_time(pid)
    if started is not None:  # else it died at once: no pid file; the caller reads the log
        _write_pid_file(spec.pid_file, pid, started)
    return pid


def reap(pid: int) -> None:
    """Collect `pid` if it is our exited child (daemons never are; harmless otherwise)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int, started: int) -> bool:
    reap(pid)
    return start_time(pid) == started


class Stopped(Enum):
    NOT_RUNNING = "not running"
    TERMINATED = "stopped"
    KILLED = "killed (did not stop within the timeout)"


def stop(specs: Iterable[DaemonSpec], timeout: float = 10.0) -> dict[str, Stopped]:
    """SIGTERM every running daemon of `specs`, wait up to `timeout` s for all of them,
    SIGKILL the stragglers, and remove the pid files.  Idempotent."""
    targets: dict[str, tuple[DaemonSpec, int, int]] = {}
    out: dict[str, Stopped] = {}
    for spec in specs:
        record = read_record(spec.pid_file)
        if record is not None and start_time(record[0]) == record[1]:
            targets[spec.name] = (spec, *record)
            _signal(record[0], signal.SIGCONT)  # a stopped process must be able to exit
            _signal(record[0], signal.SIGTERM)
        else:
            out[spec.name] = Stopped.NOT_RUNNING
            remove_pid_file(spec)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p, s) for _, p, s in targets.values()):
        time.sleep(POLL_SECONDS)
    for name, (spec, pid, started) in targets.items():
        if alive(pid, started):
            _signal(pid, signal.SIGKILL)
            _wait_gone(pid, started, 5.0)
            out[name] = Stopped.KILLED
        else:
            out[name] = Stopped.TERMINATED
        remove_pid_file(spec)
    return out


def kill(spec: DaemonSpec) -> bool:
    """SIGKILL the daemon (a simulated crash: its pid file stays).  True if it was running."""
    record = read_record(spec.pid_file)
    if record is None or start_time(record[0]) != record[1]:
        return False
    _signal(record[0], signal.SIGKILL)
    _wait_gone(*record, 5.0)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, started: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid, started) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)


def log_tail(spec: DaemonSpec, limit: int = 2000) -> str:
    try:
        with spec.log_file.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# --- mount points ------------------------------------------------------------------------------


class MountState(Enum):
    ABSENT = "not mounted"
    MOUNTED = "mounted"
    DEAD = "dead (its server is gone)"


def _unescape(field: str) -> str:
    """Mount table fields escape space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and i + 4 <= len(field):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> dict[str, str]:
    """Mount point -> file-system type, from /proc/self/mountinfo."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            out[_unescape(fields[4])] = right.split()[0]
    return out


def mount_state(path: Path) -> MountState:
    point = os.path.abspath(path)
    if point not in mount_points():
        return MountState.ABSENT
    try:
        # statvfs always reaches the FUSE server (stat may be answered from the
        # kernel's attribute cache for a second after the server died).
        os.statvfs(point)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED):
            return MountState.DEAD
        raise
    return MountState.MOUNTED


def unmount(path: Path, *, lazy: bool = False) -> tuple[bool, str]:
    """fusermount3 -u [-z] (umount [-l] without it): (done, error message)."""
    point = os.path.abspath(path)
    if shutil.which("fusermount3"):
        argv = ["fusermount3", "-u", *(["-z"] if lazy else []), point]
    else:
        argv = ["umount", *(["-l"] if lazy else []), point]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    message = (done.stderr or done.stdout).strip()
    return done.returncode == 0, message


def is_busy(message: str) -> bool:
    return "busy" in message.lower()


def holders(path: Path, limit: int = 20) -> list[int]:
    """Pids with an open file or working directory under `path` (for "busy" reports)."""
    point = os.path.abspath(path)
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or len(found) >= limit:
            continue
        with contextlib.suppress(OSError):
            links = [entry / "cwd", *(entry / "fd").iterdir()]
            if any(_under(os.readlink(link), point) for link in links):
                found.append(int(entry.name))
    return found


def _under(target: str, point: str) -> bool:
    return target == point or target.startswith(point + "/")


def wait_mounted(path: Path, still_starting: Callable[[], bool], timeout: float) -> bool:
    """Wait until `path` is a mount point that answers (its st_dev differs from its
    parent's) while `still_starting()` holds; False on timeout or when it stops."""
    point = os.path.abspath(path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if os.stat(point).st_dev != os.stat(os.path.dirname(point)).st_dev:
                return True
        if not still_starting():
            return False
        time.sleep(POLL_SECONDS * 2)
    return False


def round_trip(path: Path, tag: str) -> str | None:
    """Write, read back and remove a small file under `path`: None if it worked,
    else what went wrong."""
    probe = Path(path) / f".ddfs-probe-{tag}"
    data = f"ddfs probe {tag}\n".encode()
    try:
        with probe.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        back = probe.read_bytes()
        probe.unlink()
    except OSError as exc:
        return f"{exc.strerror or exc} ({probe})"
    return None if back == data else f"read back {back!r}, wrote {data!r}"
