"""A follower's applier groups committed entries in time (RaftConfig.
follower_apply_delay) into fewer state-store commits, without delaying reads:

* the gathering rule on its own, on a virtual clock: a follower waits up to
  the delay for more jobs; a job carrying a read state ends the wait at once;
  a job that starts with a read, a leader, or a member with proposals of its
  own does not wait at all;
* three in-process members: sequential writes reach every follower's state
  machine in fewer apply calls than entries, the states end identical, and a
  linearizable read on a follower sees the last write.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import trio
import trio.testing

from coord.kv.commands import ClientRequest, Get, Put, RegisterClient, stamp
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.results import GetResult, RegisterResult
from coord.kv.store import MemoryKVStore
from coord.kv.types import SeqNo
from coord.raft.config import RaftConfig
from coord.raft.driver import RaftDriver
from coord.raft.messages import Message, ReadCtx
from coord.raft.readindex import ReadState
from coord.raft.storage import MemoryRaftStorage
from coord.raft.types import Entry, EntryKind, LogIndex, NodeId, Term

DELAY = 0.05
CONFIG = RaftConfig(election_timeout_min=0.3, election_timeout_max=0.6, heartbeat_interval=0.05,
                    follower_apply_delay=DELAY)
IDS = [NodeId(1), NodeId(2), NodeId(3)]


class CountingMachine:
    """A KV state machine that counts its apply calls (state-store commits)."""

    def __init__(self) -> None:
        self.inner = KVStateMachine(MemoryKVStore())
        self.calls = 0

    @property
    def applied_index(self) -> LogIndex:
        return self.inner.applied_index

    def apply(
        self, entries: Sequence[Entry], announce: Callable[[Sequence[Applied]], None] | None = None
    ) -> Sequence[Applied]:
        self.calls += 1
        return self.inner.apply(entries, announce)


class Net:
    def __init__(self) -> None:
        self.drivers: dict[NodeId, RaftDriver[Applied]] = {}

    def link(self, me: NodeId) -> _Link:
        return _Link(self)


class _Link:
    def __init__(self, net: Net) -> None:
        self.net = net

    async def send(self, peer: NodeId, messages: Sequence[Message]) -> None:
        await trio.sleep(0.001)
        self.net.drivers[peer].deliver(messages)


def _entry(i: int) -> Entry:
    return Entry(Term(1), LogIndex(i), EntryKind.COMMAND, b"x")


def _job(i: int, read: bool = False) -> tuple[tuple[Entry, ...], tuple[ReadState, ...]]:
    reads = (ReadState(ReadCtx(b"r%d" % i), LogIndex(i)),) if read else ()
    return (_entry(i),), reads


def _follower() -> RaftDriver[Applied]:
    """A driver that is not run: a follower (no leader yet), for _gather alone."""
    return RaftDriver(IDS[0], IDS, CONFIG, MemoryRaftStorage(), CountingMachine(),
                      Net().link(IDS[0]), rng=random.Random(1))


async def _gather_with(
    driver: RaftDriver[Applied], first: tuple[tuple[Entry, ...], tuple[ReadState, ...]],
    later: Sequence[tuple[float, tuple[tuple[Entry, ...], tuple[ReadState, ...]]]],
) -> tuple[list[int], float]:
    """Run _gather(first) while `later` jobs arrive at their times; the indexes
    gathered and how long (virtual) it took."""
    send, recv = trio.open_memory_channel[tuple[tuple[Entry, ...], tuple[ReadState, ...]]](16)
    start = trio.current_time()

    async def feed() -> None:
        for at, job in later:
            await trio.sleep_until(start + at)
            await send.send(job)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        batch = await driver._gather(first, recv)
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    return [int(e.index) for entries, _ in batch for e in entries], took


async def test_a_follower_waits_up_to_the_delay_for_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got, took = await _gather_with(_follower(), _job(1), [(0.01, _job(2)), (0.02, _job(3)),
                                                          (2 * DELAY, _job(4))])
    assert got == [1, 2, 3]  # job 4 came after the delay: the next batch
    assert took == DELAY


async def test_a_read_ends_the_wait_at_once(autojump_clock: trio.testing.MockClock) -> None:
    got, took = await _gather_with(_follower(), _job(1), [(0.01, _job(2, read=True)),
                                                          (0.02, _job(3))])
    assert got == [1, 2]
    assert took == 0.01


async def test_no_wait_for_a_read_a_leader_or_own_proposals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    later = [(0.01, _job(2))]
    got, took = await _gather_with(_follower(), _job(1, read=True), later)
    assert (got, took) == ([1], 0.0)
    no_delay = RaftDriver(IDS[0], IDS, RaftConfig(follower_apply_delay=0.0), MemoryRaftStorage(),
                          CountingMachine(), Net().link(IDS[0]), rng=random.Random(1))
    assert await _gather_with(no_delay, _job(1), later) == ([1], 0.0)
    solo = RaftDriver(IDS[0], [IDS[0]], CONFIG, MemoryRaftStorage(), CountingMachine(),
                      Net().link(IDS[0]), rng=random.Random(1))
    solo.core.tick(trio.current_time() + 10)  # a one-member group elects itself
    assert solo.is_leader
    assert await _gather_with(solo, _job(1), later) == ([1], 0.0)


async def test_followers_apply_in_fewer_commits_and_reads_see_the_last_write() -> None:
    net = Net()
    machines = {i: CountingMachine() for i in IDS}
    for i in IDS:
        net.drivers[i] = RaftDriver(i, IDS, CONFIG, MemoryRaftStorage(), machines[i],
                                    net.link(i), rng=random.Random(20 + i))
    async with trio.open_nursery() as nursery:
        for d in net.drivers.values():
            await nursery.start(d.run)
        with trio.fail_after(10):
            while not any(d.is_leader for d in net.drivers.values()):
                await trio.sleep(0.01)
        leader = next(i for i, d in net.drivers.items() if d.is_leader)
        reg = (await net.drivers[leader].propose(stamp(RegisterClient(), 1))).result
        assert isinstance(reg, RegisterResult)
        first = {i: m.calls for i, m in machines.items()}
        writes = 30
        for n in range(1, writes + 1):  # one at a time, as a single client does
            req = ClientRequest(reg.client_id, SeqNo(n), SeqNo(n - 1), Put(b"k", b"v%d" % n))
            await net.drivers[leader].propose(stamp(req, 1))
        follower = next(i for i in IDS if i != leader)
        await net.drivers[follower].read_barrier()
        value = machines[follower].inner.read(Get(b"k"))
        assert isinstance(value, GetResult) and value.kv is not None
        assert value.kv.value == b"v%d" % writes
        with trio.fail_after(10):
            while len({m.applied_index for m in machines.values()}) > 1:
                await trio.sleep(0.01)
        assert len({repr(m.inner.dump()) for m in machines.values()}) == 1
        for i in IDS:
            calls = machines[i].calls - first[i]
            if i == leader:
                assert calls >= writes  # the leader applies each at once: clients wait
            else:
                assert calls < writes  # grouped in time
        nursery.cancel_scope.cancel()
