"""The trio driver of the mutual-exclusion cores of one node: `MutexService`.

    async with service.hold("name") as grant:   # waits for the lock
        ...                                      # act before grant.expires_at, with grant.token

It feeds the cores (one per lock) their events - protocol messages, failure
detector transitions, timer ticks, the application's want/release - and runs
the effects they return: `Send` goes to that peer's sender task, `Enter`
wakes the waiting `hold`, `LeaseOver` tells the holder its lease ran out,
`Note` becomes a trace note.  With an `election` (a Bully core read by the
cores' `ElectedLeader`), the service also steps the election: its messages,
its deadline, the detector's transitions; a leader change ticks every core.
Heartbeats to every peer feed a `TimeoutDetector` (any protocol message counts as a heartbeat too).

Invariants:
* A core is only touched by one task at a time (all calls happen without an
  await between taking `now` and running the effects: trio is cooperative),
  and `now` is read once per event.
* Sends never block a core: each peer has a bounded queue and a sender task;
  a message that cannot be delivered is dropped (counted) - the cores'
  failure handling (detector, re-requests, token regeneration) covers it.
* Every protocol message is traced with this node's Lamport clock (shared
  with the RPC layer), on send and on receive, with its send stamp carried
  in the message; heartbeats, RPC frames and retransmissions are not.
* A `hold` cancelled while waiting still owns its request: the grant, when
  it comes, is released at once, so nobody waits on a departed holder.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from coord.clock.lamport import LamportClock
from coord.election import BullyNode, LeaderChanged
from coord.election import NodeId as ElectionId
from coord.failure.timeout import TimeoutConfig, TimeoutDetector
from coord.failure.types import PeerId, Suspect
from coord.mutex.elected import election_effects, is_bully, message_label
from coord.mutex.messages import Heartbeat
from coord.mutex.types import (
    Effect,
    Enter,
    Grant,
    LeaseOver,
    LockName,
    MutexCore,
    NodeId,
    Note,
    Send,
    token_text,
)
from coord.trace import TraceRecorder

log = logging.getLogger(__name__)

QUEUE = 256  # per-peer outgoing messages before new ones are dropped
TICK = 0.01  # the timer loop's period (seconds)


class Transport(Protocol):
    async def send(self, to: NodeId, msg: object) -> None:
        """Deliver best effort; raise on failure (the caller drops the message)."""
        ...


class LockBusy(RuntimeError):
    """`hold` of a lock this node already holds or waits for (locks are not reentrant)."""


def node_name(node: NodeId) -> str:
    return f"n{node}"


class MutexService:
    def __init__(self, me: NodeId, cores: Mapping[LockName, MutexCore], transport: Transport,
                 peers: list[NodeId], *, clock: LamportClock,
                 tracer: TraceRecorder | None = None, heartbeat: float = 0.2,
                 suspect_after: float = 1.0, send_timeout: float = 1.0,
                 election: BullyNode | None = None) -> None:
        self.me = me
        self.name = node_name(me)
        self.cores = dict(cores)
        self.peers = [p for p in peers if p != me]
        self.clock = clock
        self.tracer = tracer if tracer is not None else TraceRecorder()
        self._transport = transport
        self._heartbeat = heartbeat
        self._send_timeout = send_timeout
        self._detector = TimeoutDetector(TimeoutConfig(suspect_after))
        self.election = election  # the cores' ElectedLeader reads it (None: not elected)
        self._entered: dict[LockName, trio.Event] = {}  # set when the lock is granted
        self._abandoned: set[LockName] = set()  # waits cancelled: release on grant
        self._queues: dict[NodeId, trio.MemorySendChannel[object]] = {}
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()  # run() is serving (messages wait for it)
        self.sent: dict[str, int] = {}  # protocol messages handed to the transport, by kind
        self.dropped = 0
        self.heartbeats = 0
        self.entries = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            now = trio.current_time()
            for peer in self.peers:
                self._detector.monitor(PeerId(str(peer)), now)
            if self.election is not None:
                self._run(election_effects(self.election.start_election(now)))
            nursery.start_soon(self._timers, name=f"mutex-{self.name}-timers")
            nursery.start_soon(self._heartbeats, name=f"mutex-{self.name}-heartbeats")
            self._started.set()
            task_status.started()

    # ------------------------------------------------------------------ the application

    @asynccontextmanager
    async def hold(self, lock: str) -> AsyncIterator[Grant]:
        name = LockName(lock)
        core = self.cores.get(name)
        if core is None:
            raise KeyError(f"no lock named {lock!r} here (configured: {sorted(self.cores)})")
        if core.held is not None or core.wanting or name in self._entered:
            raise LockBusy(f"{self.name} already holds or waits for {lock!r}")
        await self._started.wait()
        entered = self._entered[name] = trio.Event()
        self._run(core.want(trio.current_time()))
        try:
            await entered.wait()
        except BaseException:
            self._abandoned.add(name)  # the grant may still come: give it back then
            self._entered.pop(name, None)
            if core.held is not None:
                self._release(name)
            raise
        grant = core.held
        assert grant is not None, "Enter without a grant"
        try:
            yield grant
        finally:
            self._release(name)

    def _release(self, name: LockName) -> None:
        self._entered.pop(name, None)
        self._abandoned.discard(name)
        core = self.cores[name]
        if core.held is not None:
            self.note(f"EXIT {name}")
        self._run(core.release(trio.current_time()))

    # ------------------------------------------------------------------ events

    async def deliver(self, msg: object, lamport: int) -> None:
        """A message from a peer; `lamport` is our clock after the RPC layer merged it."""
        await self._started.wait()  # a peer that started first may speak before we run
        sender = NodeId(getattr(msg, "sender", 0))
        self._detector.heartbeat(PeerId(str(sender)), trio.current_time())
        if isinstance(msg, Heartbeat):
            if msg.coordinator and self.election is not None:
                self._elect(self.election.claim(ElectionId(sender), trio.current_time()))
            return
        if is_bully(msg) and self.election is not None:
            self.tracer.receive(self.name, node_name(sender), message_label(msg), lamport,
                                ref=int(getattr(msg, "stamp", 0)))
            self._elect(self.election.step(msg, trio.current_time()))
            return
        lock = LockName(getattr(msg, "lock", ""))
        core = self.cores.get(lock)
        if core is None:
            log.warning("%s: message for unknown lock %r from %s", self.name, lock, sender)
            return
        self.tracer.receive(self.name, node_name(sender), message_label(msg), lamport,
                            ref=int(getattr(msg, "stamp", 0)))
        self._run(core.receive(msg, trio.current_time()))

    async def _timers(self) -> None:
        while True:
            now = trio.current_time()
            for ev in self._detector.check(now):
                peer = NodeId(int(ev.peer))
                self.note(f"{'suspects' if isinstance(ev, Suspect) else 'trusts'} "
                          f"{node_name(peer)} ({ev.reason})")
                if self.election is not None:
                    fn = (self.election.suspect if isinstance(ev, Suspect)
                          else self.election.recover)
                    self._elect(fn(ElectionId(peer), now))
                for core in self.cores.values():
                    fn2 = core.suspect if isinstance(ev, Suspect) else core.recover
                    self._run(fn2(peer, now))
            if self.election is not None:
                due = self.election.next_deadline()
                if due is not None and due <= now:
                    self._elect(self.election.tick(now))
            for core in self.cores.values():
                self._run(core.tick(now))
            await trio.sleep(TICK)

    async def _heartbeats(self) -> None:
        while True:
            claim = self.election is not None and self.election.leader == ElectionId(self.me)
            for peer in self.peers:
                self._enqueue(peer, Heartbeat(self.me, coordinator=claim))
                self.heartbeats += 1
            await trio.sleep(self._heartbeat)

    # ------------------------------------------------------------------ effects

    def _run(self, effects: list[Effect]) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                self._send(eff.to, eff.msg)
            elif isinstance(eff, Enter):
                self._on_enter(eff.grant)
            elif isinstance(eff, LeaseOver):
                self.note(f"LEASE OVER {eff.grant.lock} (token {token_text(eff.grant.token)})")
            elif isinstance(eff, Note):
                self.note(eff.text)

    def _elect(self, effects: Sequence[object]) -> None:
        """Run the election's effects, then let every core see the new view at once."""
        self._run(election_effects(effects))
        if any(isinstance(e, LeaderChanged) for e in effects):
            now = trio.current_time()
            for core in self.cores.values():
                self._run(core.tick(now))

    def _on_enter(self, grant: Grant) -> None:
        self.entries += 1
        self.note(f"ENTER {grant.lock} token {token_text(grant.token)}")
        if grant.lock in self._abandoned:
            self._abandoned.discard(grant.lock)
            self._release(grant.lock)
            return
        event = self._entered.get(grant.lock)
        if event is not None:
            event.set()

    def _send(self, to: NodeId, msg: object) -> None:
        label = message_label(msg)
        stamp = self.clock.tick()
        msg = dataclasses.replace(msg, stamp=stamp)  # type: ignore[type-var]
        self.tracer.send(self.name, node_name(to), label, stamp)
        kind = label.split(" ", 1)[0]
        self.sent[kind] = self.sent.get(kind, 0) + 1
        self._enqueue(to, msg)

    def _enqueue(self, to: NodeId, msg: object) -> None:
        queue = self._queues.get(to)
        if queue is None:
            queue = self._start_sender(to)
        try:
            queue.send_nowait(msg)
        except trio.WouldBlock:
            self.dropped += 1

    def _start_sender(self, to: NodeId) -> trio.MemorySendChannel[object]:
        assert self._nursery is not None, "run() first"
        send, receive = trio.open_memory_channel[object](QUEUE)
        self._queues[to] = send
        self._nursery.start_soon(self._sender, to, receive, name=f"mutex-{self.name}-to-{to}")
        return send

    async def _sender(self, to: NodeId, queue: trio.MemoryReceiveChannel[object]) -> None:
        async for msg in queue:
            with trio.move_on_after(self._send_timeout) as scope:
                try:
                    await self._transport.send(to, msg)
                except Exception as exc:  # any transport failure: the cores cope
                    log.debug("%s: message to n%s lost: %s", self.name, to, exc)
                    self.dropped += 1
            if scope.cancelled_caught:
                self.dropped += 1

    def note(self, text: str) -> None:
        self.tracer.note(self.name, text, self.clock.tick())
