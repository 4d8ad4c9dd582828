"""A long-lived worker thread for the Raft driver's blocking calls (the
leader's log persist, the state machine's apply).

Why not `trio.to_thread.run_sync`: every call through it takes a thread from
trio's cache, names the OS thread twice (two prctl calls), copies the
context, builds a cancel-scope machinery around the wait and wakes the trio
thread through `from_thread`; per Raft write that happens for the persist and
for the apply on the leader.  Measured with tools/raftprobe at one client the
hand-offs were ~12 % of the leader's GIL-holding samples (py-spy --gil).  A
dedicated thread fed through a `queue.SimpleQueue` and answering with one
`TrioToken.run_sync_soon(reschedule)` does the same job with one futex wake
each way.

The threads run under SCHED_BATCH (Linux), which only takes away their
wakeup preemption: waking one no longer lets it displace the trio thread
that woke it (and that thread, on a busy 2-core machine, then waited for a
CPU again).  Measured with tools/raftprobe at 64 clients, 4 interleaved
pairs: `put` on the queue 150/76 us wall instead of 370/220 on average,
3,650-3,840 writes/s instead of 3,310-3,430, leader CPU per write
0.19-0.20 ms instead of 0.22; at one client no change beyond noise.

Invariants:

* Calls run one at a time, in submission order, on one OS thread with a
  fixed name (so per-thread CPU figures stay attributable).
* `run` behaves like `trio.to_thread.run_sync` without `abandon_on_cancel`:
  a cancelled caller still waits for its call to finish (a half-done fsync
  cannot be abandoned), then sees the cancellation at its next checkpoint.
  The call's exception, if any, is raised in the caller.
* `start` is called on the trio thread that will await the results; `stop`
  ends the thread after the calls already submitted, and joins it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

# (function, arguments, the task waiting for it); None asks the thread to end.
_Job = tuple[Callable[..., Any], tuple[Any, ...], trio.lowlevel.Task] | None


class Worker:
    """One named thread running blocking calls for one trio task at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (on the trio thread that will await the calls)."""
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread once the calls already submitted are done."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the worker thread; return its result or raise its error."""
        if self._thread is None:
            raise RuntimeError(f"worker {self.name} is not running")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._jobs.put((fn, args, trio.lowlevel.current_task()))

        def abort(_: Any) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # the call cannot be interrupted: wait for it

        # Resumes with the call's outcome unwrapped: its value, or its exception raised.
        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def _work(self) -> None:
        _name_os_thread(self.name)
        _no_wakeup_preemption()
        token = self._token
        assert token is not None
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, task = job
            result = outcome.capture(fn, *args)
            del fn, args  # do not keep the call's objects alive until the next job
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:  # pragma: no cover - stop() joins before the run ends
                return


def _name_os_thread(name: str) -> None:
    """Give the OS thread our name once (per-thread CPU in /proc shows it); Linux only."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):  # cosmetic only
        ctypes.CDLL(None).prctl(15, name.encode("ascii", "replace")[:15])  # 15: PR_SET_NAME


def _no_wakeup_preemption() -> None:
    """SCHED_BATCH for this thread (Linux): waking it does not preempt the waker."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
