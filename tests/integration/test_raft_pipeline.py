"""The driver's write-path pipelining, checked on one in-process member whose
state machine can be held in the middle of an apply (after its outcomes are
known, before its commit):

* a proposal made `early` is answered while the commit is held; a plain one
  is not;
* a linearizable read (ReadIndex) issued after that answer waits for the
  commit, so it never misses the write it follows;
* the Ready loop does not wait for the apply: a later proposal is persisted
  (reaches the Raft log) while the earlier apply is still held;
* the Raft log's fsync counter moves with every persist;
* a leader applies small batches on the trio thread, big ones in the worker.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from coord.kv.commands import ClientRequest, Get, Put, RegisterClient, stamp
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.results import GetResult, PutResult, RegisterResult
from coord.kv.store import MemoryKVStore
from coord.kv.types import ClientId, SeqNo
from coord.raft.config import RaftConfig
from coord.raft.driver import RaftDriver
from coord.raft.messages import Message
from coord.raft.types import Entry, LogIndex, NodeId
from coord.raft.wal_store import WalRaftStorage

CONFIG = RaftConfig(election_timeout_min=0.05, election_timeout_max=0.1, heartbeat_interval=0.01)
ME = NodeId(1)


class NoPeers:
    async def send(self, peer: NodeId, messages: Sequence[Message]) -> None:
        raise AssertionError("a one-member group sends nothing")


class HeldMachine:
    """A KV state machine whose commit can be held after the outcomes are announced."""

    def __init__(self) -> None:
        self.inner = KVStateMachine(MemoryKVStore())
        self.hold = threading.Event()  # set: the next apply waits before committing
        self.held = threading.Event()  # set by the apply when it reached the hold
        self.release = threading.Event()

    @property
    def applied_index(self) -> LogIndex:
        return self.inner.applied_index

    def apply(
        self, entries: Sequence[Entry], announce: Callable[[Sequence[Applied]], None] | None = None
    ) -> list[Applied]:
        def hold_then_announce(results: Sequence[Applied]) -> None:
            if announce is not None:
                announce(results)
            if self.hold.is_set():
                self.held.set()
                assert self.release.wait(10), "the test never released the commit"

        return self.inner.apply(entries, hold_then_announce)


def _put(client: ClientId, seq: int, value: bytes) -> ClientRequest:
    return ClientRequest(client, SeqNo(seq), SeqNo(seq - 1), Put(b"k", value))


async def _wait_thread_event(event: threading.Event) -> None:
    with trio.fail_after(10):
        while not event.is_set():
            await trio.sleep(0.005)


async def _lead_and_register(driver: RaftDriver[Applied]) -> ClientId:
    """Wait until the one-member group leads, then register a client session."""
    with trio.fail_after(10):
        while not driver.is_leader:
            await trio.sleep(0.01)
    reg = (await driver.propose(stamp(RegisterClient(), 1))).result
    assert isinstance(reg, RegisterResult)
    return reg.client_id


async def _release_on_exit(fsm: HeldMachine) -> None:
    try:
        await trio.sleep_forever()
    finally:
        fsm.release.set()


async def test_early_answers_reads_wait_and_the_loop_keeps_persisting(tmp_path: Path) -> None:
    fsm = HeldMachine()
    storage = WalRaftStorage(tmp_path / "raft")
    driver: RaftDriver[Applied] = RaftDriver(
        ME, [ME], CONFIG, storage, fsm, NoPeers(), rng=random.Random(1)
    )
    driver.INLINE_APPLY_ENTRIES = 0  # the worker's path: a held apply must not hold the loop
    try:
        async with trio.open_nursery() as nursery:
            # A failing assertion must not leave the applier's thread held: the
            # nursery could not finish (worker threads are not abandoned).
            nursery.start_soon(_release_on_exit, fsm)
            await nursery.start(driver.run)
            client = await _lead_and_register(driver)
            fsyncs = storage.fsyncs

            # 1. An early proposal is answered while its apply's commit is held.
            fsm.hold.set()
            with trio.fail_after(10):
                first = await driver.propose(stamp(_put(client, 1, b"v1"), 2), early=True)
            assert isinstance(first.result, PutResult)
            await _wait_thread_event(fsm.held)  # the apply is (still) held before its commit
            assert not fsm.release.is_set()
            assert storage.fsyncs > fsyncs  # the entry went through the Raft log's fsync
            fsm.hold.clear()

            # 2. A read started now waits for the held commit.
            read_done = trio.Event()
            seen: list[bytes | None] = []

            async def read() -> None:
                await driver.read_barrier()
                result = fsm.inner.read(Get(b"k"))
                assert isinstance(result, GetResult)
                seen.append(None if result.kv is None else result.kv.value)
                read_done.set()

            nursery.start_soon(read)
            # 3. Meanwhile the Ready loop persists a later proposal (the apply is held).
            last_before = storage.last_index()
            second = trio.Event()

            async def propose_second() -> None:
                await driver.propose(stamp(_put(client, 2, b"v2"), 3))
                second.set()

            nursery.start_soon(propose_second)
            with trio.fail_after(10):
                while storage.last_index() <= last_before:
                    await trio.sleep(0.005)
            await trio.sleep(0.05)
            assert not read_done.is_set() and not second.is_set()

            fsm.release.set()
            with trio.fail_after(10):
                await read_done.wait()
                await second.wait()
            assert seen in ([b"v1"], [b"v2"])  # never the state before the write
            nursery.cancel_scope.cancel()
    finally:
        fsm.release.set()
        storage.close()


class ThreadNotingMachine(HeldMachine):
    """A KV state machine that notes the thread of every apply (and never holds)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[tuple[int, str, bool]] = []  # (entries, thread, announce given)

    def apply(
        self, entries: Sequence[Entry], announce: Callable[[Sequence[Applied]], None] | None = None
    ) -> list[Applied]:
        self.threads.append((len(entries), threading.current_thread().name, announce is not None))
        return self.inner.apply(entries, announce)


async def test_a_leader_applies_small_batches_inline_and_big_ones_in_the_worker(
    tmp_path: Path,
) -> None:
    fsm = ThreadNotingMachine()
    storage = WalRaftStorage(tmp_path / "raft")
    driver: RaftDriver[Applied] = RaftDriver(
        ME, [ME], CONFIG, storage, fsm, NoPeers(), rng=random.Random(1)
    )
    driver.INLINE_APPLY_ENTRIES = 4
    here = threading.current_thread().name
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        client = await _lead_and_register(driver)
        first = await driver.propose(stamp(_put(client, 1, b"v1"), 2), early=True)
        assert isinstance(first.result, PutResult)
        assert fsm.threads[-1] == (1, here, True)  # inline, and still answered early

        # Twenty proposals made at once commit together: too many to apply inline.
        results: list[object] = []

        async def put(seq: int) -> None:
            req = ClientRequest(client, SeqNo(seq), SeqNo(1), Put(b"k%d" % seq, b"x"))
            out = await driver.propose(stamp(req, seq + 1))
            results.append(out.result)

        async with trio.open_nursery() as burst:
            for seq in range(2, 22):
                burst.start_soon(put, seq)
        assert len(results) == 20 and all(isinstance(r, PutResult) for r in results)
        big = [t for t in fsm.threads if t[0] > 4]
        assert big and all(name == "raft-apply-1" for _, name, _ in big)
        assert all(name == here for n, name, _ in fsm.threads if n <= 4)
        assert fsm.inner.applied_index == storage.last_index()
        nursery.cancel_scope.cancel()
