"""The trio 2PC driver, in one process: a coordinator and two participants
wired by a direct transport, with in-memory logs and decision store.

Checks the driver's own promises: every message leaves only after the
records it depends on were appended (persist before send, across batches);
an armed step sees the messages before it already handed to the transport;
an event the core refuses is logged and dropped, not fatal."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from coord.clock.lamport import LamportClock
from coord.twopc.coordinator import Coordinator
from coord.twopc.decision import MemoryDecisionStore
from coord.twopc.driver import StorageFailure, TwoPcDriver
from coord.twopc.log import MemoryLog
from coord.twopc.messages import DecisionMsg, Message, Prepare, VoteMsg
from coord.twopc.participant import Participant
from coord.twopc.records import Change, DecisionRecord, LogRecord, PreparedRecord
from coord.twopc.types import (
    CoordState,
    CoordStep,
    Decision,
    NodeName,
    Step,
    TwoPcConfig,
    TxId,
    Vote,
    Write,
)

C, P1, P2 = NodeName("c"), NodeName("p1"), NodeName("p2")
T = TxId("t1")
# Real time (log appends run in worker threads, which trio's autojump clock would
# count as idle and skip through, firing every timeout).  Generous timeouts: a
# loaded machine must not turn a commit into an abort.
CFG = TwoPcConfig(vote_timeout=0.8, prepare_retry=0.3, ack_retry=0.3, decision_timeout=5.0,
                  query_retry=1.0, store_retry=1.0)

Event = tuple[str, NodeName, object]  # ("persist", node, record) / ("send", to, message)


class SpyLog(MemoryLog):
    def __init__(self, name: NodeName, events: list[Event]) -> None:
        super().__init__()
        self.name = name
        self.events = events

    def append(self, record: LogRecord, writes: Sequence[Change] = (), *,
               sync: bool = True) -> None:
        super().append(record, writes, sync=sync)
        self.events.append(("persist", self.name, record))


@dataclass
class Wire:
    """Delivers straight into the receiving driver, recording every send."""

    events: list[Event]
    drivers: dict[NodeName, TwoPcDriver] = field(default_factory=dict)
    down: set[NodeName] = field(default_factory=set)

    async def send(self, to: NodeName, msg: Message) -> None:
        self.events.append(("send", to, msg))
        if to in self.down:
            raise ConnectionRefusedError(to)
        await self.drivers[to].deliver(msg, self.drivers[to].clock.observe(msg.stamp))


@dataclass
class Pause:
    """A step hook: records what the transport had seen when the armed step came."""

    wire: Wire
    step: Step | None = None
    seen_at_step: list[Event] = field(default_factory=list)

    def armed(self, step: Step, txid: TxId) -> bool:
        return step is self.step

    async def reached(self, step: Step, txid: TxId) -> None:
        self.seen_at_step = list(self.wire.events)


@dataclass
class Trio:
    wire: Wire
    store: MemoryDecisionStore
    drivers: dict[NodeName, TwoPcDriver]
    pause: Pause


@asynccontextmanager
async def three_nodes() -> AsyncIterator[Trio]:
    events: list[Event] = []
    wire, store = Wire(events), MemoryDecisionStore()
    pause = Pause(wire)
    cores: list[Coordinator | Participant] = [Coordinator(C, CFG), Participant(P1, CFG),
                                              Participant(P2, CFG)]
    for core in cores:
        wire.drivers[core.name] = TwoPcDriver(core, SpyLog(core.name, events), wire,
                                              store=store, clock=LamportClock(),
                                              on_step=pause)
    async with trio.open_nursery() as nursery:
        for driver in wire.drivers.values():
            await nursery.start(driver.run)
        yield Trio(wire, store, wire.drivers, pause)
        nursery.cancel_scope.cancel()


WORK = {P1: (Write("a", b"1"),), P2: (Write("b", b"2"),)}


def persisted_before(events: list[Event], i: int, node: NodeName, kind: type) -> bool:
    return any(e[0] == "persist" and e[1] == node and isinstance(e[2], kind)
               for e in events[:i])


async def test_a_transaction_commits_and_every_message_follows_its_records() -> None:
    async with three_nodes() as env:
        await env.drivers[C].begin(T, WORK)
        coord = env.drivers[C].core
        with trio.fail_after(10):
            while coord.state(T) is not CoordState.ENDED:
                await trio.sleep(0.01)
        assert coord.state(T) is CoordState.ENDED and env.store.lookup_now(T) is Decision.COMMIT
        events = env.wire.events
        for i, (kind, _to, msg) in enumerate(events):
            if kind != "send":
                continue
            if isinstance(msg, VoteMsg) and msg.vote is Vote.READY:
                assert persisted_before(events, i, msg.sender, PreparedRecord)
            if isinstance(msg, DecisionMsg):
                assert persisted_before(events, i, C, DecisionRecord)
        # Retransmissions may happen on a slow machine; the ordering holds regardless.
        sent = env.drivers[C].sent
        assert sent["PREPARE"] >= 2 and sent["COMMIT"] >= 2 and set(sent) == {"PREPARE", "COMMIT"}
        assert {e.label.split()[0] for e in env.drivers[P1].tracer.events} >= {
            "PREPARE", "READY", "log", "COMMIT", "ACK"}


async def test_an_armed_step_sees_the_messages_before_it_already_sent() -> None:
    async with three_nodes() as env:
        env.pause.step = CoordStep.AFTER_PREPARE_SENT
        await env.drivers[C].begin(T, WORK)
        prepares = [e for e in env.pause.seen_at_step
                    if e[0] == "send" and isinstance(e[2], Prepare)]
        assert {to for _, to, _ in prepares} == {P1, P2}


async def test_a_refused_event_is_logged_and_the_node_carries_on(
        caplog: pytest.LogCaptureFixture) -> None:
    async with three_nodes() as env:
        env.wire.down.add(P2)  # p2 never votes: the vote timeout aborts
        await env.drivers[C].begin(T, WORK)
        p1 = env.drivers[P1]
        with trio.fail_after(10):
            while p1.core.decision(T) is None:
                await trio.sleep(0.01)
        assert p1.core.decision(T) is Decision.ABORT and env.drivers[C].dropped > 0
        with caplog.at_level(logging.ERROR, logger="coord.twopc.driver"):
            await p1.deliver(DecisionMsg(T, C, Decision.COMMIT), p1.clock.tick())
        assert "illegal transition ABORTED -> COMMITTED" in caplog.text
        assert p1.core.decision(T) is Decision.ABORT
        await env.drivers[C].begin(TxId("t2"), {P1: (Write("c", b"3"),)})
        with trio.fail_after(10):
            while p1.core.decision(TxId("t2")) is None:
                await trio.sleep(0.01)
        assert p1.core.decision(TxId("t2")) is Decision.COMMIT  # still serving


async def test_a_cancelled_delivery_cannot_leave_the_core_ahead_of_its_log() -> None:
    """White-box race: the delivering task gets the driver's lock with a cancel
    already pending (its RPC connection closed meanwhile).  The core has moved to
    PREPARED by the time the log append would checkpoint; the batch must still
    write the record and vote, or a retransmitted PREPARE would get READY with
    nothing on disk."""
    async with three_nodes() as env:
        p1 = env.drivers[P1]
        prepare = Prepare(T, C, (P1, P2), WORK[P1])
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def deliver() -> None:
                with scope:
                    await p1.deliver(prepare, p1.clock.tick())

            async with p1._lock:  # hold the lock so the delivery parks on it
                nursery.start_soon(deliver)
                await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # the lock was just handed over; the delivery has not run yet
        log = p1._log
        assert isinstance(log, MemoryLog)
        assert any(isinstance(r, PreparedRecord) for r in log.durable_records())
        await trio.testing.wait_all_tasks_blocked()  # let the sender task hand it over
        assert any(kind == "send" and to == C and isinstance(m, VoteMsg) and m.vote is Vote.READY
                   for kind, to, m in env.wire.events)


class BrokenLog(MemoryLog):
    def append(self, record: LogRecord, writes: Sequence[Change] = (), *,
               sync: bool = True) -> None:
        raise OSError(28, "No space left on device")


async def test_a_failed_log_append_stops_the_node(caplog: pytest.LogCaptureFixture) -> None:
    """Fail-stop: the core may be ahead of its log, so the node must not go on serving."""
    driver = TwoPcDriver(Participant(P1, CFG), BrokenLog(), Wire([]), store=None,
                         clock=LamportClock())
    # run() itself ends with StorageFailure (the node process exits and restarts).
    run_fails = pytest.RaisesGroup(StorageFailure, allow_unwrapped=True, flatten_subgroups=True)
    with trio.fail_after(5), caplog.at_level(logging.CRITICAL), run_fails:
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            with pytest.raises(StorageFailure):
                await driver.deliver(Prepare(T, C, (P1,), WORK[P1]), 1)
            with pytest.raises(StorageFailure):  # refuses everything afterwards
                await driver.deliver(Prepare(TxId("t2"), C, (P1,), ()), 2)
    assert "log append failed" in caplog.text
