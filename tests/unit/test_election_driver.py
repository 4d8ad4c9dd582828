"""The trio election driver over the in-memory transport, on trio's autojump clock.

Five drivers with heartbeat failure detectors elect, lose their leader to a
crash (its driver cancelled, its address refusing), re-elect, and take the
restarted higher node back.  Traces: every protocol message is traced once,
every receive pairs with its send, heartbeats are not traced.  A lost
COORDINATOR is repaired by the claim the new leader's heartbeats carry (and
is not, with that switched off).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from coord.clock.lamport import LamportClock
from coord.election import (
    BullyCoordinator,
    BullyNode,
    ElectionConfig,
    ElectionMessage,
    LeaderChanged,
    NodeId,
    RingNode,
)
from coord.election.driver import Core, DriverTiming, ElectionDriver
from coord.election.memory import MemoryElectionNet
from coord.failure import TimeoutConfig, TimeoutDetector
from coord.trace import EventKind, lamport_order, match_messages, message_counts

IDS = [NodeId(i) for i in range(1, 6)]
CFG = ElectionConfig(ok_timeout=0.3, coordinator_timeout=1.0, ring_timeout=1.5)
TIMING = DriverTiming(heartbeat_every=0.1, check_every=0.05, send_timeout=0.5)


class Cluster:
    def __init__(self, algo: str, nursery: trio.Nursery, timing: DriverTiming = TIMING
                 ) -> None:
        self.algo = algo
        self.timing = timing
        self.net = MemoryElectionNet()
        self.nursery = nursery
        self.scopes: dict[NodeId, trio.CancelScope] = {}
        self.changes: list[tuple[NodeId, LeaderChanged]] = []

    def core(self, me: NodeId, incarnation: int) -> Core:
        if self.algo == "bully":
            return BullyNode(me, IDS, CFG, first_round=incarnation * 1000)
        return RingNode(me, IDS, CFG, first_round=incarnation * 1000)

    async def start(self, me: NodeId, incarnation: int = 0, *,
                    elect: bool = True) -> ElectionDriver:
        driver = ElectionDriver(
            self.core(me, incarnation), self.net.transport(me),
            TimeoutDetector(TimeoutConfig(timeout=0.5)), peers=IDS, clock=LamportClock(),
            timing=self.timing, on_leader=lambda ev: self.changes.append((me, ev)),
            start_election=elect)
        self.net.register(driver)
        scope = trio.CancelScope()
        self.scopes[me] = scope

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await driver.run(task_status=task_status)

        await self.nursery.start(run)
        return driver

    def crash(self, me: NodeId) -> None:
        self.net.down.add(me)
        self.scopes[me].cancel()

    def live(self) -> list[ElectionDriver]:
        return [d for n, d in self.net.drivers.items() if n not in self.net.down]

    async def agree_on(self, leader: int, within: float = 10.0) -> None:
        with trio.fail_after(within):
            while any(d.leader != leader for d in self.live()):
                await trio.sleep(0.05)


@asynccontextmanager
async def cluster(algo: str, timing: DriverTiming = TIMING) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        c = Cluster(algo, nursery, timing)
        try:
            yield c
        finally:
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("algo", ["bully", "ring"])
async def test_elect_crash_reelect_and_take_over(algo: str, autojump_clock: trio.abc.Clock
                                                 ) -> None:
    async with cluster(algo) as c:
        for n in IDS:
            await c.start(n)
        await c.agree_on(5)
        c.crash(NodeId(5))
        await c.agree_on(4)
        await trio.sleep(2.0)  # nothing changes once agreed
        assert all(d.leader == 4 for d in c.live())
        await c.start(NodeId(5), incarnation=1)  # the recovered higher id takes over
        await c.agree_on(5)


@pytest.mark.parametrize("algo", ["bully", "ring"])
async def test_traces_hold_each_protocol_message_once(algo: str,
                                                      autojump_clock: trio.abc.Clock) -> None:
    async with cluster(algo) as c:
        drivers = [await c.start(n, elect=False) for n in IDS]
        for d in drivers:  # everyone listens before the first message: none is refused
            d.elect()
        await c.agree_on(5)
        await trio.sleep(1.0)  # heartbeats flow: they must not appear in the trace
        events = [e for d in drivers for e in d.tracer.events]
        sent = sum(sum(d.sent.values()) for d in drivers)
        assert sum(1 for e in events if e.kind is EventKind.SEND) == sent
        assert sum(message_counts(events).values()) == sent
        arrows, duplicates = match_messages(lamport_order(events))
        assert duplicates == 0
        assert all(a.receive is not None for a in arrows)  # nothing lost: no faults
        assert all(a.receive is None or a.receive.lamport > a.send.lamport for a in arrows)
        assert not any("HEARTBEAT" in e.label.upper() for e in events)


async def test_leader_events_and_wait_leader(autojump_clock: trio.abc.Clock) -> None:
    async with cluster("bully") as c:
        drivers = [await c.start(n) for n in IDS]
        assert await drivers[0].wait_leader() == 5
        c.crash(NodeId(5))
        got = await drivers[0].wait_leader(lambda leader: leader == 4)
        assert got == 4
        leaders = [ev.leader for n, ev in c.changes if n == 1]
        # 5 first and 4 in the end.  In between, trio's scheduling order decides:
        # "no leader", nothing (4's deferred announcement adopted the moment 5 is
        # suspected) or, once in a clean CI run, 3 for a moment (agreement is
        # eventual: docs/election.md).  Every event is a change.
        assert leaders[0] == 5 and leaders[-1] == 4, leaders
        assert set(leaders[1:-1]) <= {None, 3}, leaders
        assert all(a != b for a, b in itertools.pairwise(leaders)), leaders


async def test_ring_skips_a_refusing_successor(autojump_clock: trio.abc.Clock) -> None:
    async with cluster("ring") as c:
        drivers = {n: await c.start(n) for n in IDS}
        await c.agree_on(5)
        c.crash(NodeId(3))
        drivers[NodeId(2)].elect()  # before anyone's detector noticed 3 is gone
        await trio.sleep(0.2)  # < the detector's 0.5 s: only the refusal can tell 2
        await c.agree_on(5)
        notes = [e.label for e in drivers[NodeId(2)].tracer.events
                 if e.kind is EventKind.NOTE]
        assert "send to 3 failed" in notes


@pytest.mark.parametrize("reannounce", [True, False])
async def test_lost_coordinator_is_repaired_by_the_leaders_heartbeat_claims(
        reannounce: bool, autojump_clock: trio.abc.Clock) -> None:
    timing = DriverTiming(heartbeat_every=0.1, check_every=0.05, send_timeout=0.5,
                          reannounce=reannounce)
    async with cluster("bully", timing) as c:
        drivers = {n: await c.start(n) for n in IDS[:4]}  # 5 is not up yet: 4 wins
        await c.agree_on(4)

        def lose(src: NodeId, dst: NodeId, msg: ElectionMessage) -> bool:
            return isinstance(msg, BullyCoordinator) and (src, dst) == (5, 2)

        c.net.lose = lose
        # 5 starts, wins at once and announces; 2 never suspected it, so it
        # is waiting for nothing: only a re-announcement can tell it.
        drivers[NodeId(5)] = await c.start(NodeId(5), incarnation=1)
        await trio.sleep(5.0)
        views = {n: d.leader for n, d in drivers.items()}
        if reannounce:
            assert views == dict.fromkeys(IDS, 5)
            notes = [e.label for e in drivers[NodeId(2)].tracer.events
                     if e.kind is EventKind.NOTE]
            assert "coordinator claim from 5" in notes
        else:  # the weakness the claims repair
            assert views == {**dict.fromkeys(IDS, 5), NodeId(2): 4}
        assert drivers[NodeId(5)].sent == {"COORDINATOR": 4}  # the claims cost no message
