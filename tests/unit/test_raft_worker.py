"""coord.raft.worker.Worker: the driver's long-lived thread for blocking calls."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from coord.raft.worker import Worker


async def test_calls_run_in_order_on_one_named_thread() -> None:
    worker = Worker("raft-test")
    worker.start()
    try:
        seen: list[tuple[int, str]] = []

        def call(i: int) -> int:
            seen.append((i, threading.current_thread().name))
            return i * 2

        results = [await worker.run(call, i) for i in range(50)]
        assert results == [i * 2 for i in range(50)]
        assert [i for i, _ in seen] == list(range(50))
        assert {name for _, name in seen} == {"raft-test"}
        assert threading.current_thread().name != "raft-test"
    finally:
        worker.stop()


async def test_an_error_is_raised_in_the_caller_and_the_worker_goes_on() -> None:
    worker = Worker("raft-test")
    worker.start()
    try:
        def fail() -> None:
            raise OSError("disk gone")

        with pytest.raises(OSError, match="disk gone"):
            await worker.run(fail)
        assert await worker.run(lambda: 7) == 7
    finally:
        worker.stop()


async def test_a_cancelled_caller_waits_for_its_call_to_finish() -> None:
    worker = Worker("raft-test")
    worker.start()
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def slow() -> None:
        started.set()
        assert release.wait(10)
        finished.append(True)

    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                async def cancel_when_started() -> None:
                    await trio.to_thread.run_sync(started.wait, 10)
                    scope.cancel()
                    release.set()

                nursery.start_soon(cancel_when_started)
                await worker.run(slow)
                await trio.sleep(0)  # the cancellation arrives at the next checkpoint
                finished.append(False)  # not reached
        assert scope.cancelled_caught
        assert finished == [True]  # the call was not abandoned half-way
    finally:
        release.set()
        worker.stop()


async def test_run_before_start_or_after_stop_raises() -> None:
    worker = Worker("raft-test")
    with pytest.raises(RuntimeError):
        await worker.run(lambda: None)
    worker.start()
    worker.stop()
    with pytest.raises(RuntimeError):
        await worker.run(lambda: None)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
async def test_the_thread_runs_under_sched_batch() -> None:
    worker = Worker("raft-test")
    worker.start()
    try:
        policy = await worker.run(os.sched_getscheduler, 0)
        assert policy == os.SCHED_BATCH
        assert os.sched_getscheduler(0) != os.SCHED_BATCH  # the caller's thread is untouched
    finally:
        worker.stop()
