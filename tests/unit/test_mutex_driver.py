"""`MutexService.hold` over the in-memory transport, on trio's autojump clock.

Three services in one process run each algorithm: every node enters the lock
repeatedly; the tests check mutual exclusion on the (virtual) clock, tokens
growing in entry order, the textbook message counts in the trace, a crashed
node being routed around, and a cancelled wait that gives its grant back.
"""

from __future__ import annotations

import itertools

import pytest
import trio

from coord.clock.lamport import LamportClock
from coord.mutex.driver import LockBusy, MutexService
from coord.mutex.elected import ElectedLeader, bully_for
from coord.mutex.memory import MemoryTransport
from coord.mutex.sim import make_core
from coord.mutex.types import LeaderView, LockName, MutexConfig, NodeId
from coord.trace import message_counts

IDS = [NodeId(1), NodeId(2), NodeId(3)]
CFG = MutexConfig(lease=2.0, epsilon=0.1, max_delay=0.2, loss_timeout=1.0, idle_pass=0.02,
                  request_retry=3.0)
ALGOS = ["centralized", "ricart-agrawala", "token-ring"]


def build(algo: str, down: set[NodeId], elect: bool = False) -> dict[NodeId, MutexService]:
    services: dict[NodeId, MutexService] = {}
    for me in IDS:
        election = bully_for(me, IDS) if elect else None
        view: LeaderView | None = ElectedLeader(election, max(IDS)) if election else None
        core = make_core(algo, me, IDS, CFG, trio.current_time(), view)
        services[me] = MutexService(me, {LockName("L"): core},
                                    MemoryTransport(me, services, down), IDS,
                                    clock=LamportClock(), election=election)
    return services


async def workload(services: dict[NodeId, MutexService], entries: int,
                   log: list[tuple[float, float, int, int]], skip: set[NodeId]) -> None:
    async def one(me: NodeId) -> None:
        for _ in range(entries):
            async with services[me].hold("L") as grant:
                start = trio.current_time()
                assert start < grant.expires_at
                await trio.sleep(0.01)
                log.append((start, trio.current_time(), int(grant.token), me))

    async with trio.open_nursery() as nursery:
        for me in IDS:
            if me not in skip:
                nursery.start_soon(one, me)


def assert_exclusive(log: list[tuple[float, float, int, int]]) -> None:
    ordered = sorted(log)
    for (_, end, token, _), (start, _, later, _) in itertools.pairwise(ordered):
        assert end <= start, "two holders at once"
        assert later > token, "fencing tokens must grow in entry order"


@pytest.mark.parametrize("algo", ALGOS)
async def test_hold_is_exclusive_and_costs_the_textbook_messages(
        algo: str, autojump_clock: trio.testing.MockClock) -> None:
    services = build(algo, set())
    log: list[tuple[float, float, int, int]] = []
    async with trio.open_nursery() as nursery:
        for s in services.values():
            await nursery.start(s.run)
        await workload(services, 4, log, set())
        nursery.cancel_scope.cancel()
    assert len(log) == 12
    assert_exclusive(log)
    counts: dict[str, int] = {}
    for s in services.values():
        for kind, n in message_counts(s.tracer.events).items():
            counts[kind] = counts.get(kind, 0) + n
    if algo == "ricart-agrawala":
        assert counts == {"REQUEST": 24, "REPLY": 24}  # 2(n-1) per entry
    elif algo == "centralized":
        assert counts == {"REQUEST": 8, "GRANT": 8, "RELEASE": 8}  # n3's own 4 are free
    else:
        assert set(counts) == {"TOKEN"}


@pytest.mark.parametrize("algo", ["centralized", "token-ring"])
async def test_a_crashed_coordinator_is_replaced_by_an_election(
        algo: str, autojump_clock: trio.testing.MockClock) -> None:
    down: set[NodeId] = set()
    services = build(algo, down, elect=True)
    log: list[tuple[float, float, int, int]] = []
    async with trio.open_nursery() as nursery:
        for s in services.values():
            await nursery.start(s.run)
        await workload(services, 2, log, set())
        down.add(NodeId(3))  # the elected coordinator (highest id) crashes
        with trio.fail_after(60):
            await workload(services, 3, log, {NodeId(3)})
        nursery.cancel_scope.cancel()
    assert_exclusive(log)
    election = services[NodeId(1)].election
    assert election is not None and election.leader == 2
    notes = [e.label for e in services[NodeId(2)].tracer.events]
    assert any("coordinator now 2 (was" in n for n in notes)


async def test_ricart_agrawala_stops_waiting_for_a_crashed_peer(
        autojump_clock: trio.testing.MockClock) -> None:
    down: set[NodeId] = {NodeId(2)}
    services = build("ricart-agrawala", down)
    log: list[tuple[float, float, int, int]] = []
    async with trio.open_nursery() as nursery:
        for s in services.values():
            await nursery.start(s.run)
        with trio.fail_after(60):
            await workload(services, 2, log, {NodeId(2)})
        nursery.cancel_scope.cancel()
    assert len(log) == 4
    assert_exclusive(log)


async def test_a_cancelled_wait_gives_the_grant_back(
        autojump_clock: trio.testing.MockClock) -> None:
    services = build("centralized", set())
    n1, n2 = services[NodeId(1)], services[NodeId(2)]
    async with trio.open_nursery() as nursery:
        for s in services.values():
            await nursery.start(s.run)
        async with n1.hold("L"):
            with trio.move_on_after(0.5):
                async with n2.hold("L"):
                    pytest.fail("n2 entered while n1 held the lock")
            with pytest.raises(LockBusy):
                async with n1.hold("L"):
                    pass
        # n2's abandoned request is granted and released at once: n1 gets in again.
        with trio.fail_after(5):
            async with n1.hold("L"):
                pass
        nursery.cancel_scope.cancel()
