"""Local processes for tools and tests: start, wait until ready, signal, restart,
and always stop; plus a local `ddfs meta` Raft cluster built from them.

Invariants:
* Every child is started through a tiny exec wrapper that sets
  PR_SET_PDEATHSIG=SIGKILL (Linux) before exec'ing the real program, so the
  children die with this process even if it is SIGKILLed itself.  Children
  are spawned from the calling thread, which must live as long as they do
  (the death signal follows the thread that forked); trio callers spawn
  from the main thread.
* `ProcessGroup.close()` kills and reaps every process it started; callers
  put it in a `finally` (errors and Ctrl-C included).
* A process's output goes to its own log file; "ready" means a given text
  appeared in the output of the *current* incarnation.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

ROOT = Path(__file__).resolve().parents[1]

# Runs before the real program: die with the parent (prctl 1 = PR_SET_PDEATHSIG),
# and exit at once if the parent is already gone (the signal would never come).
_WRAPPER = (
    "import ctypes, os, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, 9)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


# Ports handed out by this process lately: a port is not handed out twice while
# the process that was given it may still be starting.
_RECENT: collections.deque[int] = collections.deque(maxlen=4096)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1, below the kernel's ephemeral range.

    Why not `bind(0)`: that hands out a port of the ephemeral range, the one the
    kernel also takes source ports of outgoing connections from, so between our
    choice and the server's bind another process's connect could take it ("Address
    already in use": a clean CI run lost a chunk server that way).  Ports below
    the range are never taken implicitly; `_RECENT` keeps this process from handing
    one out twice.  Falls back to `bind(0)` where the range starts too low."""
    low = _ephemeral_low()
    if low < 12_000:
        return _kernel_ports(n)
    rng = random.SystemRandom()
    ports: list[int] = []
    for _ in range(100 * n):  # bounded: a busy range falls back below
        port = rng.randrange(10_000, low)
        if port in ports or port in _RECENT or not _bindable(port):
            continue
        ports.append(port)
        if len(ports) == n:
            _RECENT.extend(ports)
            return ports
    return _kernel_ports(n)


def _kernel_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ddfs_argv(*args: str) -> list[str]:
    """The `ddfs` command as run from this checkout (`python -m tools ...`)."""
    return [sys.executable, "-m", "tools", *args]


class NotReady(RuntimeError):
    """A process exited, or did not print its ready text in time."""


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    offset: int = 0  # where the current incarnation's output begins in the log

    def spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.offset = out.tell()
            self.popen = subprocess.Popen(
                [sys.executable, "-c", _WRAPPER, str(os.getpid()), *self.argv],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.starts += 1

    def output(self) -> str:
        """What the current incarnation has printed so far."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_text(self) -> str:
        """The whole log, every incarnation (e.g. audits across restarts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _check(self, text: str) -> bool:
        if text in self.output():
            return True
        if self.popen is not None and self.popen.poll() is not None:
            raise NotReady(f"{self.name} exited with {self.popen.returncode}:\n"
                           f"{self.output()[-3000:]}")
        return False

    async def wait_for(self, text: str, timeout: float) -> bool:
        """Wait until the current incarnation prints `text`; False on timeout."""
        with trio.move_on_after(timeout):
            while not self._check(text):
                await trio.sleep(0.02)
            return True
        return False

    async def start(self, ready_text: str, timeout: float = 30.0) -> None:
        self.spawn()
        if not await self.wait_for(ready_text, timeout):
            raise NotReady(f"{self.name} not ready after {timeout} s:\n{self.output()[-3000:]}")

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.popen is not None
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap (a crash: nothing is flushed).

        No SIGCONT first: SIGKILL ends a stopped process as it is, and a
        SIGCONT would let a process stopped at a chosen step run on for a
        moment (and, say, send the messages it was stopped before).
        """
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.popen is None or self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, signal.SIGCONT)
        self.popen.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


P = TypeVar("P", bound=Proc)


@dataclass
class ProcessGroup:
    procs: list[Proc] = field(default_factory=list)

    def add(self, proc: P) -> P:
        """Track `proc` (any Proc subclass; returned as given) for close()."""
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Kill and reap every process (errors while killing one do not spare the others)."""
        for proc in self.procs:
            try:
                proc.kill()
            except (OSError, subprocess.TimeoutExpired):
                continue


class LocalMetaCluster:
    """`n` `ddfs meta` members on 127.0.0.1 with their data under `base`."""

    def __init__(self, group: ProcessGroup, base: Path, secret_file: Path, n: int = 3, *,
                 election_timeout: float = 0.4, extra_args: tuple[str, ...] = ()) -> None:
        ports = free_ports(n)
        self.addresses = {i: f"127.0.0.1:{p}" for i, p in enumerate(ports, start=1)}
        members = ",".join(f"{i}={a}" for i, a in self.addresses.items())
        self.members = {
            i: group.add(Proc(
                f"meta{i}",
                ddfs_argv("meta", "--id", str(i), "--members", members,
                          "--data", str(base / f"meta{i}"), "--secret-file", str(secret_file),
                          "--election-timeout", str(election_timeout), *extra_args),
                base / f"meta{i}.log"))
            for i in self.addresses
        }

    @property
    def endpoints(self) -> list[str]:
        return list(self.addresses.values())

    async def start(self, timeout: float = 30.0) -> None:
        for proc in self.members.values():  # all at once: their start-ups overlap
            proc.spawn()
        for proc in self.members.values():
            if not await proc.wait_for("ready on", timeout):
                raise NotReady(f"{proc.name} not ready after {timeout} s:\n{proc.output()}")
