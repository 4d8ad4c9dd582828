"""The `kv.watch` handler (coord/kv/watch.py) on one in-memory state machine:
answers at once, long-polls until the next apply, times out, COMPACTED,
close(), the caller's budget, bad requests, and the wake-up from the worker
thread that applies entries.  Times are trio's (autojump where noted)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from coord.kv.commands import Put
from coord.kv.events import decode_events
from coord.kv.store import MemoryKVStore
from coord.kv.types import ClientId, EventKind
from coord.kv.watch import KvWatch, WatchReply, WatchService
from coord.raft.types import Entry, LogIndex
from coord.rpc import CallContext, RemoteError
from coord.rpc.auth import PeerInfo
from tests.unit.test_kv_support import Driver

CTX = CallContext(PeerInfo(99, "test"), "kv.watch", 1, 0, None, math.inf)


class Member:
    """A state machine with a session, and the watch service over it."""

    def __init__(self) -> None:
        self.d = Driver(MemoryKVStore())
        self.cid: ClientId = self.d.session()
        self.seq = 0
        # reads on the trio thread: the twin store is single-threaded
        self.service = WatchService(self.d.machine, read_threads=0)
        self.service.attach()

    def put_entry(self, key: bytes, value: bytes) -> Entry:
        self.seq += 1
        return self.d.log.request(self.cid, self.seq, Put(key, value), acked=self.seq - 1)

    def put(self, key: bytes, value: bytes) -> LogIndex:
        entry = self.put_entry(key, value)
        self.d.run(entry)
        return entry.index

    async def watch(self, prefix: bytes, start: int, wait_s: float = 10.0,
                    ctx: CallContext = CTX) -> WatchReply:
        return await self.service.watch(KvWatch(prefix, start, 100, wait_s), ctx)


def keys(reply: WatchReply) -> list[bytes]:
    return [ev.key for ev in decode_events(reply.events)]


async def test_existing_events_come_back_at_once(autojump_clock: trio.testing.MockClock) -> None:
    m = Member()
    i = m.put(b"a/1", b"x")
    m.put(b"b/1", b"y")
    start = trio.current_time()
    reply = await m.watch(b"a/", 1)
    assert trio.current_time() == start  # no waiting when there is something to say
    assert decode_events(reply.events)[0].index == i and keys(reply) == [b"a/1"]
    assert (reply.next_index, reply.compacted) == (m.d.machine.applied_index + 1, 0)


async def test_a_poll_waits_for_the_next_matching_apply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = Member()
    replies: list[WatchReply] = []

    async def watcher() -> None:
        replies.append(await m.watch(b"a/", m.d.machine.applied_index + 1, wait_s=10.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        await trio.sleep(1)
        m.put(b"b/other", b"1")  # wakes the watcher, which finds nothing and waits again
        await trio.sleep(1)
        assert not replies
        i = m.put(b"a/k", b"2")
        await trio.sleep(0.5)
        assert replies, "the apply did not wake the watcher"
    (reply,) = replies
    assert trio.current_time() < 10  # woken by the apply, not by the deadline
    assert keys(reply) == [b"a/k"] and decode_events(reply.events)[0].index == i
    assert reply.next_index == i + 1


async def test_a_poll_with_nothing_new_ends_at_wait_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = Member()
    m.put(b"b/1", b"x")
    start = trio.current_time()
    reply = await m.watch(b"a/", 1, wait_s=3.0)
    assert trio.current_time() - start == pytest.approx(3.0)
    assert keys(reply) == [] and reply.next_index == m.d.machine.applied_index + 1


async def test_the_wait_stops_short_of_the_callers_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = Member()
    ctx = CallContext(PeerInfo(99, "test"), "kv.watch", 1, 0, 2.0, trio.current_time() + 2.0)
    start = trio.current_time()
    reply = await m.watch(b"a/", 1, wait_s=30.0, ctx=ctx)
    assert trio.current_time() - start < 2.0 and keys(reply) == []


async def test_from_index_0_means_after_what_this_member_applied(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = Member()
    m.put(b"a/old", b"x")
    reply = await m.watch(b"a/", 0, wait_s=1.0)
    assert keys(reply) == [] and reply.next_index == m.d.machine.applied_index + 1


async def test_compacted_carries_the_floor() -> None:
    m = Member()
    first = m.put(b"a/1", b"x")
    m.put(b"a/2", b"y")
    m.d.machine.compact_events(first)
    reply = await m.watch(b"a/", 1)
    assert (reply.compacted, reply.events) == (first, b"")
    assert keys(await m.watch(b"a/", first + 1)) == [b"a/2"]


async def test_close_ends_every_wait(autojump_clock: trio.testing.MockClock) -> None:
    m = Member()
    replies: list[WatchReply] = []

    async def watcher() -> None:
        replies.append(await m.watch(b"a/", 1, wait_s=20.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        nursery.start_soon(watcher)
        await trio.sleep(1)
        m.service.close()
    assert len(replies) == 2 and trio.current_time() < 2
    assert keys(await m.watch(b"a/", 1, wait_s=20.0)) == []  # closed: no more waiting


@pytest.mark.parametrize("req", [
    KvWatch(b"", -1), KvWatch(b"", 1, 0), KvWatch(b"", 1, 10, -1.0),
    KvWatch(b"", 1, 10, math.nan), KvWatch(b"x" * 600, 1),
])
async def test_bad_requests_are_refused(req: KvWatch) -> None:
    with pytest.raises(RemoteError) as info:
        await Member().service.watch(req, CTX)
    assert info.value.code == "BAD_REQUEST"


async def test_an_apply_in_a_worker_thread_wakes_the_watcher() -> None:
    # Real clock: the apply runs in a thread, as in the Raft driver.  A lost
    # wake-up would make the reply come back empty after wait_s.
    m = Member()
    replies: list[WatchReply] = []
    start = m.d.machine.applied_index + 1

    async def watcher() -> None:
        replies.append(await m.watch(b"", start, wait_s=30.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        await trio.sleep(0.05)
        await trio.to_thread.run_sync(m.d.machine.apply, [m.put_entry(b"k", b"v")])
    (reply,) = replies
    assert [(e.kind, e.key) for e in decode_events(reply.events)] == [(EventKind.PUT, b"k")]
